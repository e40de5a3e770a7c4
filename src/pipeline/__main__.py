"""`python -m pipeline`: the command line in `pipeline.cli`."""

from pipeline.cli import main

raise SystemExit(main())

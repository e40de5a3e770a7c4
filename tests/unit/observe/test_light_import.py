"""`import pipeline` stays light: the optional extras load only when their observer is used."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_pipeline_loads_no_optional_dependency() -> None:
    code = textwrap.dedent(
        """
        import sys
        import pipeline, pipeline.events, pipeline.observers, pipeline.viz, pipeline.cli
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"rich", "opentelemetry"})
        print(heavy)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=25, check=True
    )
    assert done.stdout.strip() == "[]"

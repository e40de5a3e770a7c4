"""`import pipeline` stays light: the optional extras load only when the feature is used.

Tracing, progress bars, process and Dask runners, config files (YAML, CEL), Redis and fsspec
stores each import their library on first use, never on `import pipeline` or on importing
the subpackage that holds them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_pipeline_loads_no_optional_dependency() -> None:
    code = textwrap.dedent(
        """
        import sys
        import pipeline, pipeline.events, pipeline.observers, pipeline.viz, pipeline.cli
        import pipeline.cache, pipeline.runners
        extras = {
            "rich", "opentelemetry", "dask", "distributed", "cloudpickle", "redis", "fsspec",
            "yaml", "celpy", "cel", "cel_expr_python", "beartype",
        }
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in extras)
        print(heavy)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=25, check=True
    )
    assert done.stdout.strip() == "[]"

"""Every ```python block of README.md runs as written (they are documentation users copy).

Blocks fenced as ```py are fragments (pytest tests, one-liners); each of those is exercised by
`tests/unit/testing/test_user_examples.py` instead.
"""

from __future__ import annotations

import logging
import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_python_snippets() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(
    index: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "opentelemetry" in BLOCKS[index]:
        pytest.importorskip("opentelemetry")
    if "observers.progress" in BLOCKS[index]:
        pytest.importorskip("rich")
    script = tmp_path / f"snippet_{index}.py"
    script.write_text(BLOCKS[index], encoding="utf-8")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:  # a snippet may call logging.basicConfig(): leave the root logger as it was
        root.handlers[:] = handlers
        root.setLevel(level)
    capsys.readouterr()

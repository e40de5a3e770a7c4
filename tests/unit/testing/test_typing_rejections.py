"""mypy rejects wrongly typed stages: the negative half of `tests/typing/` (which pins inference).

Runs mypy in-process with the project's configuration on a snippet of deliberately wrong code;
every line marked `# E: <code>` must be reported with that code, and nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[3]

SNIPPET = """\
from typing import Any

from pipeline import FunctionStage, PipelineContext, PipelineStage, StageDefinition, stage
from pipeline.testing import run_stage


@stage
async def to_text(x: int, ctx: PipelineContext[Any]) -> str:
    return str(x)


async def no_context(x: int) -> str:
    return str(x)


async def wrong_context(x: int, ctx: str) -> str:
    return ctx


stage(no_context)  # E: arg-type
stage(name="w")(wrong_context)  # E: arg-type
FunctionStage(no_context)  # E: arg-type
wrong_input: PipelineStage[str, str] = to_text  # E: assignment
wrong_output: PipelineStage[int, int] = to_text  # E: assignment
StageDefinition("s", no_context)  # E: arg-type


async def harness() -> None:
    await run_stage(to_text, "not an int")  # E: misc
    result, _ = await run_stage(to_text, 1)
    n: int = result.output  # E: assignment
"""


def test_mypy_rejects_wrongly_typed_stages(tmp_path: Path) -> None:
    snippet = tmp_path / "wrong_stages.py"
    snippet.write_text(SNIPPET)
    expected = {
        (number, match.group(1))
        for number, line in enumerate(SNIPPET.splitlines(), start=1)
        if (match := re.search(r"# E: ([\w-]+)", line))
    }
    stdout, stderr, _ = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            "--show-error-codes",
            str(snippet),
        ]
    )
    reported = {
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"^[^\n]*wrong_stages\.py:(\d+): error: .*\[([\w-]+)\]$", stdout, re.M)
    }
    assert reported == expected, stdout + stderr

"""Type checkers reject wrongly wired `PipelineBuilder` stages: the negative half of check_builder.

Runs mypy in-process with the project's configuration (and pyright, when installed) on a snippet
of deliberately wrong wiring; every line marked `# E: <code>` must be reported (with that code,
for mypy) and nothing else. The messages users see are pinned too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """\
from typing import Any

from pipeline import ExecutionPattern, PipelineBuilder, PipelineContext, stage


@stage
async def count(text: str, ctx: PipelineContext[Any]) -> int:
    return len(text)


@stage
async def shout(text: str, ctx: PipelineContext[Any]) -> str:
    return text.upper()


@stage
async def pair(values: tuple[int, str], ctx: PipelineContext[Any]) -> str:
    return str(values)


@stage
async def trio(values: tuple[int, str, str], ctx: PipelineContext[Any]) -> str:
    return str(values)


@stage
async def single(values: tuple[str], ctx: PipelineContext[Any]) -> str:
    return values[0]


@stage
async def per_word(word: str, ctx: PipelineContext[Any]) -> int:
    return len(word)


builder = PipelineBuilder[str]("wrong")
n = builder.add("count", count)
s = builder.add("shout", shout)
words = builder.add("words", shout, inputs=s)
builder.add("paired", pair, inputs=(n, s))
builder.add("single", single, inputs=(s,))
builder.add("loud", shout, inputs=n)  # E: misc
builder.add("pair", pair, inputs=(n, n))  # E: misc
builder.add("pair_of_one", pair, inputs=(n,))  # E: arg-type
builder.add("trio", trio, inputs=(n, s, n))  # E: arg-type
builder.add("single_int", single, inputs=(n,))  # E: arg-type
builder.fan_out("each", per_word, inputs=s)  # E: arg-type
builder.add("each_add", per_word, inputs=n, pattern=ExecutionPattern.FAN_OUT)  # E: call-overload
builder.add("typo", shout, inputs=s, timeout=5)  # E: call-overload
builder.add("bad_option", shout, inputs=s, critical="no")  # E: call-overload
PipelineBuilder[int]("ints").add("entry", shout)  # E: arg-type
PipelineBuilder[str]("strs").fan_out("fan_entry", per_word)  # E: call-arg
"""

MESSAGES = {
    "loud": ['Cannot infer value of type parameter "InputT" of "add" of "PipelineBuilder"'],
    "pair": ['Cannot infer value of type parameter "Input2T" of "add" of "PipelineBuilder"'],
    "pair_of_one": [
        'Argument "inputs" to "add" of "PipelineBuilder" has incompatible type '
        '"tuple[StageRef[int]]"; expected "tuple[StageRef[int], StageRef[str]]"'
    ],
    # Other lengths: mypy measures the call against the first tuple overload (two refs), but
    # its messages still name the stage's tuple type and the refs' types side by side.
    "trio": [
        'Argument 2 to "add" of "PipelineBuilder" has incompatible type '
        '"FunctionStage[tuple[int, str, str], str]"; expected '
        '"PipelineStage[tuple[Never, Never], Never]"',
        'Argument "inputs" to "add" of "PipelineBuilder" has incompatible type '
        '"tuple[StageRef[int], StageRef[str], StageRef[int]]"; expected '
        '"tuple[StageRef[Never], StageRef[Never]]"',
    ],
    "each": [
        'Argument "inputs" to "fan_out" of "PipelineBuilder" has incompatible type '
        '"StageRef[str]"; expected "StageRef[list[str]]"'
    ],
    "typo": [
        'Unexpected keyword argument "timeout" for overloaded function "add" of '
        '"PipelineBuilder"; did you mean "timeout_ms"?',
        'No overload variant of "add" of "PipelineBuilder" matches argument types "str", '
        '"FunctionStage[str, str]", "StageRef[str]", "int"',
    ],
    "entry": [
        'Argument 2 to "add" of "PipelineBuilder" has incompatible type '
        '"FunctionStage[str, str]"; expected "PipelineStage[int, Never]"'
    ],
    "fan_entry": ['Missing named argument "inputs" for "fan_out" of "PipelineBuilder"'],
}
"""Every error mypy reports on the line adding the stage with that id, in order."""


def _marked() -> dict[int, str]:
    return {
        number: match.group(1)
        for number, line in enumerate(SNIPPET.splitlines(), start=1)
        if (match := re.search(r"# E: ([\w-]+)", line))
    }


def _line_of(stage_id: str) -> int:
    (number,) = (
        n for n, line in enumerate(SNIPPET.splitlines(), start=1) if f'("{stage_id}"' in line
    )
    return number


def test_mypy_rejects_wrongly_wired_stages_with_readable_errors(tmp_path: Path) -> None:
    snippet = tmp_path / "wrong_wiring.py"
    snippet.write_text(SNIPPET)
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
    errors = [
        (int(m.group(1)), m.group(2), m.group(3))
        for m in re.finditer(
            r"^[^\n]*wrong_wiring\.py:(\d+): error: (.*)  \[([\w-]+)\]$", stdout, re.M
        )
    ]
    # A line may carry more than one error (a typo: "unexpected keyword" + "no overload").
    assert {(line, code) for line, _, code in errors} == set(_marked().items()), stdout + stderr
    by_line: dict[int, list[str]] = {}
    for line, message, _ in errors:
        by_line.setdefault(line, []).append(message)
    assert {sid: by_line.get(_line_of(sid)) for sid in MESSAGES} == MESSAGES, stdout


def _pyright() -> str | None:
    beside = Path(sys.executable).parent / "pyright"
    return str(beside) if beside.exists() else shutil.which("pyright")


@pytest.mark.timeout(120)
def test_pyright_rejects_the_same_lines_naming_both_types(tmp_path: Path) -> None:
    pyright = _pyright()
    if pyright is None:
        pytest.skip("pyright is not installed (`make typecheck` installs it)")
    snippet = tmp_path / "wrong_wiring.py"
    snippet.write_text(SNIPPET)
    done = subprocess.run(
        [pyright, "--outputjson", "--pythonpath", sys.executable, str(snippet)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=ROOT,
    )
    report = json.loads(done.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    lines = {d["range"]["start"]["line"] + 1 for d in errors}
    assert lines == set(_marked()), done.stdout
    loud = " ".join(
        d["message"] for d in errors if d["range"]["start"]["line"] + 1 == _line_of("loud")
    )
    assert '"StageRef[int]" is not assignable to "StageRef[str]"' in loud, loud

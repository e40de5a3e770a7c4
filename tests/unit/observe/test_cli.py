"""`python -m pipeline`: driven through a subprocess, as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, ClassVar

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.events import PipelineEvent

MODULE = textwrap.dedent(
    """
    from typing import Any

    from pipeline import ExecutionPattern, PipelineDefinition, StageDefinition, StageResult


    class Add:
        name = "add"

        def __init__(self, n: int) -> None:
            self.n = n

        async def execute(self, input: Any, context: Any) -> StageResult[Any]:
            return StageResult.success(input + self.n)


    class Split:
        name = "split"

        async def execute(self, input: Any, context: Any) -> StageResult[Any]:
            return StageResult.success(list(range(input)))


    class Boom:
        name = "boom"

        async def execute(self, input: Any, context: Any) -> StageResult[Any]:
            raise ValueError("kaboom")


    GOOD = PipelineDefinition(
        "good",
        [
            StageDefinition("start", Add(1)),
            StageDefinition("split", Split(), inputs=["start"]),
            StageDefinition(
                "each", Add(10), pattern=ExecutionPattern.FAN_OUT, inputs=["split"]
            ),
        ],
    )

    BAD = PipelineDefinition(
        "bad",
        [
            StageDefinition("a", Add(1), inputs=["b"]),
            StageDefinition("b", Add(1), inputs=["a"]),
            StageDefinition("c", Add(1), inputs=["nowhere"]),
        ],
    )

    FAILING = PipelineDefinition(
        "failing", [StageDefinition("ok", Add(1)), StageDefinition("boom", Boom(), inputs=["ok"])]
    )


    def make() -> PipelineDefinition:
        return GOOD


    NOT_A_PIPELINE = 42
    """
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(MODULE)
    return tmp_path


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=25,
        check=False,
    )


def test_validate_ok(workdir: Path) -> None:
    done = cli(workdir, "validate", "flows:GOOD")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pipeline 'good' is valid: 3 stage(s) in 3 wave(s)"


def test_validate_lists_every_problem(workdir: Path) -> None:
    done = cli(workdir, "validate", "flows:BAD")
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("pipeline 'bad' is invalid (")
    problems = lines[1:]
    assert len(problems) >= 2
    assert all(line.startswith("  - ") for line in problems)
    assert any("nowhere" in line for line in problems)
    assert any("->" in line for line in problems)  # the cycle's path


def test_graph_mermaid_and_dot(workdir: Path) -> None:
    mermaid = cli(workdir, "graph", "flows:GOOD", "--waves")
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith("flowchart LR\n")
    assert 'subgraph wave_2["wave 2"]' in mermaid.stdout
    assert 's_each[["each<br/>fan-out"]]' in mermaid.stdout
    dot = cli(workdir, "graph", "flows:make", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith('digraph "good" {')
    assert '"split" -> "each";' in dot.stdout


def test_graph_of_an_invalid_definition_fails(workdir: Path) -> None:
    done = cli(workdir, "graph", "flows:BAD")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "invalid" in done.stderr


def test_run_success_prints_the_summary(workdir: Path) -> None:
    done = cli(workdir, "run", "flows:GOOD", "--input", json.dumps(2))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["stage", "status", "attempts", "wait", "duration", "cache"]
    assert any(line.startswith("each [3 items]") and "succeeded" in line for line in lines)
    assert any(line.startswith("pipeline 'good' succeeded in") for line in lines)
    assert any(line.startswith("critical path: start -> split -> each") for line in lines)


def test_run_failure_exits_1_and_names_the_error(workdir: Path) -> None:
    done = cli(workdir, "run", "flows:FAILING", "--input", "1", "--scheduling", "eager")
    assert done.returncode == 1
    assert "  boom: ValueError: kaboom" in done.stdout.splitlines()


def test_run_with_a_sqlite_cache_serves_the_second_run(workdir: Path) -> None:
    db = workdir / "cache.db"
    first = cli(workdir, "run", "flows:GOOD", "--input", "2", "--cache", str(db))
    assert first.returncode == 0, first.stderr
    second = cli(workdir, "run", "flows:GOOD", "--input", "2", "--cache", str(db))
    assert second.returncode == 0, second.stderr
    start = next(line for line in second.stdout.splitlines() if line.startswith("start "))
    assert start.split()[-1] == "hit"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "flows"], "expected MODULE:ATTR"),
        (["validate", "nosuchmodule:X"], "cannot import module 'nosuchmodule'"),
        (["validate", "flows:MISSING"], "has no attribute 'MISSING'"),
        (["validate", "flows:NOT_A_PIPELINE"], "is a int, not a PipelineDefinition"),
        (["run", "flows:GOOD", "--input", "{nope"], "--input is not valid JSON"),
        (["graph", "flows:GOOD", "--format", "png"], "invalid choice: 'png'"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    workdir: Path, args: list[str], message: str
) -> None:
    done = cli(workdir, *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("pipeline: error: ")
    assert message in done.stderr


def test_in_process_main_returns_the_exit_code(workdir: Path) -> None:
    from pipeline.cli import main

    assert main(["validate", "definitely:not:valid"]) == 2


class _SpyProgress:
    """Stands in for `ProgressObserver` and keeps the events it is shown."""

    made: ClassVar[list[_SpyProgress]] = []

    def __init__(self, *, transient: bool = False) -> None:
        self.transient = transient
        self.kinds: list[str] = []
        _SpyProgress.made.append(self)

    def on_event(self, event: PipelineEvent, /) -> None:
        self.kinds.append(event.kind)


@pytest.mark.parametrize(
    ("tty", "flags", "shown"),
    [(True, [], True), (False, [], False), (True, ["--no-progress"], False)],
)
def test_run_shows_progress_only_on_a_terminal(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tty: bool,
    flags: list[str],
    shown: bool,
) -> None:
    pytest.importorskip("rich")
    from pipeline.cli import main
    from pipeline.observers import progress

    _SpyProgress.made.clear()
    monkeypatch.setattr(progress, "ProgressObserver", _SpyProgress)
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.delitem(sys.modules, "flows", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    assert main(["run", "flows:GOOD", "--input", "2", *flags]) == 0
    out = capsys.readouterr().out
    assert "critical path: start -> split -> each" in out
    if shown:
        (spy,) = _SpyProgress.made
        assert spy.transient
        assert spy.kinds[0] == "run_started"
        assert spy.kinds[-1] == "run_finished"
    else:
        assert _SpyProgress.made == []

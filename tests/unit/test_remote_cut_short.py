"""A remote attempt the run cuts short (fail-fast) still has its attempt record (SPEC 9).

The record says whether the remote work is known to have stopped: a sync stage blocked in a
worker process is stopped by killing that worker (`remote_stopped=True`), unless the runner
is told to let it finish (`terminate_on_cancel=False`: `remote_stopped=False`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageStatus,
)
from pipeline.runners import ProcessRunner

pytestmark = pytest.mark.anyio


def blocked(flag: str, ctx: PipelineContext[Any]) -> str:
    Path(flag).write_text("started")
    time.sleep(10)  # noqa: TID251  # in a worker process, not a loop: the run gives up on it
    return flag


@pytest.mark.parametrize("terminate", [True, False])
async def test_a_remote_attempt_cut_short_by_fail_fast_keeps_its_record(
    tmp_path: Path, terminate: bool
) -> None:
    flag = tmp_path / "started"

    async def fail_once_started(_: Any, ctx: PipelineContext[Any]) -> None:
        while not flag.exists():  # noqa: ASYNC110  # written by another process: no event crosses
            await anyio.sleep(0.01)
        raise RuntimeError("bad")

    pipeline = PipelineDefinition(
        "cut",
        [
            StageDefinition("remote", FunctionStage(blocked), runner="cpu"),
            StageDefinition("bad", FunctionStage(fail_once_started)),
        ],
    )
    runner = ProcessRunner(max_workers=1, terminate_on_cancel=terminate)
    executor = PipelineExecutor(runners={"cpu": runner})
    with anyio.fail_after(30):
        result = await executor.execute(pipeline, str(flag))
    run = result.stage_runs["remote"]
    assert result.stage_results["remote"].status is StageStatus.CANCELLED
    assert run.attempts == 1
    (attempt,) = run.attempt_runs
    assert attempt.error == "cancelled"
    # Its worker killed, or still running in it when given up on.
    assert attempt.remote_stopped is terminate
    assert result.stage_runs["bad"].attempt_runs[0].remote_stopped is None  # local work


async def test_a_local_stage_cut_short_has_no_attempt_record() -> None:
    """Unchanged for local work: a cancelled stage's record has no attempt (SPEC 4)."""
    started = anyio.Event()

    async def wait(_: Any, ctx: PipelineContext[Any]) -> None:
        started.set()
        await anyio.sleep_forever()

    async def fail(_: Any, ctx: PipelineContext[Any]) -> None:
        await started.wait()
        raise RuntimeError("bad")

    pipeline = PipelineDefinition(
        "cut",
        [StageDefinition("w", FunctionStage(wait)), StageDefinition("f", FunctionStage(fail))],
    )
    with anyio.fail_after(10):
        result = await PipelineExecutor().execute(pipeline, None)
    assert result.stage_runs["w"].attempts == 0
    assert result.stage_runs["w"].attempt_runs == ()

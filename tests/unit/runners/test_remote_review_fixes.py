"""Regressions from the runners review (SPEC section 9): virtual time, per-item timeouts in
batches, a pool broken by abandoned work, one unpicklable item in a batch.

Time is real where the work is in other processes: waits are guarded with `anyio.fail_after`;
the short sleeps below are the work being measured, in the worker process, never a wait of the
test for something to happen.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    RetryConfig,
    StageDefinition,
)
from pipeline.runners import ProcessRunner
from pipeline.testing import FakeClock
from tests.unit.runners._support import GUARD_S, blocks_until, until, works_for

if TYPE_CHECKING:
    from pipeline.runners import RemoteRunner

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests

pytestmark = pytest.mark.anyio


async def run(
    runner: RemoteRunner, stages: list[StageDefinition], initial: Any = None, **kw: Any
) -> PipelineResult:
    executor = PipelineExecutor(runners={"remote": runner}, **kw)
    with anyio.fail_after(GUARD_S):
        return await executor.execute(PipelineDefinition("p", stages), initial)


# -- virtual time -----------------------------------------------------------------------------------
async def test_remote_work_under_a_fake_clock_is_busy_time_not_a_timeout(
    remote: RemoteRunner,
) -> None:
    # The worker takes 0.3 s of real time; the virtual clock must not jump to the deadline
    # meanwhile (the wait for another process is work the event loop cannot see).
    clock = FakeClock()
    stage = StageDefinition("s", FunctionStage(works_for(0.3)), runner="remote", timeout_ms=5000)
    result = await run(remote, [stage], 7, clock=clock)
    assert result.outputs == {"s": 7}, result.stage_results["s"].error
    (attempt,) = result.stage_runs["s"].attempt_runs
    assert attempt.remote_stopped is True
    assert clock.now() < 5.0


# -- batches ----------------------------------------------------------------------------------------
async def test_an_item_that_fits_its_timeout_does_not_time_out_in_a_batch(
    remote: RemoteRunner,
) -> None:
    # Four items of 0.2 s with timeout_ms=500 each: in one batch of 4 the worker would run them
    # one after another and the last reply would come after 0.8 s. The timeout is per item.
    stage = StageDefinition(
        "each",
        FunctionStage(works_for(0.2)),
        runner="remote",
        pattern=ExecutionPattern.FAN_OUT,
        batch_size=4,
        max_concurrent_fan_out=2,
        timeout_ms=500,
    )
    result = await run(remote, [stage], [0, 1, 2, 3])
    assert result.outputs == {"each": [0, 1, 2, 3]}, result.stage_results["each"].error


@pytest.mark.parametrize("per_item_chain", [False, True])
async def test_one_unpicklable_item_input_fails_only_that_item(
    remote: RemoteRunner, per_item_chain: bool
) -> None:
    def echo(x: Any, ctx: PipelineContext[Any]) -> Any:
        ctx.increment_metric("ran")
        return x

    # Retries give every item its own attempt chain; without them batches go out directly.
    retry = RetryConfig(max_attempts=2, initial_delay_ms=0) if per_item_chain else None
    stage = StageDefinition(
        "each",
        FunctionStage(echo),
        runner="remote",
        pattern=ExecutionPattern.FAN_OUT,
        batch_size=4,
        retry_config=retry,
    )
    executor = PipelineExecutor(runners={"remote": remote})
    ctx: PipelineContext[Any] = PipelineContext()
    with anyio.fail_after(GUARD_S):
        result = await executor.execute(
            PipelineDefinition("p", [stage]), [1, 2, threading.Lock(), 4], ctx
        )
    each = result.stage_results["each"]
    assert each.metadata["failed_items"] == [2]
    assert "input of item 2 cannot be pickled" in (each.error or "")
    assert ctx.metrics["ran"] >= 3  # the other three items of the batch ran


# -- a pool broken by work given up on --------------------------------------------------------------
def dies_when(go: str) -> Any:
    """A body that waits (at most 10 s) for the `go` file, then kills its worker process."""

    def body(x: Any, ctx: PipelineContext[Any]) -> Any:
        deadline = time.monotonic() + 10
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # noqa: TID251  # in a worker process, not a loop
        os._exit(3)

    return body


def fine(x: Any, ctx: PipelineContext[Any]) -> str:
    return "ok"


async def test_a_pool_broken_by_abandoned_work_does_not_fail_a_later_stage(
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    runner = ProcessRunner(1, terminate_on_cancel=False)  # the timed-out call runs on
    doomed = StageDefinition(
        "doomed", FunctionStage(dies_when(str(go))), runner="remote", timeout_ms=200
    )
    later = StageDefinition("later", FunctionStage(fine), runner="remote")  # no retries
    async with runner:
        timed_out = await run(runner, [doomed], 1)
        assert "Timeout" in (timed_out.stage_results["doomed"].error or "")
        go.touch()  # the abandoned call now kills its worker: the pool is broken
        await until(lambda: runner.in_flight == 0)  # its future failed: the pool knows
        result = await run(runner, [later], 1)
    assert result.outputs == {"later": "ok"}, result.stage_results["later"].error


# -- closing a Dask cluster the runner owns ---------------------------------------------------------


async def test_an_owned_dask_cluster_closes_without_waiting_for_abandoned_tasks(
    tmp_path: Path,
) -> None:
    from pipeline.runners.dask import DaskRunner  # the dask extra

    release = tmp_path / "release"
    runner = DaskRunner(n_workers=1)
    stage = StageDefinition(
        "slow", FunctionStage(blocks_until(str(release))), runner="remote", timeout_ms=300
    )
    await runner.__aenter__()  # opened first: starting the cluster is not what is bounded here
    try:
        result = await run(runner, [stage], 1)
        assert "Timeout" in (result.stage_results["slow"].error or "")
        (attempt,) = result.stage_runs["slow"].attempt_runs
        assert attempt.remote_stopped is False  # its task still runs
    finally:
        try:
            # The task blocks for 10 s; a LocalCluster closing on its own gives a busy worker
            # 4 s before killing it. Abandoned work is stopped at once instead.
            await closes_within(runner, 3.5)
        finally:
            release.touch()
    assert not runner.is_open


async def closes_within(runner: RemoteRunner, seconds: float) -> None:
    """Close `runner`, failing if that takes longer than `seconds`.

    Closing is shielded from cancellation, so a `fail_after` around it could not trip: the
    bound is on waiting for it to finish, in another task.
    """
    closed = anyio.Event()

    async def close() -> None:
        await runner.__aexit__(None, None, None)
        closed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(close)
        with anyio.fail_after(seconds):
            await closed.wait()

"""Batches keep each item's `timeout_ms` (SPEC section 9), and the process pool underneath.

On `ProcessRunner` a stage with `batch_size` and `timeout_ms` is still sent in batches: the
workers reply item by item, each item's deadline starts when its turn in the batch comes, and
when one item overruns, the items after it go to another batch (the stuck worker is told to
skip them). On `DaskRunner` such a stage is sent one item a call; what a user sees (outputs,
timeouts, retries) is the same on both. Runs on both anyio backends.

Blocked work waits on a file the test creates (never on a sleep in the test); the only sleeps
are the stage bodies' work, in the workers, well inside their timeouts.
"""

from __future__ import annotations

import os
import sys
import time
import typing
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    RetryConfig,
    StageDefinition,
    stage,
)
from pipeline.events import AttemptStarted
from pipeline.runners import ProcessRunner
from tests.unit.runners._support import GUARD_S, Collect, fan, until, works_for

if TYPE_CHECKING:
    from pipeline.runners import RemoteRunner

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests

pytestmark = pytest.mark.anyio


def hangs_once(at: int, release: str, runs: str) -> Any:
    """Item `at` blocks (at most 10 s) until the release file exists, on its first run only.

    Every run of every item leaves a file `<item>-<unique>` in `runs`.
    """

    def body(x: int, ctx: PipelineContext[Any]) -> int:
        Path(runs, f"{x}-{uuid.uuid4().hex}").touch()
        first = len(list(Path(runs).glob(f"{x}-*"))) == 1
        if x == at and first:
            deadline = time.monotonic() + 10
            while not Path(release).exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # noqa: TID251  # in a worker process, not a loop
        return x * 10

    return body


def dies_once(marker: str) -> Any:
    """Item 0 kills its worker process the first time (the marker file says it did)."""

    def body(x: int, ctx: PipelineContext[Any]) -> int:
        if x == 0 and not Path(marker).exists():
            Path(marker).touch()
            time.sleep(0.2)  # noqa: TID251  # let the next call reach this worker's pipe
            os._exit(9)
        return x + 100

    return body


async def run(
    runner: RemoteRunner, stages: list[StageDefinition], initial: Any, **kw: Any
) -> PipelineResult:
    executor = PipelineExecutor(runners={"remote": runner}, **kw)
    with anyio.fail_after(GUARD_S):
        return await executor.execute(PipelineDefinition("p", stages), initial)


async def test_a_stage_with_timeout_ms_is_still_sent_in_batches_on_processes(
    remote: RemoteRunner,
) -> None:
    before = remote.calls_sent
    stage = fan(works_for(0), batch_size=4, max_concurrent_fan_out=1, timeout_ms=5000)
    result = await run(remote, [stage], list(range(8)))
    assert result.outputs == {"each": list(range(8))}
    calls = remote.calls_sent - before
    # Processes reply item by item, so the batches stay (how full each is depends on when the
    # items reach the runner, a loaded machine gives more, smaller ones); Dask sends one item
    # a call.
    if isinstance(remote, ProcessRunner):
        assert calls < 8
    else:
        assert calls == 8


async def test_each_item_of_a_batch_counts_only_its_own_work_against_timeout_ms(
    remote: RemoteRunner,
) -> None:
    # One batch of five 0.1 s items: the batch takes 0.5 s, each item 0.1 s of its 0.4 s.
    stage = fan(works_for(0.1), batch_size=5, max_concurrent_fan_out=1, timeout_ms=400)
    result = await run(remote, [stage], [0, 1, 2, 3, 4])
    assert result.outputs == {"each": [0, 1, 2, 3, 4]}, result.stage_results["each"].error


@pytest.mark.parametrize("terminate", [True, False])
async def test_an_item_that_hangs_times_out_alone_and_the_rest_of_its_batch_runs_once(
    tmp_path: Path, terminate: bool
) -> None:
    # A pool of its own: the worker stuck on item 2 stays busy after the run. (On Dask such a
    # stage is not batched, and the cluster may queue the next items behind the stuck task.)
    release, runs = tmp_path / "release", tmp_path / "runs"
    runs.mkdir()
    events = Collect()
    stage = fan(
        hangs_once(2, str(release), str(runs)),
        batch_size=6,
        max_concurrent_fan_out=1,
        timeout_ms=500,
        retry_config=RetryConfig(max_attempts=2, initial_delay_ms=0),
    )
    async with ProcessRunner(2, terminate_on_cancel=terminate) as remote:
        executor = PipelineExecutor(runners={"remote": remote}, observers=[events])
        try:
            # Item 2's first run blocks its worker up to 10 s: the run must not wait for it.
            with anyio.fail_after(5):
                result = await executor.execute(PipelineDefinition("p", [stage]), list(range(6)))
        finally:
            release.touch()
        await until(lambda: remote.in_flight == 0)
    assert result.outputs == {"each": [0, 10, 20, 30, 40, 50]}, result.stage_results["each"].error
    started = [e for e in events.events if isinstance(e, AttemptStarted)]
    assert [e.item for e in started if e.attempt == 2] == [2]  # only item 2 was retried
    ran = sorted(int(p.name.split("-")[0]) for p in runs.iterdir())
    # Item 2 ran twice (the timed-out run and its retry); every other item exactly once: the
    # worker stuck on item 2 was killed, or (terminate_on_cancel=False) skipped the items
    # after it; they ran in another batch.
    assert ran == [0, 1, 2, 2, 3, 4, 5]


async def test_a_call_waiting_behind_a_worker_that_dies_goes_to_its_replacement(
    tmp_path: Path,
) -> None:
    # One worker: item 1's call waits in its pipe while item 0 kills it. Item 0 fails
    # (BrokenProcessPool) and is retried; item 1 is not failed but sent to the new worker.
    events = Collect()
    stage = fan(
        dies_once(str(tmp_path / "died")),
        retry_config=RetryConfig(max_attempts=2, initial_delay_ms=0),
    )
    async with ProcessRunner(1) as runner:
        result = await run(runner, [stage], [0, 1], observers=[events])
    assert result.outputs == {"each": [100, 101]}, result.stage_results["each"].error
    started = [(e.item, e.attempt) for e in events.events if isinstance(e, AttemptStarted)]
    assert sorted(started) == [(0, 1), (0, 2), (1, 1)]
    assert (tmp_path / "died").exists()


def records_pid_then_hangs_once(pids: str) -> Any:
    """Each run leaves `<run>-<worker pid>`; the first blocks (at most 10 s), later ones return."""

    def body(x: int, ctx: PipelineContext[Any]) -> int:
        run = len(list(Path(pids).iterdir())) + 1
        first = run == 1
        Path(pids, f"{run}-{os.getpid()}").touch()
        if first:
            time.sleep(10)  # noqa: TID251  # stuck work, in a worker process
        return x + 1

    return body


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_worker_of_a_timed_out_attempt_is_killed_before_the_retry_runs(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    stage = StageDefinition(
        "s",
        FunctionStage(records_pid_then_hangs_once(str(pids))),
        runner="remote",
        timeout_ms=300,
        retry_config=RetryConfig(max_attempts=2, initial_delay_ms=0),
    )
    # Two workers: the retry goes to the idle one (with one, it would also wait for the
    # replacement of the killed worker to start, which a loaded machine may not fit in 300 ms).
    async with ProcessRunner(2) as remote:
        result = await run(remote, [stage], 1)
        assert result.outputs == {"s": 2}, result.stage_results["s"].error
        first, second = result.stage_runs["s"].attempt_runs
        assert "Timeout" in (first.error or "")
        assert first.remote_stopped is True  # its worker was killed: confirmed
        # The retry ran on a new worker; the stuck one is gone (not left running for 10 s).
        runs = dict(p.name.split("-") for p in pids.iterdir())
        stuck, retried = int(runs["1"]), int(runs["2"])
        assert stuck != retried
        await until(lambda: not alive(stuck))
        assert second.error is None


def slow_at(at: int, seconds: float) -> Any:
    """Item `at` works `seconds`; the others return at once (times ten)."""

    def body(x: int, ctx: PipelineContext[Any]) -> int:
        if x == at:
            time.sleep(seconds)  # noqa: TID251  # the work itself, in a worker process
        return x * 10

    return body


@stage
async def numbers(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
    """A streaming producer: 0, 1, 2, 3."""
    for i in range(4):
        yield i


async def test_a_streamed_fan_out_on_processes_keeps_each_items_timeout(tmp_path: Path) -> None:
    # Items fed by a producer are sent one by one (no batch forms from a stream); the runner
    # bounds each by timeout_ms itself, as the chain's timeout link would.
    each = fan(slow_at(2, 5.0), inputs=["numbers"], batch_size=4, timeout_ms=300)
    async with ProcessRunner(2) as remote:
        executor = PipelineExecutor(runners={"remote": remote})
        with anyio.fail_after(4):  # item 2 works 5 s: waiting for it would trip this
            result = await executor.execute(
                PipelineDefinition("p", [StageDefinition("numbers", numbers), each])
            )
    assert not result.success
    assert "Timeout: stage 'each' item 2 exceeded timeout_ms=300" in (
        result.stage_results["each"].error or ""
    )

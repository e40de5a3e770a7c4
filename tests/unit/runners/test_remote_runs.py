"""Runs on the runners that use other processes: ProcessRunner and DaskRunner (SPEC section 9).

Every scenario runs on both runners (one pool and one cluster per module, kept open by the
fixture, so the executor's own entry only counts) and on both anyio backends. Time is real
here (the work is in other processes), so waits are guarded with `anyio.fail_after` and
blocked work waits on a file that the test creates, never on a sleep.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest
import sniffio

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
from pipeline.cache import MemoryCache
from pipeline.events import AttemptStarted
from tests.unit.runners._support import GUARD_S, Collect, blocks_until, fan, until

if TYPE_CHECKING:
    from pipeline.runners import RemoteRunner

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests

pytestmark = pytest.mark.anyio

FAN_OUT = ExecutionPattern.FAN_OUT


# -- stage bodies (they run in the workers) ----------------------------------------------------------
def square(x: int, ctx: PipelineContext[Any]) -> int:
    return x * x


def uneven_square(x: int, ctx: PipelineContext[Any]) -> int:
    # Early items take longest, so they finish last: the output order must not follow.
    time.sleep(0.02 if x < 3 else 0.0)  # noqa: TID251  # in a worker process, not a loop
    return x * x


def where(x: Any, ctx: PipelineContext[Any]) -> int:
    return os.getpid()


async def where_async(x: Any, ctx: PipelineContext[Any]) -> tuple[int, str]:
    await anyio.lowlevel.checkpoint()
    return os.getpid(), sniffio.current_async_library()


def writes(x: int, ctx: PipelineContext[Any]) -> dict[str, Any]:
    seen = {"upstream": ctx.get_state("upstream"), "deps": ctx.deps, "n_before": dict(ctx.metrics)}
    ctx.set_state("order", [*ctx.get_state("order", []), f"first-{x}"])
    ctx.increment_metric("calls")
    ctx.set_state("last", x)
    ctx.add_metric("final", x)
    ctx.set_state("order", [*ctx.get_state("order", []), f"second-{x}"])
    return seen


def writes_then_fails(x: int, ctx: PipelineContext[Any]) -> None:
    ctx.set_state("before_failure", x)
    ctx.increment_metric("failed_calls")
    raise ValueError(f"bad item {x}")


def item_writes(x: int, ctx: PipelineContext[Any]) -> int:
    ctx.increment_metric("items")
    ctx.set_state(f"item-{x}", x)
    return x


def fails_until(path: str, times: int) -> Any:
    """A body failing its first `times` calls (counted in files, across processes)."""

    def body(x: Any, ctx: PipelineContext[Any]) -> Any:
        marker = Path(path) / f"{x}"
        marker.mkdir(parents=True, exist_ok=True)
        calls = len(list(marker.iterdir()))
        (marker / f"call-{calls}").touch()
        if calls < times:
            raise ConnectionError(f"flaky {x} (call {calls + 1})")
        return x * 10

    return body


async def run(
    runner: RemoteRunner,
    stages: list[StageDefinition],
    initial: Any = None,
    *,
    context: PipelineContext[Any] | None = None,
    **kw: Any,
) -> PipelineResult:
    executor = PipelineExecutor(runners={"remote": runner}, **kw)
    with anyio.fail_after(GUARD_S):
        return await executor.execute(PipelineDefinition("p", stages), initial, context)


# -- results ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, 3])
async def test_fan_out_results_keep_the_input_order(
    remote: RemoteRunner, batch_size: int | None
) -> None:
    result = await run(
        remote,
        [fan(uneven_square, batch_size=batch_size, max_concurrent_fan_out=None)],
        list(range(8)),
    )
    assert result.success, result.error
    assert result.outputs["each"] == [x * x for x in range(8)]


async def test_work_runs_in_another_process_and_async_bodies_under_their_own_loop(
    remote: RemoteRunner,
) -> None:
    stages = [
        StageDefinition("sync", FunctionStage(where), runner="remote"),
        StageDefinition("async", FunctionStage(where_async), runner="remote"),
    ]
    result = await run(remote, stages)
    assert result.success, result.error
    assert result.outputs["sync"] != os.getpid()
    pid, library = result.outputs["async"]
    # Under the run's own backend: a trio run's async stage may use trio in the worker too.
    assert (pid != os.getpid(), library) == (True, sniffio.current_async_library())


# -- batches ------------------------------------------------------------------------------------------
async def test_a_batch_is_one_runner_call_and_a_failed_item_is_retried_alone(
    remote: RemoteRunner, tmp_path: Path
) -> None:
    flaky = fails_until(str(tmp_path), times=0)

    def one_flaky(x: int, ctx: PipelineContext[Any]) -> int:
        body = flaky if x != 5 else fails_until(str(tmp_path / "five"), 1)
        value: int = body(x, ctx)
        return value

    collect = Collect()
    before = remote.calls_sent
    retry = RetryConfig(max_attempts=2, initial_delay_ms=0)
    result = await run(
        remote,
        [fan(one_flaky, batch_size=4, retry_config=retry)],
        list(range(10)),
        observers=[collect],
    )
    assert result.success, result.error
    assert result.outputs["each"] == [x * 10 for x in range(10)]
    # 10 items in batches of 4: three calls, and item 5's retry went alone.
    assert remote.calls_sent - before == 3 + 1
    starts = [
        e.item for e in collect.events if isinstance(e, AttemptStarted) and e.item is not None
    ]
    assert sorted(starts) == sorted([*range(10), 5])  # events stay per item
    assert result.stage_runs["each"].attempts == 2


async def test_item_writes_are_applied_as_each_item_returns(remote: RemoteRunner) -> None:
    ctx: PipelineContext[Any] = PipelineContext()
    result = await run(remote, [fan(item_writes, batch_size=3)], list(range(7)), context=ctx)
    assert result.success, result.error
    assert ctx.metrics["items"] == 7
    assert {k: v for k, v in ctx.state.items() if k.startswith("item-")} == {
        f"item-{i}": i for i in range(7)
    }


# -- remote context -----------------------------------------------------------------------------------
async def test_remote_writes_are_applied_in_order_and_reads_are_snapshots(
    remote: RemoteRunner,
) -> None:
    ctx: PipelineContext[Any] = PipelineContext(deps={"db": "url"}, state={"upstream": "u"})
    ctx.add_metric("seed", 1)
    result = await run(
        remote, [StageDefinition("w", FunctionStage(writes), runner="remote")], 7, context=ctx
    )
    assert result.success, result.error
    seen = result.outputs["w"]
    assert seen == {"upstream": "u", "deps": {"db": "url"}, "n_before": {"seed": 1}}
    assert ctx.get_state("order") == ["first-7", "second-7"]
    assert (ctx.get_state("last"), ctx.metrics["calls"], ctx.metrics["final"]) == (7, 1, 7)
    assert result.metadata["calls"] == 1  # the run's metrics include the remote ones


async def test_remote_writes_are_applied_when_the_attempt_fails_too(
    remote: RemoteRunner,
) -> None:
    ctx: PipelineContext[Any] = PipelineContext()
    retry = RetryConfig(max_attempts=2, initial_delay_ms=0)
    stage = StageDefinition(
        "w", FunctionStage(writes_then_fails), runner="remote", retry_config=retry
    )
    result = await run(remote, [stage], 3, context=ctx)
    assert not result.success
    assert ctx.get_state("before_failure") == 3
    assert ctx.metrics["failed_calls"] == 2  # once per attempt


# -- errors ---------------------------------------------------------------------------------------------
async def test_a_remote_exception_keeps_type_message_and_traceback(remote: RemoteRunner) -> None:
    stage = StageDefinition("w", FunctionStage(writes_then_fails), runner="remote")
    result = await run(remote, [stage], 4)
    record = result.stage_runs["w"]
    assert result.stage_results["w"].error == "ValueError: bad item 4"
    assert record.exception_type == "ValueError"
    (attempt,) = record.attempt_runs
    assert attempt.error == "ValueError: bad item 4"
    assert attempt.remote_stopped is True
    assert attempt.remote_traceback is not None
    assert "in writes_then_fails" in attempt.remote_traceback  # the worker's frames
    assert attempt.remote_traceback.rstrip().endswith("ValueError: bad item 4")
    assert record.traceback is not None
    assert "writes_then_fails" in record.traceback  # the remote part is on the stage record


async def test_retries_are_counted_once_by_the_executor(
    remote: RemoteRunner, tmp_path: Path
) -> None:
    before = remote.calls_sent
    retry = RetryConfig(max_attempts=3, initial_delay_ms=0)
    stage = StageDefinition(
        "flaky", FunctionStage(fails_until(str(tmp_path), 2)), runner="remote", retry_config=retry
    )
    result = await run(remote, [stage], 1)
    assert result.success, result.error
    assert result.outputs["flaky"] == 10
    record = result.stage_runs["flaky"]
    assert record.attempts == 3
    assert remote.calls_sent - before == 3  # one runner call per attempt, no retry in the runner
    assert len(list((tmp_path / "1").iterdir())) == 3  # the body ran three times in all
    assert [a.error for a in record.attempt_runs] == [
        "ConnectionError: flaky 1 (call 1)",
        "ConnectionError: flaky 1 (call 2)",
        None,
    ]
    assert all(a.remote_stopped is True for a in record.attempt_runs)


async def test_local_attempts_have_no_remote_facts(remote: RemoteRunner) -> None:
    result = await run(remote, [StageDefinition("local", FunctionStage(square))], 3)
    (attempt,) = result.stage_runs["local"].attempt_runs
    assert (attempt.remote_stopped, attempt.remote_traceback) == (None, None)


# -- the cache ------------------------------------------------------------------------------------------
async def test_cache_hits_are_never_sent_to_the_runner(remote: RemoteRunner) -> None:
    cache = MemoryCache()
    stages = [fan(square, batch_size=2)]
    first = await run(remote, stages, [1, 2, 3], cache=cache)
    before = remote.calls_sent
    again = await run(remote, stages, [1, 2, 3], cache=cache)
    assert again.outputs == first.outputs == {"each": [1, 4, 9]}
    assert remote.calls_sent == before
    one_new = await run(remote, stages, [1, 2, 3, 4], cache=cache)
    assert one_new.outputs["each"] == [1, 4, 9, 16]
    assert remote.calls_sent == before + 1
    assert one_new.stage_runs["each"].cached_items == 3


# -- fail-fast ------------------------------------------------------------------------------------------
async def test_fail_fast_cancels_remote_siblings(remote: RemoteRunner, tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    release = tmp_path / "release"
    body = blocks_until(str(release), str(started), fail=0)
    try:
        result = await run(remote, [fan(body, max_concurrent_fan_out=None)], list(range(12)))
        assert not result.success
        assert "FAN_OUT item(s) [0] of 12 failed: RuntimeError: item 0 failed" in (
            result.stage_results["each"].error or ""
        )
    finally:
        release.touch()
    await until(lambda: remote.in_flight == 0)
    # Without cancellation every item would have run; the queued ones never started.
    assert len(list(started.iterdir())) < 12


async def test_timeouts_stay_per_item_in_a_batch(remote: RemoteRunner, tmp_path: Path) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    started.mkdir()
    blocking = blocks_until(str(release), str(started))

    def slow_three(x: int, ctx: PipelineContext[Any]) -> int:
        value: int = blocking(x, ctx) if x == 3 else x
        return value

    try:
        result = await run(remote, [fan(slow_three, batch_size=2, timeout_ms=1000)], [0, 1, 2, 3])
    finally:
        release.touch()
    error = result.stage_results["each"].error or ""
    assert "Timeout: stage 'each' item" in error
    assert "exceeded timeout_ms=1000" in error
    # Items 0 and 1 came back in their own batch; only the batch with item 3 timed out.
    assert "item(s) [0" not in error
    assert "item(s) [1" not in error
    await until(lambda: remote.in_flight == 0)


def doubles_but_not_5_or_6(x: int, ctx: PipelineContext[Any]) -> int:
    ctx.increment_metric("seen")
    if x in (5, 6):
        raise ValueError(f"no {x}")
    return 2 * x


async def test_batches_give_the_same_run_with_or_without_per_item_chains(
    remote: RemoteRunner,
) -> None:
    # Unobserved, a batched stage with nothing per item sends its batches straight to the
    # runner; an observer puts every item through its own attempt chain. Same run either way.
    seen: list[tuple[Any, ...]] = []
    for observers in ([], [Collect()]):
        for items in (list(range(9)), [0, 1, 2, 3]):
            ctx: PipelineContext[Any] = PipelineContext()
            before = remote.calls_sent
            result = await run(
                remote,
                [fan(doubles_but_not_5_or_6, batch_size=3, max_concurrent_fan_out=1)],
                items,
                context=ctx,
                observers=observers,
            )
            record = result.stage_runs["each"]
            seen.append((
                result.success, result.outputs, result.stage_results["each"].error,
                result.stage_results["each"].metadata, record.attempts, record.items,
                record.exception_type, ctx.metrics, remote.calls_sent - before,
            ))  # fmt: skip
    direct, chained = seen[:2], seen[2:]
    assert direct == chained
    failed, passed = direct
    assert failed[2] == "FAN_OUT item(s) [5] of 9 failed: ValueError: no 5"
    assert failed[7:] == ({"seen": 6}, 2)  # the third batch was never sent
    assert passed[:2] == (True, {"each": [0, 2, 4, 6]})

"""Streaming (SPEC 11): backpressure, fail-fast both ways, retries, and `executor.stream()`."""

from __future__ import annotations

import typing
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
    RunNotFinishedError,
    StageDefinition,
    StageStatus,
    StreamingRun,
    stage,
)
from pipeline.testing import FakeClock
from tests.unit._support import BACKENDS, Backend, on_both_backends
from tests.unit.streaming._chains import (
    FAN_OUT,
    Recorder,
    double,
    endless as endless_source,
    source_map_map_reduce,
    total,
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cap", "buffer"), [(1, None), (2, 3), (4, 1), (3, None)])
def test_backpressure_bound(backend: Backend, cap: int, buffer: int | None) -> None:
    """A blocked consumer holds the producer at exactly `buffer + cap + 1` items ahead."""
    bound = (cap if buffer is None else buffer) + cap + 1
    release = anyio.Event()
    yielded = 0
    finished = 0
    worst = 0

    @stage
    async def source(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        nonlocal yielded, worst
        for i in range(40):
            yielded += 1
            worst = max(worst, yielded - finished)
            yield i

    @stage
    async def slow(x: int, ctx: PipelineContext[Any]) -> int:
        nonlocal finished
        await release.wait()
        finished += 1
        return x

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("source", source),
            StageDefinition(
                "slow", slow, pattern=FAN_OUT, inputs=["source"],
                max_concurrent_fan_out=cap, buffer=buffer,
            ),
            StageDefinition("total", total, inputs=["slow"]),
        ],
    )  # fmt: skip

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            results = []

            async def run() -> None:
                results.append(await PipelineExecutor().execute(pipeline))

            tg.start_soon(run)
            with anyio.fail_after(5):
                await anyio.wait_all_tasks_blocked()
            assert yielded == bound  # held back, and not earlier than the bound says
            release.set()
        assert results[0].success, results[0].error
        assert results[0].outputs["total"] == sum(range(40))
        assert worst <= bound

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fail_fast", [True, False])
def test_a_producer_error_cancels_its_consumers(backend: Backend, fail_fast: bool) -> None:
    @stage
    async def broken(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("page 3 is gone")

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("broken", broken),
            StageDefinition("double", double, pattern=FAN_OUT, inputs=["broken"]),
            StageDefinition("total", total, inputs=["double"]),
        ],
        fail_fast=fail_fast,
    )

    async def scenario() -> None:
        with anyio.fail_after(5):
            result = await PipelineExecutor().execute(pipeline)
        assert not result.success
        assert result.stage_results["broken"].error == "ValueError: page 3 is gone"
        assert result.failed_stages == ["broken"]
        assert result.cancelled_stages == ["double", "total"]
        reason = "stage 'broken' failed (fail_fast)" if fail_fast else "producer 'broken' failed"
        assert result.stage_results["total"].error == f"[CANCELLED] {reason}"

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fail_fast", [True, False])
def test_a_consumer_error_cancels_its_producer(backend: Backend, fail_fast: bool) -> None:
    closed = anyio.Event()
    endless = endless_source(closed)

    @stage
    async def picky(x: int, ctx: PipelineContext[Any]) -> int:
        if x == 5:
            raise RuntimeError("five")
        return x

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("endless", endless),
            StageDefinition("picky", picky, pattern=FAN_OUT, inputs=["endless"]),
        ],
        fail_fast=fail_fast,
    )

    async def scenario() -> None:
        with anyio.fail_after(5):
            result = await PipelineExecutor().execute(pipeline)
        assert closed.is_set()  # the generator's finally ran
        assert not result.success
        assert result.failed_stages == ["picky"]
        error = result.stage_results["picky"].error or ""
        assert error.startswith("FAN_OUT item(s) [5] of ")
        assert error.endswith("RuntimeError: five")
        assert result.stage_results["endless"].status is StageStatus.CANCELLED
        reason = "stage 'picky' failed (fail_fast)" if fail_fast else "consumer 'picky' failed"
        assert result.stage_results["endless"].error == f"[CANCELLED] {reason}"

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_a_non_critical_consumer_failure_leaves_the_others_running() -> None:
    @stage
    async def picky(x: int, ctx: PipelineContext[Any]) -> int:
        if x == 2:
            raise RuntimeError("two")
        return x

    from tests.unit.streaming._chains import numbers

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("numbers", numbers),
            StageDefinition("picky", picky, pattern=FAN_OUT, inputs=["numbers"], critical=False),
            StageDefinition("total", total, inputs=["numbers"]),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor().execute(pipeline, 10)
    assert result.success, result.error
    assert result.failed_stages == ["picky"]
    assert result.outputs["total"] == sum(range(10))


@on_both_backends
async def test_a_producer_is_not_retried_once_it_yielded() -> None:
    calls = 0

    @stage
    async def flaky(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        nonlocal calls
        calls += 1
        yield 1
        raise ConnectionError("reset")

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition(
                "flaky", flaky, retry_config=RetryConfig(max_attempts=3, initial_delay_ms=1)
            ),
            StageDefinition("double", double, pattern=FAN_OUT, inputs=["flaky"]),
        ],
    )
    recorder = Recorder()
    async with FakeClock() as clock:
        result = await PipelineExecutor(clock=clock, observers=[recorder]).execute(pipeline)
    assert calls == 1
    error = result.stage_results["flaky"].error or ""
    assert error.startswith("ConnectionError: reset (not retried: producer 'flaky' had already")
    assert result.stage_runs["flaky"].attempts == 1
    (failed,) = [e for e in recorder.events if e.kind == "attempt_failed"]
    assert failed.will_retry is False


@on_both_backends
async def test_a_producer_that_fails_before_yielding_is_retried() -> None:
    calls = 0

    @stage
    async def flaky(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("not yet")
        yield 21

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition(
                "flaky", flaky, retry_config=RetryConfig(max_attempts=3, initial_delay_ms=500)
            ),
            StageDefinition("double", double, pattern=FAN_OUT, inputs=["flaky"]),
        ],
    )
    clock = FakeClock()
    async with clock:
        result = await PipelineExecutor(clock=clock).execute(pipeline)
    assert result.success, result.error
    assert result.outputs["double"] == [42]
    assert result.stage_runs["flaky"].attempts == 2
    assert clock.sleeps == [0.5]


@on_both_backends
async def test_stream_yields_the_observers_events_and_the_result() -> None:
    recorder = Recorder()
    seen = []
    executor = PipelineExecutor(observers=[recorder])
    with anyio.fail_after(5):
        async with executor.stream(source_map_map_reduce(), 4) as run:
            assert isinstance(run, StreamingRun)
            with pytest.raises(RunNotFinishedError, match="still running"):
                _ = run.result
            seen.extend([event async for event in run])
    assert [id(e) for e in seen] == [id(e) for e in recorder.events]  # the same objects
    assert seen[-1].kind == "run_finished"
    assert run.result.success
    assert run.result.outputs["total"] == 1 + 3 + 5 + 7
    (last,) = [e for e in seen if e.kind == "stage_finished" and e.stage_id == "total"]
    assert last.output == 16


@on_both_backends
async def test_stream_of_a_pipeline_that_does_not_stream() -> None:
    pipeline = PipelineDefinition("plain", [StageDefinition("double", double)])
    async with PipelineExecutor().stream(pipeline, 4) as run:
        kinds = [event.kind async for event in run]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    assert run.result.outputs == {"double": 8}


@on_both_backends
async def test_leaving_the_stream_block_early_cancels_the_run() -> None:
    closed = anyio.Event()
    produced = 0

    @stage
    async def endless(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield produced
        finally:
            closed.set()

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("endless", endless),
            StageDefinition("double", double, pattern=FAN_OUT, inputs=["endless"]),
        ],
    )
    with anyio.fail_after(5):
        async with PipelineExecutor().stream(pipeline) as run:
            async for event in run:
                if event.kind == "fan_out_item_finished":
                    break
    assert closed.is_set()  # the producer's finally ran before the block was left
    with pytest.raises(RunNotFinishedError, match="was left before it ended"):
        _ = run.result
    count = produced
    await anyio.lowlevel.checkpoint()
    assert produced == count  # nothing is left running


@on_both_backends
async def test_an_error_in_the_stream_block_cancels_the_run_and_propagates() -> None:
    closed = anyio.Event()

    @stage
    async def endless(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.set()

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("endless", endless),
            StageDefinition("double", double, pattern=FAN_OUT, inputs=["endless"]),
        ],
    )

    async def read_until_the_first_item() -> None:
        async with PipelineExecutor().stream(pipeline) as run:
            async for event in run:
                if event.kind == "fan_out_item_finished":
                    raise KeyError("boom")

    with anyio.fail_after(5), pytest.raises(KeyError, match="boom"):
        await read_until_the_first_item()
    assert closed.is_set()


@on_both_backends
async def test_cancelling_the_context_mid_stream_cancels_the_group() -> None:
    closed = anyio.Event()
    ctx: PipelineContext[Any] = PipelineContext()

    endless = endless_source(closed)

    @stage
    async def stop_at_three(x: int, c: PipelineContext[Any]) -> int:
        if x == 3:
            c.cancel("enough")
        return x

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("endless", endless),
            StageDefinition("stop", stop_at_three, pattern=FAN_OUT, inputs=["endless"]),
            StageDefinition("total", total, inputs=["stop"]),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor().execute(pipeline, None, ctx)
    assert closed.is_set()
    assert not result.success
    assert result.metadata["cancellation"] == {"reason": "enough"}
    assert result.cancelled_stages == ["endless", "stop", "total"]
    assert result.stage_results["total"].error == "[CANCELLED] enough"


@on_both_backends
async def test_a_pipeline_timeout_mid_stream() -> None:
    clock = FakeClock()

    @stage
    async def slow_pages(_: Any, c: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        for i in range(100):
            await clock.sleep(1.0)
            yield i

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("pages", slow_pages),
            StageDefinition("double", double, pattern=FAN_OUT, inputs=["pages"]),
            StageDefinition("total", total, inputs=["double"]),
        ],
    )
    async with clock:
        result = await PipelineExecutor(clock=clock, timeout_ms=5500).execute(pipeline)
    assert not result.success
    assert result.error == "Timeout: pipeline 'p' exceeded timeout_ms=5500"
    assert result.cancelled_stages == ["pages", "double", "total"]


@on_both_backends
async def test_streamed_items_are_cached_by_content() -> None:
    from pipeline.cache import MemoryCache
    from tests.unit.streaming._chains import numbers

    calls: list[int] = []

    @stage
    async def square(x: int, c: PipelineContext[Any]) -> int:
        calls.append(x)
        return x * x

    def pipeline(n: int) -> PipelineDefinition:
        return PipelineDefinition(
            "cached",
            [
                StageDefinition("numbers", numbers),
                StageDefinition("square", square, pattern=FAN_OUT, inputs=["numbers"]),
                StageDefinition("total", total, inputs=["square"], cache=False),
            ],
        )

    store = MemoryCache()
    first = await PipelineExecutor(cache=store).execute(pipeline(4), 4)
    assert first.success, first.error
    recorder = Recorder()
    second = await PipelineExecutor(cache=store, observers=[recorder]).execute(pipeline(6), 6)
    assert second.success, second.error
    assert second.outputs["total"] == sum(i * i for i in range(6))
    assert sorted(calls) == [0, 1, 2, 3, 4, 5]  # items 0-3 ran once: the rerun served them
    assert second.stage_runs["square"].cached_items == 4
    hits = sorted(e.lineage_id for e in recorder.events if e.kind == "stage_cache_hit")
    assert hits == [f"numbers:{i}/square" for i in range(4)]

"""Streaming (SPEC 11) regressions: producers nobody reads, timeouts, pipes, nested runs, uses=."""

from __future__ import annotations

import itertools
import typing
from typing import Any

import anyio
import pytest

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    Resource,
    RunNotFinishedError,
    StageDefinition,
    StageResult,
    StageStatus,
    stage,
)
from pipeline.subpipeline import SubPipeline
from tests.unit._support import BACKENDS, Backend
from tests.unit.streaming._chains import FAN_OUT, Recorder, double

GUARD = 200_000
"""Items after which a generator that should have been stopped gives up (a failure, no hang)."""


def _endless(log: list[str], *, awaits: bool) -> Any:
    @stage
    async def endless(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        try:
            for i in itertools.count():
                if i == GUARD:
                    raise AssertionError("the producer was never stopped")
                if awaits:
                    await anyio.lowlevel.checkpoint()  # e.g. fetching the next page
                yield i
        finally:
            log.append("finally")

    return endless


@stage
async def first3(items: typing.AsyncIterator[int], ctx: PipelineContext[Any]) -> list[int]:
    out: list[int] = []
    async for x in items:
        out.append(x)
        if len(out) == 3:
            break
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("awaits", [True, False])
@pytest.mark.parametrize("through_map", [False, True])
def test_a_producer_stops_when_its_iterator_consumer_returns_early(
    backend: Backend, awaits: bool, through_map: bool
) -> None:
    log: list[str] = []
    stages = [StageDefinition("src", _endless(log, awaits=awaits))]
    if through_map:
        stages.append(StageDefinition("m", double, pattern=FAN_OUT, inputs=["src"]))
    stages.append(StageDefinition("take", first3, inputs=[stages[-1].id]))

    async def scenario() -> None:
        with anyio.fail_after(10):
            result = await PipelineExecutor().execute(PipelineDefinition("p", stages))
        assert result.success, result.error
        assert result.outputs["take"] == ([0, 2, 4] if through_map else [0, 1, 2])
        src = result.stage_results["src"]
        assert src.status is StageStatus.SUCCEEDED
        assert src.output is None  # nothing collects its items
        assert src.metadata["stopped_early"] is True
        assert log == ["finally"]  # its generator was closed
        if through_map:
            assert result.stage_results["m"].status is StageStatus.SUCCEEDED

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["skipped", "failed"])
def test_a_producer_stops_when_its_only_fan_out_consumer_goes_away(
    backend: Backend, how: str
) -> None:
    log: list[str] = []

    @stage
    async def picky(x: int, ctx: PipelineContext[Any]) -> int:
        if x == 2:
            raise ValueError("bad item")
        return x

    if how == "skipped":
        consumer = StageDefinition(
            "m", picky, pattern=FAN_OUT, inputs=["src"], condition=lambda ctx: False
        )
    else:
        consumer = StageDefinition("m", picky, pattern=FAN_OUT, inputs=["src"], critical=False)
    pipeline = PipelineDefinition(
        "p", [StageDefinition("src", _endless(log, awaits=True)), consumer]
    )

    async def scenario() -> None:
        with anyio.fail_after(10):
            result = await PipelineExecutor().execute(pipeline)
        assert result.success, result.error
        assert result.stage_results["src"].status is StageStatus.SUCCEEDED
        assert result.stage_results["src"].metadata["stopped_early"] is True
        expected = StageStatus.SKIPPED if how == "skipped" else StageStatus.FAILED
        assert result.stage_results["m"].status is expected
        if how == "failed":  # counts what it took from the stream, not what it handed on
            error = result.stage_results["m"].error or ""
            assert error.startswith("FAN_OUT item(s) [2] of ")
            received = int(error.split(" of ")[1].split()[0])
            assert received >= 3
        assert log == ["finally"]

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("via", ["execute", "stream"])
def test_a_producer_that_never_awaits_can_be_cancelled(backend: Backend, via: str) -> None:
    """Its items are only collected (no `send` to wait in): each item is still a checkpoint."""
    made = 0
    give_up: list[Any] = []  # what the caller does at item 100, set in the scenario

    @stage
    async def busy(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        nonlocal made
        for i in range(GUARD):
            made += 1
            if i == 100:
                give_up[0]()  # the caller gives up: it runs at the producer's next checkpoint
            yield i

    @stage
    async def count(items: list[int], ctx: PipelineContext[Any]) -> int:
        return len(items)

    pipeline = PipelineDefinition(
        "p", [StageDefinition("src", busy), StageDefinition("n", count, inputs=["src"])]
    )

    async def scenario() -> None:
        with anyio.fail_after(10):
            if via == "execute":
                with anyio.CancelScope() as outer:
                    give_up.append(outer.cancel)
                    await PipelineExecutor().execute(pipeline)
                assert outer.cancelled_caught
            else:
                reached = anyio.Event()
                give_up.append(reached.set)
                async with PipelineExecutor().stream(pipeline) as run:
                    await reached.wait()  # then leave the block: the run is cancelled
                with pytest.raises(RunNotFinishedError):
                    _ = run.result
        assert made < GUARD

    anyio.run(scenario, backend=backend)


class _StepClock:
    """A clock whose time moves only when the test says; its deadlines never fire by themselves."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await anyio.lowlevel.checkpoint()

    def deadline_scope(self, seconds: float) -> anyio.CancelScope:
        return anyio.CancelScope()  # as if the producer never reached a checkpoint in time


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_producer_overrunning_its_timeout_without_a_checkpoint_times_out(
    backend: Backend,
) -> None:
    clock = _StepClock()

    @stage
    async def blocking(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        for i in range(5):
            clock.t += 1.0  # blocking work, one second an item
            yield i

    @stage
    async def count(items: list[int], ctx: PipelineContext[Any]) -> int:
        return len(items)

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("src", blocking, timeout_ms=2500),
            StageDefinition("n", count, inputs=["src"]),
        ],
    )

    async def scenario() -> None:
        with anyio.fail_after(10):
            result = await PipelineExecutor(clock=clock).execute(pipeline)
        assert result.failed_stages == ["src"]
        assert result.stage_results["src"].error == "Timeout: stage 'src' exceeded timeout_ms=2500"

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_async_generator_reading_an_iterator_streams_on(backend: Backend) -> None:
    """A pipe (batching) gets the stream, not a list, and its own items stream to the next."""
    order: list[str] = []
    recorder = Recorder()

    @stage
    async def src(n: int, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        for i in range(n):
            yield i
        order.append("src done")

    @stage
    async def batches(
        items: typing.AsyncIterator[int], ctx: PipelineContext[Any]
    ) -> typing.AsyncIterator[list[int]]:
        buf: list[int] = []
        async for x in items:
            buf.append(x)
            if len(buf) == 3:
                yield buf
                buf = []
        if buf:
            yield buf

    @stage
    async def add(batch: list[int], ctx: PipelineContext[Any]) -> int:
        order.append(f"batch {batch[0]}")
        return sum(batch)

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("src", src),
            StageDefinition("batches", batches, inputs=["src"]),
            StageDefinition("sum", add, pattern=FAN_OUT, inputs=["batches"]),
        ],
    )
    assert pipeline.validate_pipeline() == []

    async def scenario() -> None:
        with anyio.fail_after(10):
            result = await PipelineExecutor(observers=[recorder]).execute(pipeline, 100)
        assert result.success, result.error
        sums = result.outputs["sum"]
        assert sums == [sum(range(i, min(i + 3, 100))) for i in range(0, 100, 3)]
        assert order.index("batch 0") < order.index("src done")  # streamed, not collected
        lineages = {getattr(e, "lineage_id", None) for e in recorder.events}
        assert "batches:0/sum" in lineages

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_yields_only_its_own_runs_events(backend: Backend) -> None:
    @stage
    async def inc(x: int, ctx: PipelineContext[Any]) -> int:
        return x + 1

    child = PipelineDefinition(
        "child", [StageDefinition("c1", inc), StageDefinition("c2", inc, inputs=["c1"])]
    )

    @stage
    async def nested(x: int, ctx: PipelineContext[Any]) -> int:
        result = await PipelineExecutor().execute(child, x)
        out: int = result.outputs["c2"]
        return out

    parent = PipelineDefinition(
        "parent",
        [
            StageDefinition("a", inc),
            StageDefinition("n", nested, inputs=["a"]),
            StageDefinition("sub", SubPipeline(child), inputs=["a"]),
        ],
    )

    async def scenario() -> None:
        with anyio.fail_after(10):
            async with PipelineExecutor().stream(parent, 0) as run:
                events = [event async for event in run]
        assert [e.kind for e in events].count("run_finished") == 1
        assert events[-1].kind == "run_finished"
        assert len({e.run_id for e in events}) == 1
        stage_ids = {getattr(e, "stage_id", None) for e in events} - {None}
        assert stage_ids == {"a", "n", "sub"}
        assert run.result.outputs["n"] == 3

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_producer_runs_inside_its_resources_and_middleware(backend: Backend) -> None:
    calls: list[tuple[str, int | None]] = []
    recorder = Recorder()
    held: list[int] = []
    llm = Resource(max_in_flight=1)

    class Refuse:
        async def __call__(self, call: Any, call_next: Any) -> StageResult[Any]:
            calls.append((call.stage_id, call.item))
            if call.stage_id == "src" and call.input == "refuse":
                return StageResult.failure("refused by middleware", stage_name="src")
            result: StageResult[Any] = await call_next(call)
            return result

    @stage
    async def src(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        for i in range(3):
            held.append(llm._held)  # no public gauge of what is held
            yield i

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("src", src, uses={"llm": 1}),
            StageDefinition("m", double, pattern=FAN_OUT, inputs=["src"]),
        ],
    )

    async def scenario() -> None:
        executor = PipelineExecutor(
            middleware=[Refuse()], resources={"llm": llm}, observers=[recorder]
        )
        with anyio.fail_after(10):
            result = await executor.execute(pipeline, "go")
        assert result.success, result.error
        assert result.outputs["m"] == [0, 2, 4]
        assert ("src", None) in calls
        assert held == [1, 1, 1]  # one acquisition held for the producer's whole run
        assert llm._held == 0
        waited = [e for e in recorder.events if e.kind == "resource_waited"]
        assert [(e.stage_id, e.resource) for e in waited] == [("src", "llm")]
        with anyio.fail_after(10):
            refused = await executor.execute(pipeline, "refuse")
        assert refused.stage_results["src"].error == "refused by middleware"
        assert refused.cancelled_stages == ["m"]

    anyio.run(scenario, backend=backend)


def test_a_stream_holder_sharing_a_resource_with_its_stream_is_an_issue() -> None:
    @stage
    async def src(n: int, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        for i in range(n):
            yield i

    @stage
    async def read(items: typing.AsyncIterator[int], ctx: PipelineContext[Any]) -> int:
        return len([x async for x in items])

    def pipeline(reader_uses: str) -> PipelineDefinition:
        return PipelineDefinition(
            "p",
            [
                StageDefinition("src", src),
                StageDefinition("m", double, pattern=FAN_OUT, inputs=["src"], uses={"llm": 1}),
                StageDefinition("r", read, inputs=["m"], uses={reader_uses: 1}),
            ],
        )

    (issue,) = pipeline("llm").issues
    assert issue.stage_id == "r"
    assert "'r' and 'm'" in issue.message
    assert "resource 'llm'" in issue.message
    assert "context.acquire('llm')" in issue.message
    assert pipeline("db").issues == ()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fail_fast", [True, False])
def test_consumers_of_a_failed_non_critical_producer_all_give_its_reason(
    backend: Backend, fail_fast: bool
) -> None:
    """Recorded when the producer fails, in definition order: not whichever task ran first."""

    @stage
    async def src(n: int, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        for i in range(n):
            if i == 3:
                raise ValueError("src broke")
            yield i

    @stage
    async def read(items: typing.AsyncIterator[int], ctx: PipelineContext[Any]) -> int:
        return len([x async for x in items])

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("src", src, critical=False),
            StageDefinition("m", double, pattern=FAN_OUT, inputs=["src"], critical=False),
            StageDefinition("it", read, inputs=["src"]),
        ],
        fail_fast=fail_fast,
    )

    async def scenario() -> None:
        with anyio.fail_after(10):
            result = await PipelineExecutor().execute(pipeline, 10)
        assert result.cancelled_stages == ["m", "it"]
        for sid in ("m", "it"):
            assert result.stage_results[sid].error == "[CANCELLED] producer 'src' failed"

    anyio.run(scenario, backend=backend)

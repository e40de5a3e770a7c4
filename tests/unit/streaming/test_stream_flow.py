"""Streaming (SPEC 11): items flow while the producer runs, in order, to every consumer."""

from __future__ import annotations

import collections.abc  # noqa: TC003  # stages' annotations are read at run time
import typing
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
import pytest

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
    StageStatus,
    stage,
)
from pipeline.testing import FakeClock
from tests.unit._support import BACKENDS, Backend, on_both_backends

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pipeline.protocol import PipelineStage

from tests.unit.streaming._chains import (
    FAN_OUT,
    Recorder,
    count,
    double,
    numbers,
    source_map_map_reduce,
    total,
)


@on_both_backends
async def test_an_item_starts_before_the_producer_ends() -> None:
    """The producer waits for its first item to be processed: only streaming can finish."""
    first_done = anyio.Event()

    @stage
    async def source(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        yield 1
        await first_done.wait()  # without streaming, nobody would ever set it
        yield 2

    @stage
    async def work(x: int, ctx: PipelineContext[Any]) -> int:
        if x == 1:
            first_done.set()
        return x * 10

    recorder = Recorder()
    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("source", source),
            StageDefinition("work", work, pattern=FAN_OUT, inputs=["source"]),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor(observers=[recorder]).execute(pipeline)
    assert result.success, result.error
    assert result.outputs["work"] == [10, 20]  # a leaf keeps its outputs
    first_item = recorder.index("fan_out_item_finished", "work", item=0)
    assert first_item < recorder.index("stage_finished", "source")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduling", ["waves", "eager"])
def test_source_map_map_reduce_streams_end_to_end(backend: Backend, scheduling: Any) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        executor = PipelineExecutor(scheduling=scheduling, observers=[recorder])
        with anyio.fail_after(5):
            result = await executor.execute(source_map_map_reduce(keep=True), 20)
        assert result.success, result.error
        assert result.outputs["total"] == sum(2 * i + 1 for i in range(20))
        assert result.outputs["count"] == 20
        assert result.outputs["double"] == [2 * i for i in range(20)]  # a list consumer: kept
        assert result.outputs["numbers"] is None  # only streaming consumers: not kept
        assert result.outputs["plus_one"] is None
        assert result.stage_runs["double"].items == 20
        assert result.stage_runs["numbers"].items == 20
        # The consumers start with their producer, not when it ends (nor with their wave).
        started = [e.stage_id for e in recorder.events if e.kind == "stage_started"]
        assert started[:4] == ["numbers", "double", "plus_one", "total"]
        assert recorder.index("stage_started", "total") < recorder.index(
            "stage_finished", "numbers"
        )

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_results_do_not_depend_on_scheduling() -> None:
    outcomes = []
    for scheduling in ("waves", "eager"):
        executor = PipelineExecutor(scheduling=scheduling)
        result = await executor.execute(source_map_map_reduce(keep=True), 7)
        outcomes.append((result.success, result.outputs, result.failed_stages))
    assert outcomes[0] == outcomes[1]


@on_both_backends
async def test_collected_list_keeps_the_producers_order() -> None:
    """Items finish in reverse order; the list a consumer collects is in yield order."""
    n = 5
    done = [anyio.Event() for _ in range(n)]

    @stage
    async def slow_first(x: int, ctx: PipelineContext[Any]) -> str:
        if x + 1 < n:
            await done[x + 1].wait()
        done[x].set()
        return f"item-{x}"

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("numbers", numbers),
            StageDefinition(
                "each", slow_first, pattern=FAN_OUT, inputs=["numbers"], max_concurrent_fan_out=n
            ),
            StageDefinition("joined", _joined, inputs=["each"]),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor().execute(pipeline, n)
    assert result.success, result.error
    assert result.outputs["each"] == [f"item-{i}" for i in range(n)]
    assert result.outputs["joined"] == ",".join(f"item-{i}" for i in range(n))


@stage
async def _joined(items: list[str], ctx: PipelineContext[Any]) -> str:
    return ",".join(items)


@on_both_backends
async def test_a_producer_feeds_several_consumers_each_sees_every_item() -> None:
    seen: dict[str, list[int]] = {"a": [], "b": [], "it": []}

    def recorder_stage(name: str) -> Any:
        @stage(name=name)
        async def body(x: int, ctx: PipelineContext[Any]) -> int:
            seen[name].append(x)
            return x

        return body

    @stage
    async def read_all(items: collections.abc.AsyncIterable[int], ctx: PipelineContext[Any]) -> int:
        async for x in items:
            seen["it"].append(x)
        return len(seen["it"])

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("numbers", numbers),
            StageDefinition("a", recorder_stage("a"), pattern=FAN_OUT, inputs=["numbers"]),
            StageDefinition("b", recorder_stage("b"), pattern=FAN_OUT, inputs=["numbers"]),
            StageDefinition("it", read_all, inputs=["numbers"]),
            StageDefinition("count", count, inputs=["numbers"]),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor().execute(pipeline, 12)
    assert result.success, result.error
    for name in ("a", "b", "it"):
        assert sorted(seen[name]) == list(range(12)), name
    assert seen["it"] == list(range(12))  # an iterator reads the producer's order
    assert result.outputs["count"] == 12
    assert result.outputs["numbers"] == list(range(12))  # a list consumer: kept


async def _as_text(items: AsyncIterator[int], ctx: PipelineContext[Any]) -> int:
    """`AsyncIterator` is imported for type checkers only: at run time the text is unresolvable."""
    return sum([x async for x in items])


async def _typing_iterator(items: typing.AsyncIterator[int], ctx: PipelineContext[Any]) -> int:
    return sum([x async for x in items])


class ClassConsumer:
    """A class stage whose `execute` takes an `AsyncIterable` (annotation as text)."""

    name = "class_consumer"

    async def execute(
        self, items: collections.abc.AsyncIterable[int], context: PipelineContext[Any]
    ) -> StageResult[int]:
        return StageResult.success(sum([x async for x in items]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("consumer", [_as_text, _typing_iterator, ClassConsumer()])
def test_iterator_annotations_get_an_iterator(backend: Backend, consumer: Any) -> None:
    body = consumer if isinstance(consumer, ClassConsumer) else stage(consumer)
    pipeline = PipelineDefinition(
        "p", [StageDefinition("numbers", numbers), StageDefinition("sum", body, inputs=["numbers"])]
    )

    async def scenario() -> None:
        with anyio.fail_after(5):
            result = await PipelineExecutor().execute(pipeline, 6)
        assert result.success, result.error
        assert result.outputs["sum"] == 15
        assert result.outputs["numbers"] is None  # streamed, not kept

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_a_list_consumer_gets_the_collected_list() -> None:
    pipeline = PipelineDefinition(
        "p", [StageDefinition("numbers", numbers), StageDefinition("n", count, inputs=["numbers"])]
    )
    result = await PipelineExecutor().execute(pipeline, 4)
    assert result.success, result.error
    assert result.outputs == {"numbers": [0, 1, 2, 3], "n": 4}


@on_both_backends
async def test_lineage_ids_on_item_events() -> None:
    recorder = Recorder()
    with anyio.fail_after(5):
        result = await PipelineExecutor(observers=[recorder]).execute(source_map_map_reduce(), 5)
    assert result.success, result.error
    by_stage: dict[str, set[str]] = {"double": set(), "plus_one": set()}
    for event in recorder.events:
        if getattr(event, "item", None) is not None:
            assert event.stream_lineage is not None  # type: ignore[union-attr]  # item events
            by_stage[event.stage_id].add(event.lineage_id)  # type: ignore[union-attr]
            assert event.lineage_id.startswith(f"numbers:{event.item}/")  # type: ignore[union-attr]
    assert by_stage["double"] == {f"numbers:{i}/double" for i in range(5)}
    assert by_stage["plus_one"] == {f"numbers:{i}/double/plus_one" for i in range(5)}
    stage_level = [e for e in recorder.events if e.kind == "stage_finished"]
    assert {e.lineage_id for e in stage_level} == {"numbers", "double", "plus_one", "total"}


@on_both_backends
async def test_stage_finished_carries_kept_outputs_only() -> None:
    recorder = Recorder()
    result = await PipelineExecutor(observers=[recorder]).execute(
        source_map_map_reduce(keep=True), 3
    )
    assert result.success, result.error
    finished = {e.stage_id: e for e in recorder.events if e.kind == "stage_finished"}
    assert finished["total"].output == 1 + 3 + 5
    assert finished["double"].output == [0, 2, 4]
    assert finished["numbers"].output is None
    assert "output" not in finished["total"].model_dump()


class ClassProducer:
    """A class whose `execute` is an async generator."""

    name = "class_producer"

    async def execute(self, input: int, context: PipelineContext[Any]) -> typing.AsyncIterator[str]:
        for i in range(input):
            yield f"x{i}"


@on_both_backends
async def test_a_class_producer_streams_and_validates() -> None:
    pipeline = PipelineDefinition(
        "p",
        [
            # A class producer does not match the PipelineStage protocol's `execute` type.
            StageDefinition("src", cast("PipelineStage[Any, Any]", ClassProducer())),
            StageDefinition("upper", _upper, pattern=FAN_OUT, inputs=["src"]),
        ],
    )
    assert pipeline.validate_pipeline() == []
    result = await PipelineExecutor().execute(pipeline, 3)
    assert result.success, result.error
    assert result.outputs["upper"] == ["X0", "X1", "X2"]


@stage
async def _upper(x: str, ctx: PipelineContext[Any]) -> str:
    return x.upper()


def test_typed_wiring_reads_a_producer_as_its_items() -> None:
    ok = PipelineDefinition(
        "ok",
        [
            StageDefinition("numbers", numbers),
            StageDefinition("double", double, pattern=FAN_OUT, inputs=["numbers"]),
            StageDefinition("total", total, inputs=["numbers"]),
            StageDefinition("count", count, inputs=["numbers"]),
        ],
    )
    assert ok.validate_pipeline() == []
    bad = PipelineDefinition(
        "bad",
        [
            StageDefinition("numbers", numbers),
            StageDefinition("upper", _upper, pattern=FAN_OUT, inputs=["numbers"]),
        ],
    )
    (issue,) = bad.issues
    assert issue.code == "type_mismatch"
    assert "'upper'" in issue.message


def test_a_producer_called_directly_collects_its_items() -> None:
    async def scenario() -> None:
        result = await numbers.execute(3, PipelineContext())
        assert result.output == [0, 1, 2]

    anyio.run(scenario)


@on_both_backends
async def test_skipped_producer_skips_its_fan_out_consumers() -> None:
    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("numbers", numbers, condition=lambda ctx: False),
            StageDefinition("double", double, pattern=FAN_OUT, inputs=["numbers"]),
            StageDefinition("total", total, inputs=["numbers"]),
        ],
    )
    result = await PipelineExecutor().execute(pipeline, 3)
    assert result.success, result.error
    assert result.stage_results["numbers"].status is StageStatus.SKIPPED
    assert result.stage_results["double"].status is StageStatus.SKIPPED
    assert (
        result.stage_results["double"].metadata["skip_reason"]
        == "input stage 'numbers' was skipped"
    )
    assert result.outputs["total"] == 0  # an iterator reader reads an empty stream


@on_both_backends
async def test_empty_stream() -> None:
    result = await PipelineExecutor().execute(source_map_map_reduce(keep=True), 0)
    assert result.success, result.error
    assert result.outputs["total"] == 0
    assert result.outputs["double"] == []


@on_both_backends
async def test_producer_timeout_bounds_its_whole_run() -> None:
    """Each item is quick, all of them are not: `timeout_ms` is for the whole stream."""
    clock = FakeClock()

    @stage
    async def ticking(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        for i in range(10):
            await clock.sleep(0.03)
            yield i

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("ticking", ticking, timeout_ms=100),
            StageDefinition("double", double, pattern=FAN_OUT, inputs=["ticking"]),
        ],
    )
    async with clock:
        result = await PipelineExecutor(clock=clock).execute(pipeline)
    assert not result.success
    error = result.stage_results["ticking"].error or ""
    assert "Timeout: stage 'ticking' exceeded timeout_ms=100" in error
    assert result.stage_results["double"].status is StageStatus.CANCELLED
    await anyio.lowlevel.checkpoint()


@on_both_backends
async def test_the_first_item_starts_before_a_busy_source_yields_its_second() -> None:
    """A source that never waits still lets its consumer start item 0 before it makes item 1."""
    yielded = 0
    seen_at_first: list[int] = []

    @stage
    async def busy(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        nonlocal yielded
        for i in range(50):
            yielded += 1
            yield i

    @stage
    async def note(x: int, ctx: PipelineContext[Any]) -> int:
        if not seen_at_first:
            seen_at_first.append(yielded)
        return x

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("busy", busy),
            StageDefinition("note", note, pattern=FAN_OUT, inputs=["busy"]),
            StageDefinition("total", total, inputs=["note"]),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor().execute(pipeline)
    assert result.success, result.error
    assert seen_at_first == [1]


@on_both_backends
async def test_record_run_leaves_producers_streaming() -> None:
    from pipeline.testing import record_run

    recorded, recorder = record_run(source_map_map_reduce())
    result = await PipelineExecutor().execute(recorded, 4)
    assert result.success, result.error
    assert result.outputs["total"] == 1 + 3 + 5 + 7
    assert "numbers" not in recorder.started  # a producer is not wrapped
    assert "total" in recorder.started


@on_both_backends
async def test_an_iterator_after_a_fan_out_sees_completion_order() -> None:
    """Item 0 waits for item 1 to be read downstream: outputs are passed on as they finish."""
    one_read = anyio.Event()
    order: list[int] = []

    @stage
    async def hold_first(x: int, ctx: PipelineContext[Any]) -> int:
        if x == 0:
            await one_read.wait()
        return x

    @stage
    async def read(items: typing.AsyncIterator[int], ctx: PipelineContext[Any]) -> list[int]:
        async for x in items:
            order.append(x)
            if x == 1:
                one_read.set()
        return order

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("numbers", numbers),
            StageDefinition(
                "hold", hold_first, pattern=FAN_OUT, inputs=["numbers"], max_concurrent_fan_out=2
            ),
            StageDefinition("read", read, inputs=["hold"]),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor().execute(pipeline, 3)
    assert result.success, result.error
    assert order[0] == 1
    assert sorted(order) == [0, 1, 2]


def test_an_iterator_input_needs_a_streaming_producer() -> None:
    @stage
    async def plain(n: int, ctx: PipelineContext[Any]) -> list[int]:
        return list(range(n))

    bad = PipelineDefinition(
        "bad",
        [StageDefinition("plain", plain), StageDefinition("total", total, inputs=["plain"])],
    )
    (issue,) = bad.issues
    assert issue.code == "type_mismatch"
    assert issue.stage_id == "total"
    assert "stage 'plain' does not stream" in issue.message
    assert "annotate the input as a list instead" in issue.message
    chained = source_map_map_reduce()  # total reads plus_one, a FAN_OUT over a FAN_OUT over numbers
    assert chained.validate_pipeline() == []

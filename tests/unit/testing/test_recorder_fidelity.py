"""`record_run` changes nothing it records: validation, output types and cache keys (SPEC 7)."""

from __future__ import annotations

import functools
from typing import Any, Literal

import anyio
import pytest
from pydantic import BaseModel

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
    stage,
)
from pipeline.cache import CacheKey, MemoryCache, code_fingerprint, output_type_of
from pipeline.testing import FakeClock, RecordingStage, record_run
from tests.unit._support import BACKENDS

StageKind = Literal["class", "function"]
KINDS: list[StageKind] = ["class", "function"]


class Point(BaseModel):
    x: int
    y: int


class MakePoint:
    """A class stage whose output type comes from its `StageResult[Point]` annotation."""

    name = "make_point"

    def __init__(self) -> None:
        self.calls = 0

    async def execute(self, input: int, context: PipelineContext[Any], /) -> StageResult[Point]:
        self.calls += 1
        return StageResult.success(Point(x=input, y=input * 2))


def make_point_function(calls: list[int]) -> Any:
    """A `@stage` function stage whose output type comes from its `-> Point` annotation."""

    @stage
    async def make_point(x: int, ctx: PipelineContext[Any]) -> Point:
        calls.append(x)
        return Point(x=x, y=x * 2)

    return make_point


def point_stage(kind: StageKind) -> tuple[Any, Any]:
    """A stage producing `Point(x, 2x)` of `kind`, and a way to count its calls."""
    if kind == "class":
        made = MakePoint()
        return made, lambda: made.calls
    calls: list[int] = []
    return make_point_function(calls), lambda: len(calls)


class SyncExecute:
    name = "sync"

    def execute(self, input: Any, context: PipelineContext[Any], /) -> StageResult[Any]:
        return StageResult.success(input)


class NoExecute:
    name = "no_execute"


class NotCallableExecute:
    name = "not_callable"
    execute = 5


# -- validation --------------------------------------------------------------------------------


def invalid_definition() -> PipelineDefinition:
    return PipelineDefinition(
        "p",
        [
            StageDefinition("good", MakePoint()),
            StageDefinition("sync", SyncExecute(), inputs=["good"]),  # type: ignore[arg-type]  # invalid on purpose
            StageDefinition("missing", NoExecute(), inputs=["good"]),  # type: ignore[arg-type]  # invalid on purpose
            StageDefinition("number", NotCallableExecute(), inputs=["good"]),  # type: ignore[arg-type]  # invalid on purpose
        ],
    )


def test_validation_messages_of_a_recording_are_those_of_the_original() -> None:
    original = invalid_definition()
    recorded, _ = record_run(original)
    messages = original.validate_pipeline()
    assert recorded.validate_pipeline() == messages
    assert [i.stage_id for i in recorded.issues] == ["sync", "missing", "number"]
    assert "SyncExecute has an execute that is not async" in messages[0]
    assert "NoExecute has no execute method" in messages[1]
    assert not any("RecordingStage" in m for m in recorded.validate_pipeline())


def test_only_stages_with_an_async_execute_are_wrapped() -> None:
    original = invalid_definition()
    recorded, _ = record_run(original)
    assert isinstance(recorded.stages[0].stage, RecordingStage)
    assert [s.stage for s in recorded.stages[1:]] == [s.stage for s in original.stages[1:]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_recorded_invalid_definition_fails_validation_like_the_original(backend: str) -> None:
    async def scenario() -> None:
        original = invalid_definition()
        recorded, recorder = record_run(original)
        executor = PipelineExecutor(clock=FakeClock())
        with anyio.fail_after(10):
            plain = await executor.execute(original, 1)
            watched = await executor.execute(recorded, 1)
        assert watched.failed_stages == plain.failed_stages == ["validation"]
        assert watched.metadata["validation_errors"] == plain.metadata["validation_errors"]
        assert recorder.records == ()  # nothing ran

    anyio.run(scenario, backend=backend)


# -- output types and code fingerprints -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_output_type_of_a_recorded_stage_is_the_originals(kind: StageKind) -> None:
    original = PipelineDefinition("p", [StageDefinition("make", point_stage(kind)[0])])
    recorded, _ = record_run(original)
    twice, _ = record_run(recorded)  # a wrapper around a wrapper unwraps all the way
    assert output_type_of(original.stages[0].stage) is Point
    assert output_type_of(recorded.stages[0].stage) is Point
    assert output_type_of(twice.stages[0].stage) is Point


@pytest.mark.parametrize("kind", KINDS)
def test_code_fingerprint_of_a_recorded_stage_is_the_originals(kind: StageKind) -> None:
    original = point_stage(kind)[0]
    recorded, _ = record_run(PipelineDefinition("p", [StageDefinition("make", original)]))
    twice, _ = record_run(recorded)
    expected = code_fingerprint(original)
    assert code_fingerprint(recorded.stages[0].stage) == expected
    assert code_fingerprint(twice.stages[0].stage) == expected
    assert expected != code_fingerprint(SyncExecute())  # it does hash the stage's own code


# -- end to end with a cache ------------------------------------------------------------------


class KeySpy:
    """A `MemoryCache` that notes the keys it is asked for and given."""

    def __init__(self) -> None:
        self.store = MemoryCache()
        self.gets: list[CacheKey] = []
        self.puts: list[CacheKey] = []

    async def get(self, key: CacheKey) -> bytes | None:
        self.gets.append(key)
        return await self.store.get(key)

    async def put(self, key: CacheKey, value: bytes) -> None:
        self.puts.append(key)
        await self.store.put(key, value)

    async def delete(self, key: CacheKey) -> bool:
        return await self.store.delete(key)

    async def invalidate(self, stage_id: str) -> int:
        return await self.store.invalidate(stage_id)

    async def clear(self) -> None:
        await self.store.clear()

    async def count(self, stage_id: str | None = None) -> int:
        return await self.store.count(stage_id)

    async def aclose(self) -> None:
        await self.store.aclose()


class Seen:
    """An uncached consumer noting the type of the value it receives."""

    name = "seen"

    def __init__(self) -> None:
        self.types: list[type[Any]] = []

    async def execute(self, input: Any, context: PipelineContext[Any], /) -> StageResult[str]:
        self.types.append(type(input))
        return StageResult.success(type(input).__name__)


async def recorded_run_feeds_the_cache_of_a_plain_rerun(kind: StageKind) -> None:
    made, calls = point_stage(kind)
    seen = Seen()
    original = PipelineDefinition(
        "p",
        [
            StageDefinition("make", made, cache_code_fingerprint=True),
            StageDefinition("seen", seen, inputs=["make"], cache=False),
        ],
    )
    spy = KeySpy()
    executor = PipelineExecutor(cache=spy, clock=FakeClock())
    recorded, recorder = record_run(original)
    with anyio.fail_after(10):
        first = await executor.execute(recorded, 3)
        stored = list(spy.puts)
        spy.gets.clear()
        second = await executor.execute(original, 3)
        again, again_recorder = record_run(original)
        third = await executor.execute(again, 3)

    assert first.success, first.failed_stages
    assert recorder.started == ["make", "seen"]
    assert first.stage_runs["make"].cache_warnings == ()
    assert [k.stage_id for k in stored] == ["make"]  # the recorded run stored its output

    assert second.success, second.failed_stages
    assert second.stage_runs["make"].cached  # the plain rerun hit it...
    assert spy.gets[0] == stored[0]  # ...under the same key
    assert calls() == 1
    assert second.outputs["make"] == Point(x=3, y=6)
    assert type(second.outputs["make"]) is Point  # restored as the model, not a dict
    assert seen.types == [Point, Point, Point]  # the consumer got the model each time

    assert third.stage_runs["make"].cached  # and a recorded rerun hits it too
    assert again_recorder.call_count("make") == 0
    assert again_recorder.inputs("seen") == [Point(x=3, y=6)]
    assert spy.puts == stored  # no new entries: every key matched


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_recorded_run_stores_entries_a_plain_rerun_hits(backend: str, kind: StageKind) -> None:
    anyio.run(
        functools.partial(recorded_run_feeds_the_cache_of_a_plain_rerun, kind), backend=backend
    )

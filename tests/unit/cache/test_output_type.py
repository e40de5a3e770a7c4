"""`output_type_of` answers per stage object: every `@stage` function has its own output type."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
from pydantic import BaseModel

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
    stage,
)
from pipeline.cache import MemoryCache, _serialize as serialize_module, output_type_of
from pipeline.testing import RecordingStage, RunRecorder
from tests.unit._support import on_both_backends


class Item(BaseModel):
    name: str


@stage
async def numbers(input: Any, ctx: PipelineContext[Any]) -> list[int]:
    return [1, 2]


@stage
async def pairs(input: Any, ctx: PipelineContext[Any]) -> tuple[int, ...]:
    return (1, 2)


@stage
async def items(input: Any, ctx: PipelineContext[Any]) -> StageResult[dict[str, Item]]:
    return StageResult.success({"a": Item(name="a")})


def test_function_stages_of_one_class_resolve_to_their_own_types() -> None:
    assert isinstance(numbers, FunctionStage)
    assert isinstance(pairs, FunctionStage)
    # In both orders: a per-class memo would hand the second stage the first one's answer.
    assert output_type_of(pairs) == tuple[int, ...]
    assert output_type_of(numbers) == list[int]
    assert output_type_of(items) == dict[str, Item]
    assert output_type_of(pairs) == tuple[int, ...]


@pytest.fixture
def resolutions(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The stages `output_type_of` really resolved (memo misses), in order."""
    seen: list[object] = []
    real = serialize_module._resolve

    def counting(stage: object) -> Any:
        seen.append(stage)
        return real(stage)

    monkeypatch.setattr(serialize_module, "_resolve", counting)
    return seen


def test_each_stage_is_resolved_once(resolutions: list[object]) -> None:
    async def body(input: int, ctx: PipelineContext[Any]) -> list[str]:
        return [str(input)]

    one, two = FunctionStage(body), FunctionStage(body)
    for _ in range(3):
        assert output_type_of(one) == list[str]
    assert resolutions == [one]
    assert output_type_of(two) == list[str]
    assert resolutions == [one, two]


def test_a_declared_type_wins_without_resolving(resolutions: list[object]) -> None:
    async def body(input: int, ctx: PipelineContext[Any]) -> list[str]:
        return []

    fresh = FunctionStage(body)
    assert output_type_of(fresh, declared=Item) is Item
    assert resolutions == []


def test_a_wrapper_shares_the_entry_of_the_stage_it_wraps(resolutions: list[object]) -> None:
    async def body(input: int, ctx: PipelineContext[Any]) -> set[int]:
        return set()

    inner = FunctionStage(body)
    wrapped = RecordingStage("s", inner, RunRecorder())
    assert output_type_of(inner) == set[int]
    assert output_type_of(wrapped) == set[int]
    assert resolutions == [inner]


class Unhashable:
    """A stage that cannot be a dictionary key."""

    __hash__ = None  # type: ignore[assignment]  # unhashable on purpose
    name = "unhashable"

    async def execute(self, input: object, context: PipelineContext[Any]) -> StageResult[Item]:
        raise NotImplementedError


class NoWeakref:
    """A stage without `__weakref__`."""

    __slots__ = ()
    name = "no_weakref"

    async def execute(self, input: object, context: PipelineContext[Any]) -> StageResult[Item]:
        raise NotImplementedError


@pytest.mark.parametrize("cls", [Unhashable, NoWeakref])
def test_a_stage_that_cannot_be_remembered_is_resolved_every_time(
    cls: type[Any], resolutions: list[object]
) -> None:
    odd = cls()
    assert output_type_of(odd) is Item
    assert output_type_of(odd) is Item
    assert resolutions == [odd, odd]


def test_the_memo_does_not_keep_a_stage_alive() -> None:
    async def body(input: int, ctx: PipelineContext[Any]) -> list[int]:
        return []

    temporary = FunctionStage(body)
    assert output_type_of(temporary) == list[int]
    ref = weakref.ref(temporary)
    del temporary  # no cycle holds a FunctionStage: dropping the last reference frees it
    assert ref() is None


async def _hits_restore_each_stages_type() -> None:
    definition = PipelineDefinition(
        "typed",
        [
            StageDefinition("numbers", numbers),
            StageDefinition("pairs", pairs),
            StageDefinition("items", items),
        ],
    )
    cache = MemoryCache()
    first = await PipelineExecutor(cache=cache).execute(definition, None)
    assert first.success
    assert all(not run.cache_warnings for run in first.stage_runs.values())
    again = await PipelineExecutor(cache=cache).execute(definition, None)
    assert all(run.cached for run in again.stage_runs.values())
    assert again.outputs == {"numbers": [1, 2], "pairs": (1, 2), "items": {"a": Item(name="a")}}
    assert type(again.outputs["pairs"]) is tuple


test_cache_hits_restore_each_function_stages_own_type = on_both_backends(
    _hits_restore_each_stages_type
)

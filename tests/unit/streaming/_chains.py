"""Stages and pipelines shared by the streaming tests (not a test module)."""

from __future__ import annotations

from collections.abc import AsyncIterator  # noqa: TC003  # stages' annotations are read at run time
from typing import TYPE_CHECKING, Any

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    StageDefinition,
    stage,
)

if TYPE_CHECKING:
    import anyio

    from pipeline.events import PipelineEvent
    from pipeline.protocol import PipelineStage

FAN_OUT = ExecutionPattern.FAN_OUT


class Recorder:
    """A sync observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent) -> None:
        self.events.append(event)

    def kinds(self, stage_id: str) -> list[str]:
        return [e.kind for e in self.events if getattr(e, "stage_id", None) == stage_id]

    def index(self, kind: str, stage_id: str, item: int | None = None) -> int:
        for i, e in enumerate(self.events):
            same = e.kind == kind and getattr(e, "stage_id", None) == stage_id
            if same and (item is None or getattr(e, "item", None) == item):
                return i
        raise AssertionError(f"no {kind} event of {stage_id!r} (item {item})")


def endless(closed: anyio.Event) -> PipelineStage[Any, Any]:
    """A producer yielding 0, 1, 2, ... until it is stopped, then setting `closed`."""

    @stage
    async def endless(_: Any, ctx: PipelineContext[Any]) -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    return endless


@stage
async def numbers(n: int, ctx: PipelineContext[Any]) -> AsyncIterator[int]:
    """Yields 0 .. n-1."""
    for i in range(n):
        yield i


@stage
async def double(x: int, ctx: PipelineContext[Any]) -> int:
    return 2 * x


@stage
async def plus_one(x: int, ctx: PipelineContext[Any]) -> int:
    return x + 1


@stage
async def total(items: AsyncIterator[int], ctx: PipelineContext[Any]) -> int:
    acc = 0
    async for x in items:
        acc += x
    return acc


@stage
async def count(items: list[int], ctx: PipelineContext[Any]) -> int:
    return len(items)


def source_map_map_reduce(*, cap: int | None = 4, keep: bool = False) -> PipelineDefinition:
    """numbers -> double -> plus_one -> total (an AsyncIterator reducer); `keep` adds a list
    consumer of `double`, which makes `double` collect its outputs."""
    stages = [
        StageDefinition("numbers", numbers),
        StageDefinition(
            "double", double, pattern=FAN_OUT, inputs=["numbers"], max_concurrent_fan_out=cap
        ),
        StageDefinition(
            "plus_one", plus_one, pattern=FAN_OUT, inputs=["double"], max_concurrent_fan_out=cap
        ),
        StageDefinition("total", total, inputs=["plus_one"]),
    ]
    if keep:
        stages.append(StageDefinition("count", count, inputs=["double"]))
    return PipelineDefinition("streaming", stages)

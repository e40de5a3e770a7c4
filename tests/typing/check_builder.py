"""Pinned inference of `PipelineBuilder` wiring: checked by mypy and pyright, never run."""

from __future__ import annotations

from typing import Any, assert_type

from pipeline import (
    ExecutionPattern,
    PipelineBuilder,
    PipelineContext,
    PipelineDefinition,
    RetryConfig,
    StageRef,
    StageResult,
    stage,
)


@stage
async def split(text: str, ctx: PipelineContext[Any]) -> list[str]:
    return text.split()


@stage
async def length(word: str, ctx: PipelineContext[Any]) -> int:
    return len(word)


@stage
def total(lengths: list[int], ctx: PipelineContext[Any]) -> int:
    return sum(lengths)


@stage
async def report(pair: tuple[list[str], int], ctx: PipelineContext[Any]) -> str:
    words, n = pair
    return f"{len(words)} words, {n} letters"


@stage
async def anything(value: Any, ctx: PipelineContext[Any]) -> bytes:
    return repr(value).encode()


@stage
async def maybe(value: int | None, ctx: PipelineContext[Any]) -> bool:
    return value is not None


@stage
async def six(
    values: tuple[str, list[str], list[int], int, str, bytes], ctx: PipelineContext[Any]
) -> float:
    return 1.0


@stage
async def one(values: tuple[int], ctx: PipelineContext[Any]) -> int:
    return values[0]


class Shout:
    """A class stage: `PipelineStage[str, str]` by its `execute`."""

    name = "shout"

    async def execute(self, text: str, ctx: PipelineContext[Any], /) -> StageResult[str]:
        return StageResult.success(text.upper())


typed = PipelineBuilder[str]("words")
assert_type(typed, PipelineBuilder[str])
words = typed.add("split", split)
assert_type(words, StageRef[list[str]])
lengths = typed.fan_out("length", length, inputs=words)
assert_type(lengths, StageRef[list[int]])
same = typed.add("length2", length, inputs=words, pattern=ExecutionPattern.FAN_OUT)
assert_type(same, StageRef[list[int]])
summed = typed.add("total", total, inputs=lengths, timeout_ms=500, retry_config=RetryConfig())
assert_type(summed, StageRef[int])
text = typed.add("report", report, inputs=(words, summed))
assert_type(text, StageRef[str])
loud = typed.add("shout", Shout(), inputs=text, pattern=ExecutionPattern.PARALLEL)
assert_type(loud, StageRef[str])
entry = typed.add("shout_input", Shout())
assert_type(entry, StageRef[str])
# Any accepts every ref, and a ref of T fits a stage taking a wider type (int into int | None).
assert_type(typed.add("repr", anything, inputs=lengths), StageRef[bytes])
assert_type(typed.add("maybe", maybe, inputs=summed, critical=False), StageRef[bool])
assert_type(typed.add("one", one, inputs=(summed,)), StageRef[int])
assert_type(
    typed.add("six", six, inputs=(loud, words, lengths, summed, text, typed.add("b", anything))),
    StageRef[float],
)
assert_type(typed.build(), PipelineDefinition)

# A bare builder takes any initial input; a builder of a list can fan out over it directly.
loose = PipelineBuilder("loose", description="any input", fail_fast=False)
assert_type(loose.add("split", split), StageRef[list[str]])
assert_type(loose.add("shout", Shout()), StageRef[str])
batch = PipelineBuilder[list[str]]("batch")
assert_type(batch.fan_out("length", length), StageRef[list[int]])
assert_type(batch.add("length2", length, pattern=ExecutionPattern.FAN_OUT), StageRef[list[int]])
assert_type(batch.add("whole", anything), StageRef[bytes])

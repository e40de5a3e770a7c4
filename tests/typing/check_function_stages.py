"""Pinned inference of function stages: checked by mypy (`make typecheck`), never run."""

from __future__ import annotations

from typing import Any, assert_type

from pipeline import FunctionStage, PipelineContext, PipelineStage, StageResult, stage


@stage
async def to_text(x: int, ctx: PipelineContext[Any]) -> str:
    return str(x)


@stage(name="parse")
async def parse(text: str, ctx: PipelineContext[Any]) -> StageResult[int]:
    return StageResult.success(int(text))


@stage
def sync_len(items: list[str], ctx: PipelineContext[Any]) -> int:
    return len(items)


@stage(abandon_on_cancel=True)
def sync_result(x: float, ctx: PipelineContext[Any]) -> StageResult[bytes]:
    return StageResult.success(b"x" * int(x))


assert_type(to_text, FunctionStage[int, str])
assert_type(parse, FunctionStage[str, int])
assert_type(sync_len, FunctionStage[list[str], int])
assert_type(sync_result, FunctionStage[float, bytes])


async def plain(x: bytes, ctx: PipelineContext[Any]) -> list[int]:
    return list(x)


assert_type(FunctionStage(plain), FunctionStage[bytes, list[int]])
assert_type(FunctionStage(plain, name="p"), FunctionStage[bytes, list[int]])

# A function stage satisfies the protocol with the same types...
as_protocol: PipelineStage[int, str] = to_text
parsed: PipelineStage[str, int] = parse


async def results() -> None:
    ctx: PipelineContext[Any] = PipelineContext()
    assert_type(await to_text.execute(1, ctx), StageResult[str])
    assert_type(await parse.execute("1", ctx), StageResult[int])
    assert_type((await sync_len.execute(["a"], ctx)).output, int | None)

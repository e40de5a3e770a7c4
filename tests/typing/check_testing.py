"""Pinned inference of `pipeline.testing` helpers: checked by mypy, never run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_type

from pipeline import PipelineContext, PipelineDefinition, PipelineStage, StageResult, stage
from pipeline.testing import (
    FakeClock,
    RunRecorder,
    ScriptedStage,
    StageCall,
    make_context,
    record_run,
    run_stage,
)


@dataclass
class Deps:
    url: str


@stage
async def fetch(path: str, ctx: PipelineContext[Deps]) -> bytes:
    return (ctx.deps.url + path).encode()


assert_type(make_context(), PipelineContext[None])
assert_type(make_context(deps=Deps("u")), PipelineContext[Deps])
assert_type(make_context(state={"a": 1}, session="db"), PipelineContext[None])


async def harness() -> None:
    call = await run_stage(fetch, "/x", deps=Deps("u"))
    assert_type(call, StageCall[bytes])
    result, ctx = call
    assert_type(result, StageResult[bytes])
    assert_type(ctx, PipelineContext[Any])
    assert_type(call.output, bytes | None)
    assert_type(await run_stage(fetch, "/y", timeout_ms=10, clock=FakeClock()), StageCall[bytes])

    scripted = ScriptedStage(1, 2)
    assert_type(scripted, ScriptedStage[Any, int])
    assert_type((await run_stage(scripted, "anything")).result, StageResult[int])
    typed = ScriptedStage[str, int](1, ValueError("x"))
    usable: PipelineStage[str, int] = typed
    assert_type(usable.name, str)
    assert_type(typed.inputs, list[str])

    recorded, recorder = record_run(PipelineDefinition("p", []))
    assert_type(recorded, PipelineDefinition)
    assert_type(recorder, RunRecorder)

"""`run_stage` and `make_context`: calling one stage in a test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from pipeline import (
    PipelineContext,
    StageOutputError,
    StageResult,
    StageTimeoutError,
    stage,
)
from pipeline.testing import Delay, FakeClock, ScriptedStage, StageCall, make_context, run_stage


@dataclass
class Deps:
    greeting: str


@stage
async def greet(name: str, ctx: PipelineContext[Deps]) -> str:
    ctx.set_state("greeted", name)
    ctx.increment_metric("greetings")
    return f"{ctx.deps.greeting}, {name}"


def test_make_context_builds_a_typed_context() -> None:
    ctx = make_context(deps=Deps("hi"), state={"a": 1}, metrics={"m": 2}, session="db")
    assert ctx.deps == Deps("hi")
    assert ctx.get_state("a") == 1
    assert ctx.metrics == {"m": 2}
    assert ctx.session == "db"
    assert make_context().deps is None


async def test_returns_result_and_context_after_the_call() -> None:
    call = await run_stage(greet, "Ada", deps=Deps("Hello"), state={"x": 1})
    assert isinstance(call, StageCall)
    result, ctx = call
    assert result.output == "Hello, Ada"
    assert call.output == "Hello, Ada"
    assert result.stage_name == "greet"
    assert ctx.state == {"x": 1, "greeted": "Ada"}
    assert ctx.metrics == {"greetings": 1}


async def test_uses_given_context_and_stage_id() -> None:
    ctx = make_context(deps=Deps("Hey"))
    result, same = await run_stage(greet, "Bo", context=ctx, stage_id="greeter")
    assert same is ctx
    assert result.stage_name == "greeter"
    with pytest.raises(TypeError, match="either context= or state"):
        await run_stage(greet, "Bo", context=ctx, state={"a": 1})


async def test_keeps_a_stage_name_the_stage_set_itself() -> None:
    named = ScriptedStage(StageResult.success(1, stage_name="mine"))
    result, _ = await run_stage(named, None)
    assert result.stage_name == "mine"


async def test_rejects_a_return_value_that_is_not_a_result() -> None:
    class Sloppy:
        name = "sloppy"

        async def execute(self, input: Any, context: PipelineContext[Any], /) -> Any:
            return 42

    with pytest.raises(StageOutputError, match="returned int, expected StageResult") as info:
        await run_stage(Sloppy(), None)
    assert info.value.stage_id == "sloppy"


async def test_timeout_on_the_fake_clock() -> None:
    clock = FakeClock()
    slow = ScriptedStage(Delay(5, then="late"), name="slow", clock=clock)
    async with clock:  # running: virtual time jumps to the next wake-up or deadline
        with pytest.raises(StageTimeoutError, match="exceeded timeout_ms=100") as info:
            await run_stage(slow, None, timeout_ms=100, clock=clock)
        assert info.value.timeout_ms == 100
        assert clock.now() == 0.1  # the deadline fired; the 5 s sleep it cut short never ended
        quick = ScriptedStage(Delay(0.05, then="ok"), clock=clock)
        assert (await run_stage(quick, None, timeout_ms=100, clock=clock)).output == "ok"


async def test_timeout_with_real_clock_default() -> None:
    quick = ScriptedStage("ok")
    with anyio.fail_after(5):
        assert (await run_stage(quick, None, timeout_ms=10_000)).output == "ok"

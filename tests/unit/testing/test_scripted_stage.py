"""`ScriptedStage`: scripted outcomes per call, recorded inputs."""

from __future__ import annotations

import anyio
import pytest

from pipeline import (
    ExecutionPattern,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline.testing import Block, Delay, Fail, FakeClock, ScriptedStage, run_stage


async def test_plays_values_failures_results_and_exceptions_in_order() -> None:
    s = ScriptedStage(
        1,
        Fail("nope", metadata={"why": "test"}),
        StageResult.skipped("not today"),
        ValueError("boom"),
        KeyError,
        name="s",
    )
    assert (await run_stage(s, "a")).output == 1
    failed, _ = await run_stage(s, "b")
    assert (failed.status, failed.error, failed.metadata) == (
        StageStatus.FAILED,
        "nope",
        {"why": "test"},
    )
    assert (await run_stage(s, "c")).result.status is StageStatus.SKIPPED
    with pytest.raises(ValueError, match="boom"):
        await run_stage(s, "d")
    with pytest.raises(KeyError):
        await run_stage(s, "e")
    assert s.inputs == ["a", "b", "c", "d", "e"]
    assert s.call_count == 5
    assert len(s.contexts) == 5


async def test_running_out_of_script_fails_unless_repeat_last() -> None:
    once = ScriptedStage("x", name="once")
    await run_stage(once, None)
    with pytest.raises(AssertionError, match="'once' was called 2 times but scripted for 1"):
        await run_stage(once, None)
    forever = ScriptedStage("x", repeat_last=True)
    for _ in range(3):
        assert (await run_stage(forever, None)).output == "x"
    with pytest.raises(AssertionError, match="scripted for 0"):
        await run_stage(ScriptedStage(), None)


async def test_delay_sleeps_on_the_given_clock() -> None:
    clock = FakeClock()
    s = ScriptedStage(Delay(2.5, then=Delay(1, then="done")), clock=clock)
    async with clock:
        assert (await run_stage(s, None)).output == "done"
    assert clock.sleeps == [2.5, 1]
    assert clock.now() == 3.5


async def test_delay_without_clock_uses_real_time() -> None:
    s = ScriptedStage(Delay(0, then="now"))
    with anyio.fail_after(5):
        assert (await run_stage(s, None)).output == "now"
    # An hour of real time really blocks (a virtual sleep would return at once): check that
    # it is still waiting once everything else is idle, then cancel it.
    hour = ScriptedStage(Delay(3600, then="late"))
    finished: list[str | None] = []

    async def run() -> None:
        finished.append((await run_stage(hour, None)).output)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await hour.wait_for_calls(1)
            await anyio.wait_all_tasks_blocked()
            assert finished == []
            tg.cancel_scope.cancel()
    assert finished == []


async def test_block_until_event_then_step() -> None:
    release = anyio.Event()
    s = ScriptedStage(Block(until=release, then=Fail("released")))
    results = []

    async def run() -> None:
        results.append((await run_stage(s, 1)).result)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await s.wait_for_calls(1)
            assert not results
            release.set()
    assert results[0].error == "released"
    await s.wait_for_calls(1)  # already reached: returns at once


async def test_retries_consume_the_script_and_record_each_attempt() -> None:
    clock = FakeClock()
    flaky = ScriptedStage(TimeoutError("slow"), Fail("busy"), "ok", name="flaky")
    definition = PipelineDefinition(
        "p",
        [
            StageDefinition(
                "flaky", flaky, retry_config=RetryConfig(max_attempts=3, initial_delay_ms=100)
            )
        ],
    )
    result = await PipelineExecutor(clock=clock).execute(definition, "in")
    assert result.outputs == {"flaky": "ok"}
    assert result.stage_runs["flaky"].attempts == 3
    assert flaky.inputs == ["in", "in", "in"]
    assert clock.sleeps == [0.1, 0.2]


async def test_fan_out_records_every_item() -> None:
    s = ScriptedStage(10, repeat_last=True)
    definition = PipelineDefinition(
        "p", [StageDefinition("each", s, pattern=ExecutionPattern.FAN_OUT)]
    )
    result = await PipelineExecutor(clock=FakeClock()).execute(definition, [1, 2, 3])
    assert result.outputs == {"each": [10, 10, 10]}
    assert sorted(s.inputs) == [1, 2, 3]
    assert repr(s) == "ScriptedStage('scripted', steps=1, calls=3)"

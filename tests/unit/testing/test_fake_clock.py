"""`FakeClock` driving the executor's retry waits and timeouts."""

from __future__ import annotations

import anyio

from pipeline import PipelineDefinition, PipelineExecutor, RetryConfig, StageDefinition
from pipeline.testing import Block, Delay, Fail, FakeClock, ScriptedStage


async def test_three_attempt_exponential_backoff_finishes_instantly(
    pipeline_executor: PipelineExecutor, fake_clock: FakeClock
) -> None:
    flaky = ScriptedStage(Fail("busy"), Fail("busy"), Fail("still busy"))
    retry = RetryConfig(max_attempts=3, initial_delay_ms=1000, backoff_multiplier=3)
    definition = PipelineDefinition("p", [StageDefinition("flaky", flaky, retry_config=retry)])
    with anyio.fail_after(5):  # 4 s of virtual waiting must take no real time
        result = await pipeline_executor.execute(definition)
    assert fake_clock.sleeps == [1.0, 3.0]
    assert fake_clock.now() == 4.0
    assert result.stage_results["flaky"].error == "Failed after 3 attempts. Last error: still busy"
    assert result.stage_runs["flaky"].attempts == 3
    assert result.total_duration_ms == 4000


async def test_timeouts_fire_in_virtual_time(fake_clock: FakeClock) -> None:
    executor = PipelineExecutor(clock=fake_clock)
    slow = ScriptedStage(Delay(30, then="late"), Delay(0.1, then="quick"), clock=fake_clock)
    retry = RetryConfig(max_attempts=2, initial_delay_ms=0, retryable_errors=["timeout"])
    definition = PipelineDefinition(
        "p", [StageDefinition("slow", slow, timeout_ms=500, retry_config=retry)]
    )
    result = await executor.execute(definition)
    assert result.outputs == {"slow": "quick"}
    assert fake_clock.sleeps == [30, 0.0, 0.1]


async def test_advance_fires_a_pipeline_timeout(fake_clock: FakeClock) -> None:
    executor = PipelineExecutor(clock=fake_clock, timeout_ms=2000)
    blocked = ScriptedStage(Block())
    definition = PipelineDefinition("p", [StageDefinition("blocked", blocked)])
    results = []

    async def run() -> None:
        results.append(await executor.execute(definition))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await blocked.wait_for_calls(1)
            await fake_clock.advance(1.9)
            assert not results
            await fake_clock.advance(0.1)
    assert results[0].error == "Timeout: pipeline 'p' exceeded timeout_ms=2000"
    assert results[0].cancelled_stages == ["blocked"]


def test_fake_clock_on_trio() -> None:
    async def main() -> list[float]:
        clock = FakeClock()
        flaky = ScriptedStage(Fail("x"), "ok")
        retry = RetryConfig(max_attempts=2, initial_delay_ms=750)
        definition = PipelineDefinition("p", [StageDefinition("f", flaky, retry_config=retry)])
        await PipelineExecutor(clock=clock).execute(definition)
        return clock.sleeps

    assert anyio.run(main, backend="trio") == [0.75]

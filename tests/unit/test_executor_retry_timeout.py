"""Retry (tenacity, waits through the clock) and timeouts (per attempt and per run).

All time is virtual: `FakeClock.sleeps` records every wait. Scenarios run on asyncio and trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    PipelineStage,
    RetryConfig,
    Scheduling,
    StageDefinition,
    StageResult,
)
from pipeline.testing import Block, Delay, Fail, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends

if TYPE_CHECKING:
    from collections.abc import Awaitable


def flaky(failures: int, error: str = "boom", value: Any = "ok") -> ScriptedStage[Any, Any]:
    """Fails (returned failure) `failures` times, then succeeds."""
    return ScriptedStage(*[Fail(error)] * failures, value)


def run_one(
    stage: PipelineStage[Any, Any],
    clock: FakeClock,
    *,
    retry: RetryConfig | None = None,
    timeout_ms: float | None = None,
) -> Awaitable[PipelineResult]:
    pipeline = PipelineDefinition(
        "retry", [StageDefinition("s", stage, retry_config=retry, timeout_ms=timeout_ms)]
    )
    return PipelineExecutor(clock=clock).execute(pipeline)


# -- retry ---------------------------------------------------------------------------------------------


@on_both_backends
async def test_waits_follow_exponential_backoff() -> None:
    """Wait before retry n is initial * multiplier**(n-1); exhausted attempts say so."""
    clock, stage = FakeClock(), flaky(10)
    retry = RetryConfig(max_attempts=3, initial_delay_ms=1000, backoff_multiplier=2.0)
    result = await run_one(stage, clock, retry=retry)
    assert clock.sleeps == [1.0, 2.0]
    assert stage.call_count == 3
    assert result.success is False
    assert result.get_result("s").error == "Failed after 3 attempts. Last error: boom"
    assert result.stage_runs["s"].attempts == 3


@on_both_backends
async def test_waits_are_capped_at_max_delay() -> None:
    """The wait never exceeds max_delay_ms."""
    clock, stage = FakeClock(), flaky(10)
    retry = RetryConfig(
        max_attempts=5, initial_delay_ms=1000, backoff_multiplier=3.0, max_delay_ms=5000
    )
    await run_one(stage, clock, retry=retry)
    assert clock.sleeps == [1.0, 3.0, 5.0, 5.0]


@on_both_backends
async def test_success_after_retries() -> None:
    """A stage that succeeds on attempt 3 succeeds; its output is the last attempt's."""
    clock, stage = FakeClock(), flaky(2, value=42)
    retry = RetryConfig(max_attempts=5, initial_delay_ms=200, backoff_multiplier=1.5)
    result = await run_one(stage, clock, retry=retry)
    assert result.success
    assert result.outputs == {"s": 42}
    assert clock.sleeps == [0.2, pytest.approx(0.3)]
    assert stage.call_count == 3
    assert result.stage_runs["s"].attempts == 3
    assert result.stage_runs["s"].duration_ms == pytest.approx(500.0)


@on_both_backends
async def test_exceptions_are_retried() -> None:
    """A raised exception is retried like a failed result."""
    clock = FakeClock()
    reset = ConnectionError("reset by peer")
    stage = ScriptedStage(reset, reset, "done")
    result = await run_one(stage, clock, retry=RetryConfig(max_attempts=3, initial_delay_ms=10))
    assert result.outputs == {"s": "done"}
    assert clock.sleeps == [0.01, 0.02]


@on_both_backends
async def test_exhausted_exception_retries_keep_last_error() -> None:
    """After the last attempt the error names the count and the last exception."""
    clock = FakeClock()
    stage = ScriptedStage(RuntimeError("attempt 1"), RuntimeError("attempt 2"))
    result = await run_one(stage, clock, retry=RetryConfig(max_attempts=2, initial_delay_ms=1))
    assert result.get_result("s").error == (
        "Failed after 2 attempts. Last error: RuntimeError: attempt 2"
    )
    assert result.stage_runs["s"].exception_type == "RuntimeError"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ("Request timeout after 30s", ["timeout", "rate_limit"]),
        ("REQUEST TIMEOUT", ["timeout"]),
        ("hit the Rate_Limit", ["timeout", "RATE_LIMIT"]),
    ],
)
def test_retryable_errors_match_substring_case_insensitively(
    backend: Backend, error: str, retryable: list[str]
) -> None:
    async def scenario() -> None:
        clock, stage = FakeClock(), flaky(1, error=error)
        retry = RetryConfig(max_attempts=3, initial_delay_ms=1000, retryable_errors=retryable)
        result = await run_one(stage, clock, retry=retry)
        assert result.success
        assert stage.call_count == 2
        assert clock.sleeps == [1.0]

    anyio.run(scenario, backend=backend)


class RateLimitedError(Exception):
    pass


@on_both_backends
async def test_retryable_errors_match_exception_class_name() -> None:
    """An entry equal to the exception's class name makes it retryable."""
    clock = FakeClock()
    stage = ScriptedStage(RateLimitedError("slow down"), "ok")
    retry = RetryConfig(max_attempts=2, initial_delay_ms=1, retryable_errors=["RateLimitedError"])
    result = await run_one(stage, clock, retry=retry)
    assert result.success
    assert stage.call_count == 2


@on_both_backends
async def test_non_retryable_error_is_not_retried() -> None:
    """An error matching no retryable entry fails after one attempt, without waiting."""
    clock, stage = FakeClock(), flaky(10, error="invalid request")
    retry = RetryConfig(max_attempts=3, retryable_errors=["timeout", "rate_limit"])
    result = await run_one(stage, clock, retry=retry)
    assert result.success is False
    assert stage.call_count == 1
    assert clock.sleeps == []
    error = result.get_result("s").error
    assert error is not None
    assert "invalid request" in error
    assert result.stage_runs["s"].attempts == 1


@on_both_backends
async def test_no_retry_config_means_one_attempt() -> None:
    """Without retry_config (or with max_attempts=1) the error is left as it is."""
    clock = FakeClock()
    stage = flaky(10)
    result = await run_one(stage, clock)
    assert stage.call_count == 1
    assert result.get_result("s").error == "boom"
    stage = flaky(10)
    result = await run_one(stage, clock, retry=RetryConfig(max_attempts=1))
    assert stage.call_count == 1
    assert result.get_result("s").error == "boom"
    assert clock.sleeps == []


# -- per-attempt timeouts ---------------------------------------------------------------------------------


def sleeper(clock: FakeClock, seconds: float, value: Any = "done") -> ScriptedStage[Any, Any]:
    """Sleeps `seconds` on `clock`, then returns `value`; every call does the same."""
    return ScriptedStage(Delay(seconds, then=value), clock=clock, repeat_last=True)


@on_both_backends
async def test_timeout_fails_the_attempt() -> None:
    """An attempt longer than timeout_ms fails with an error naming Timeout and the stage."""
    clock = FakeClock()
    stage = sleeper(clock, 10)
    pipeline = PipelineDefinition("t", [StageDefinition("render", stage, timeout_ms=50)])
    with anyio.fail_after(2):
        result = await PipelineExecutor(clock=clock).execute(pipeline)
    assert result.success is False
    assert result.failed_stages == ["render"]
    error = result.get_result("render").error
    assert error is not None
    assert "Timeout" in error
    assert "render" in error
    assert "timeout" in error.lower()
    assert result.stage_runs["render"].exception_type == "StageTimeoutError"


@on_both_backends
async def test_stage_within_timeout_succeeds() -> None:
    """A stage finishing before its timeout is unaffected."""
    clock = FakeClock()
    result = await run_one(sleeper(clock, 1.0, "quick"), clock, timeout_ms=5000)
    assert result.outputs == {"s": "quick"}


@on_both_backends
async def test_timeout_is_retried_when_retryable() -> None:
    """retryable_errors=["timeout"] matches the timeout error; each attempt gets its own bound."""
    clock = FakeClock()
    stage = ScriptedStage(Delay(10, then="late"), "second try", clock=clock)  # 1st times out
    retry = RetryConfig(max_attempts=2, initial_delay_ms=500, retryable_errors=["timeout"])
    with anyio.fail_after(2):
        result = await run_one(stage, clock, retry=retry, timeout_ms=50)
    assert result.success
    assert result.outputs == {"s": "second try"}
    assert stage.call_count == 2
    assert clock.sleeps == [10, 0.5]


@on_both_backends
async def test_repeated_timeouts_exhaust_attempts() -> None:
    """Every attempt times out: the error says how many attempts and that it was a timeout."""
    clock = FakeClock()
    stage = sleeper(clock, 10)
    retry = RetryConfig(max_attempts=3, initial_delay_ms=100, retryable_errors=["timeout"])
    with anyio.fail_after(2):
        result = await run_one(stage, clock, retry=retry, timeout_ms=50)
    error = result.get_result("s").error
    assert error is not None
    assert error.startswith("Failed after 3 attempts. Last error: Timeout")
    assert stage.call_count == 3


@on_both_backends
async def test_timeout_not_retried_when_not_retryable() -> None:
    """A timeout with retryable_errors that do not match it is not retried."""
    clock = FakeClock()
    stage = sleeper(clock, 10)
    retry = RetryConfig(max_attempts=3, retryable_errors=["rate_limit"])
    result = await run_one(stage, clock, retry=retry, timeout_ms=50)
    assert stage.call_count == 1
    assert result.success is False


# -- pipeline timeout ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduling", ["waves", "eager"])
def test_pipeline_timeout_bounds_the_run(backend: Backend, scheduling: Scheduling) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        hang_started = anyio.Event()
        cleaned_up_at: list[float] = []

        async def hang(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            try:
                hang_started.set()
                await anyio.Event().wait()
            finally:
                cleaned_up_at.append(clock.now())
            return StageResult.success("never")

        downstream = ScriptedStage("after")
        pipeline = PipelineDefinition(
            "slow",
            [
                StageDefinition("first", ScriptedStage(1)),
                StageDefinition("hang", FunctionStage(hang), inputs=["first"]),
                StageDefinition("after", downstream, inputs=["hang"]),
            ],
        )
        executor = PipelineExecutor(clock=clock, timeout_ms=500, scheduling=scheduling)
        with anyio.fail_after(2):  # once `hang` blocks, virtual time jumps to the run deadline
            result = await executor.execute(pipeline)
        assert hang_started.is_set()
        assert cleaned_up_at == [0.5]  # cancelled at the 500 ms run deadline, not before
        assert result.success is False
        assert result.error is not None
        assert "timeout" in result.error.lower()
        assert result.outputs == {"first": 1}
        assert result.cancelled_stages == ["hang", "after"]
        assert result.get_result("after").error == "[CANCELLED] not started"
        assert downstream.call_count == 0

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_pipeline_timeout_counts_from_run_start() -> None:
    """The run deadline is set when execute starts, not when a watchdog task first runs."""
    clock = FakeClock()
    # Virtual time passes the 500 ms run deadline at once, then the stage blocks for good.
    hang = ScriptedStage(Delay(1, then=Block()), clock=clock)
    pipeline = PipelineDefinition("slow", [StageDefinition("hang", hang)])
    with anyio.fail_after(1):
        result = await PipelineExecutor(clock=clock, timeout_ms=500).execute(pipeline)
    assert result.success is False
    assert result.cancelled_stages == ["hang"]
    assert result.error is not None
    assert "timeout" in result.error.lower()


@on_both_backends
async def test_pipeline_timeout_not_reached() -> None:
    """A run finishing within the pipeline timeout succeeds normally."""
    clock = FakeClock()
    executor = PipelineExecutor(clock=clock, timeout_ms=5000)
    pipeline = PipelineDefinition("fast", [StageDefinition("a", sleeper(clock, 1))])
    result = await executor.execute(pipeline)
    assert result.success
    assert result.error is None

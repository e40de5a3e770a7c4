"""Resources through the executor: `uses=` per attempt, waits outside `timeout_ms`, validation."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pipeline import (
    CircuitBreaker,
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineValidationError,
    Resource,
    ResourceError,
    RetryConfig,
    StageDefinition,
    StageResult,
    stage,
)
from pipeline.events import FanOutItemFinished, PipelineEvent, ResourceWaited
from pipeline.testing import Delay, FakeClock, ScriptedStage
from tests.unit._support import on_both_backends


class Collect:
    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent) -> None:
        self.events.append(event)


# -- validation ------------------------------------------------------------------------------------


def test_an_unknown_resource_and_an_impossible_weight_are_validation_issues() -> None:
    definition = PipelineDefinition(
        "limits",
        [
            StageDefinition("a", ScriptedStage(1), uses={"gpu": 1}),
            StageDefinition("b", ScriptedStage(1), uses={"llm": 3}),
        ],
    )
    executor = PipelineExecutor(resources={"llm": Resource(max_in_flight=2)})
    definition.validate()  # the definition alone is fine: resources are the executor's
    with pytest.raises(PipelineValidationError) as caught:
        executor.validate(definition)
    issues = {(issue.code, issue.stage_id) for issue in caught.value.issues}
    assert issues == {("unknown_resource", "a"), ("resource_weight", "b")}
    messages = " | ".join(issue.message for issue in caught.value.issues)
    assert "Stage 'a' uses unknown resource 'gpu'" in messages
    assert "Stage 'b' uses 3 of resource 'llm', which can never grant more than 2" in messages

    result = executor.run_sync(definition)
    assert result.failed_stages == ["validation"]
    assert len(result.metadata["validation_errors"]) == 2


@pytest.mark.parametrize(
    "uses", [{"llm": 0}, {"llm": True}, {"llm": 1.5}, {1: 1}, ["llm"]], ids=repr
)
def test_uses_must_map_names_to_positive_int_weights(uses: Any) -> None:
    from pipeline import DefinitionError

    with pytest.raises(DefinitionError) as caught:
        StageDefinition("a", ScriptedStage(1), uses=uses)
    assert caught.value.field == "uses"
    assert caught.value.owner == "StageDefinition 'a'"


# -- per attempt -----------------------------------------------------------------------------------


@on_both_backends
async def test_items_hold_the_resource_one_at_a_time_and_the_wait_is_not_the_timeout() -> None:
    """Three items each hold "llm" (1 in flight) for 1 s with a 1.5 s timeout: none times out.

    The third waits 2 s for the resource, longer than its timeout: waiting is not running.
    """
    clock = FakeClock()
    work = ScriptedStage(Delay(1.0, then="done"), repeat_last=True, clock=clock)
    definition = PipelineDefinition(
        "serial",
        [
            StageDefinition(
                "each",
                work,
                pattern=ExecutionPattern.FAN_OUT,
                uses={"llm": 1},
                timeout_ms=1500,
                max_concurrent_fan_out=None,
            )
        ],
    )
    observer = Collect()
    executor = PipelineExecutor(
        clock=clock, resources={"llm": Resource(max_in_flight=1)}, observers=[observer]
    )
    with anyio.fail_after(5):
        result = await executor.execute(definition, [1, 2, 3])
    assert result.success, result.error
    assert result.outputs["each"] == ["done"] * 3
    assert clock.now() == pytest.approx(3.0)
    waits = sorted(e.wait_s for e in observer.events if isinstance(e, ResourceWaited))
    assert waits == pytest.approx([0.0, 1.0, 2.0])
    items = sorted(e.resource_wait_s for e in observer.events if isinstance(e, FanOutItemFinished))
    assert items == pytest.approx([0.0, 1.0, 2.0])  # each item reports its own wait


@on_both_backends
async def test_a_stage_attempt_records_its_resource_wait() -> None:
    clock = FakeClock()
    hold = ScriptedStage(Delay(2.0, then="first"), clock=clock)
    after = ScriptedStage("second")
    definition = PipelineDefinition(
        "waits",
        [
            StageDefinition("hold", hold, uses={"db": 1}),
            StageDefinition("after", after, uses={"db": 1}),
        ],
    )
    executor = PipelineExecutor(clock=clock, resources={"db": Resource(max_in_flight=1)})
    with anyio.fail_after(5):
        result = await executor.execute(definition)
    assert result.success
    (attempt,) = result.stage_runs["after"].attempt_runs
    assert attempt.resource_wait_ms == pytest.approx(2000.0)
    assert result.stage_runs["hold"].attempt_runs[0].resource_wait_ms == 0.0


@on_both_backends
async def test_an_open_breaker_fails_attempts_at_once_with_circuit_open_error() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=30.0)
    down = ScriptedStage(ConnectionError("down"), repeat_last=True)
    definition = PipelineDefinition(
        "breaker",
        [
            StageDefinition(
                "call",
                down,
                uses={"api": 1},
                retry_config=RetryConfig(4, initial_delay_ms=1000, backoff_multiplier=1),
            )
        ],
    )
    executor = PipelineExecutor(clock=clock, resources={"api": Resource(breaker=breaker)})
    with anyio.fail_after(5):
        result = await executor.execute(definition)
    assert not result.success
    # Attempts 1-2 fail and open the circuit at t=1; attempt 3 is refused at once, and its
    # CircuitOpenError's Retry-After makes the retry wait exactly until the half-open trial
    # (t=31), which reaches the service, fails, and opens the circuit again.
    assert down.call_count == 3
    assert clock.now() == pytest.approx(31.0)
    run = result.stage_runs["call"]
    assert run.exception_type == "ConnectionError"  # the trial's own failure
    refused = run.attempt_runs[2]
    assert "CircuitOpenError: circuit of resource 'api' is open (stage 'call')" in (
        refused.error or ""
    )
    assert refused.duration_ms == 0.0  # refused at once, no call made
    assert breaker.state == "open"


@on_both_backends
async def test_context_acquire_inside_a_stage_and_its_errors() -> None:
    clock = FakeClock()
    seen: list[str] = []

    @stage
    async def uses_inside(x: Any, ctx: PipelineContext[Any]) -> str:
        async with ctx.acquire("llm", weight=2) as lease:
            seen.append(f"held {lease.wait_s}")
        try:
            async with ctx.acquire("gpu"):
                pass
        except ResourceError as exc:
            seen.append(str(exc))
        return "ok"

    definition = PipelineDefinition("inside", [StageDefinition("s", uses_inside)])
    executor = PipelineExecutor(clock=clock, resources={"llm": Resource(max_in_flight=2)})
    with anyio.fail_after(5):
        result = await executor.execute(definition)
    assert result.success
    assert seen[0] == "held 0.0"
    assert seen[1].startswith("resource 'gpu' is not one of the executor's resources ('llm')")


async def test_context_acquire_outside_a_run_says_so() -> None:
    with pytest.raises(ResourceError, match="outside a pipeline run"):
        async with PipelineContext().acquire("llm"):
            pass


@on_both_backends
async def test_one_resource_shared_by_two_executors_limits_both() -> None:
    clock = FakeClock()
    shared = Resource(max_in_flight=1)
    peak = [0, 0]

    async def body(x: Any, ctx: PipelineContext[Any]) -> StageResult[Any]:
        peak[0] += 1
        peak[1] = max(peak[1], peak[0])
        await clock.sleep(1)
        peak[0] -= 1
        return StageResult.success(x)

    from pipeline import FunctionStage

    def pipeline(name: str) -> PipelineDefinition:
        return PipelineDefinition(name, [StageDefinition("s", FunctionStage(body), uses={"r": 1})])

    first = PipelineExecutor(clock=clock, resources={"r": shared})
    second = PipelineExecutor(clock=clock, resources={"r": shared})
    with anyio.fail_after(5):
        async with clock, anyio.create_task_group() as tg:
            tg.start_soon(first.execute, pipeline("one"))
            tg.start_soon(second.execute, pipeline("two"))
    assert peak[1] == 1
    assert clock.now() == pytest.approx(2.0)


@on_both_backends
async def test_a_sub_pipeline_shares_the_parent_runs_resources() -> None:
    """Without its own executor, a child run uses the parent's resources (and their limits)."""
    from pipeline import SubPipeline

    clock = FakeClock()
    shared = Resource(max_in_flight=1)
    child = PipelineDefinition(
        "child",
        [StageDefinition("work", ScriptedStage(Delay(1.0, then="c"), clock=clock), uses={"r": 1})],
    )
    parent = PipelineDefinition(
        "parent",
        [
            StageDefinition("sub", SubPipeline(child)),
            StageDefinition("own", ScriptedStage(Delay(1.0, then="p"), clock=clock), uses={"r": 1}),
        ],
    )
    executor = PipelineExecutor(clock=clock, resources={"r": shared})
    with anyio.fail_after(5):
        result = await executor.execute(parent)
    assert result.success, result.error
    assert clock.now() == pytest.approx(2.0)  # one holder at a time across parent and child

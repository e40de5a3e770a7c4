"""FAN_OUT: list input, per-item runs in input order, concurrency cap, item failure, per-item retry.

Scenarios run on asyncio and trio.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineStage,
    RetryConfig,
    StageDefinition,
    StageResult,
    stage,
)
from pipeline.testing import Fail, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends


@stage
async def echo(input: Any, context: PipelineContext[Any]) -> Any:
    """Return the input unchanged."""
    return input


@stage
async def double(input: Any, context: PipelineContext[Any]) -> Any:
    """Return twice the input."""
    return input * 2


def fan(
    stage: PipelineStage[Any, Any],
    *,
    cap: int | None = 4,
    retry: RetryConfig | None = None,
    timeout_ms: float | None = None,
) -> PipelineDefinition:
    return PipelineDefinition(
        "fan",
        [
            StageDefinition("items", echo),
            StageDefinition(
                "each",
                stage,
                pattern=ExecutionPattern.FAN_OUT,
                inputs=["items"],
                max_concurrent_fan_out=cap,
                retry_config=retry,
                timeout_ms=timeout_ms,
            ),
        ],
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("value", "type_name"), [(5, "int"), ("abc", "str"), ({"a": 1}, "dict"), (None, "NoneType")]
)
def test_fan_out_requires_list_input(backend: Backend, value: Any, type_name: str) -> None:
    async def scenario() -> None:
        stage = ScriptedStage(name="double")  # no steps: a call would fail the stage
        result = await PipelineExecutor().execute(fan(stage), value)
        assert result.success is False
        assert result.get_result("each").error == f"FAN_OUT requires list input, got {type_name}"
        assert stage.call_count == 0

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_fan_out_runs_once_per_item_in_input_order() -> None:
    """Items finish in reverse order; the output still follows the input order."""
    n = 6
    done = [anyio.Event() for _ in range(n)]
    seen: list[Any] = []

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        seen.append(input)
        if input + 1 < n:
            await done[input + 1].wait()  # the last item finishes first
        done[input].set()
        return StageResult.success(f"item-{input}")

    with anyio.fail_after(2):
        result = await PipelineExecutor().execute(
            fan(FunctionStage(body), cap=None), list(range(n))
        )
    assert result.success
    assert result.outputs["each"] == [f"item-{i}" for i in range(n)]
    assert sorted(seen) == list(range(n))
    run = result.stage_runs["each"]
    assert run.items == n
    assert run.attempts == 1


@on_both_backends
async def test_fan_out_accepts_tuple_and_entry_input() -> None:
    """A tuple works too, and a fan-out without inputs maps over the initial input."""
    pipeline = PipelineDefinition(
        "fan", [StageDefinition("each", double, pattern=ExecutionPattern.FAN_OUT)]
    )
    result = await PipelineExecutor().execute(pipeline, (1, 2, 3))
    assert result.outputs == {"each": [2, 4, 6]}


@on_both_backends
async def test_fan_out_empty_list_gives_empty_list() -> None:
    """An empty list is a success with output [] and no stage call."""
    stage = ScriptedStage(name="double")  # no steps: a call would fail the stage
    result = await PipelineExecutor().execute(fan(stage), [])
    assert result.success
    assert result.outputs["each"] == []
    assert stage.call_count == 0


def counting_stage(peak: list[int], calls: list[Any] | None = None) -> FunctionStage[Any, Any]:
    """Echoes its input; `peak[0]` gets the most calls in flight at once, `calls` each input."""
    active = 0

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        nonlocal active
        if calls is not None:
            calls.append(input)
        active += 1
        peak[0] = max(peak[0], active)
        for _ in range(5):  # every concurrently started item gets to run before any finishes
            await anyio.lowlevel.checkpoint()
        active -= 1
        return StageResult.success(input)

    return FunctionStage(body)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cap", "expected_peak"), [(1, 1), (3, 3), (4, 4), (None, 10), (0, 10)])
def test_fan_out_concurrency_cap(backend: Backend, cap: int | None, expected_peak: int) -> None:
    async def scenario() -> None:
        peak = [0]
        calls: list[Any] = []
        stage = counting_stage(peak, calls)
        items = list(range(10))
        result = await PipelineExecutor().execute(fan(stage, cap=cap), items)
        assert result.outputs["each"] == items
        assert len(calls) == 10
        assert peak[0] == expected_peak

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_default_cap_is_four() -> None:
    """Without max_concurrent_fan_out, at most 4 items run at once."""
    peak = [0]
    stage = counting_stage(peak)
    pipeline = PipelineDefinition(
        "fan", [StageDefinition("each", stage, pattern=ExecutionPattern.FAN_OUT)]
    )
    result = await PipelineExecutor().execute(pipeline, list(range(9)))
    assert result.success
    assert peak[0] == 4


@on_both_backends
async def test_item_failure_fails_stage_and_cancels_remaining_items() -> None:
    """A failed item fails the stage, names its index, and cancels the items in flight."""
    n = 6
    started = [anyio.Event() for _ in range(n)]
    cancelled: list[int] = []

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        started[input].set()
        if input == 3:
            for event in started:
                await event.wait()  # every item is in flight
            return StageResult.failure("group 3 exploded")
        try:
            await anyio.Event().wait()  # forever, unless cancelled
        finally:
            cancelled.append(input)
        return StageResult.success(input)

    downstream = ScriptedStage("after")
    pipeline = PipelineDefinition(
        "fan",
        [
            StageDefinition("items", echo),
            StageDefinition(
                "each",
                FunctionStage(body),
                pattern=ExecutionPattern.FAN_OUT,
                inputs=["items"],
                max_concurrent_fan_out=None,
            ),
            StageDefinition("after", downstream, inputs=["each"]),
        ],
    )
    with anyio.fail_after(2):
        result = await PipelineExecutor().execute(pipeline, list(range(n)))
    assert result.success is False
    assert result.failed_stages == ["each"]
    error = result.get_result("each").error
    assert error is not None
    assert "[3]" in error
    assert "group 3 exploded" in error
    assert result.get_result("each").metadata["failed_items"] == [3]
    assert sorted(cancelled) == [0, 1, 2, 4, 5]
    assert downstream.call_count == 0
    assert "each" not in result.outputs


@on_both_backends
async def test_item_failure_stops_pulling_new_items() -> None:
    """With a cap of 1, items after the failed one never start."""
    stage = ScriptedStage(0, 1, ValueError("bad item"))  # one call per item, in order
    result = await PipelineExecutor().execute(fan(stage, cap=1), list(range(6)))
    assert result.success is False
    assert stage.inputs == [0, 1, 2]
    error = result.get_result("each").error
    assert error is not None
    assert "[2]" in error
    assert "ValueError: bad item" in error


@on_both_backends
async def test_each_item_is_retried_on_its_own() -> None:
    """A failing item is retried without re-running the items that succeeded."""
    clock = FakeClock()
    failed_once: set[int] = set()
    seen: list[Any] = []

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        seen.append(input)
        if input == 2 and input not in failed_once:
            failed_once.add(input)
            return StageResult.failure("transient")
        return StageResult.success(input * 10)

    stage = FunctionStage(body)
    retry = RetryConfig(max_attempts=2, initial_delay_ms=250)
    result = await PipelineExecutor(clock=clock).execute(fan(stage, retry=retry), [0, 1, 2, 3])
    assert result.success
    assert result.outputs["each"] == [0, 10, 20, 30]
    assert sorted(seen) == [0, 1, 2, 2, 3]
    assert clock.sleeps == [0.25]
    assert result.stage_runs["each"].attempts == 2


@on_both_backends
async def test_item_retries_exhausted() -> None:
    """An item that keeps failing uses up its own attempts, then fails the stage."""
    clock = FakeClock()
    always = Fail("always")
    stage = ScriptedStage(0, always, always, always)  # item 0, then item 1's three attempts
    retry = RetryConfig(max_attempts=3, initial_delay_ms=100)
    result = await PipelineExecutor(clock=clock).execute(fan(stage, cap=1, retry=retry), [0, 1])
    assert stage.inputs == [0, 1, 1, 1]
    error = result.get_result("each").error
    assert error is not None
    assert "Failed after 3 attempts" in error
    assert clock.sleeps == [0.1, 0.2]


@on_both_backends
async def test_each_item_has_its_own_timeout() -> None:
    """timeout_ms bounds each item's attempt; a slow item fails the stage with Timeout."""
    clock = FakeClock()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await clock.sleep(0.04 if input != 1 else 10)
        return StageResult.success(input)

    stage = FunctionStage(body)
    with anyio.fail_after(2):
        result = await PipelineExecutor(clock=clock).execute(
            fan(stage, cap=1, timeout_ms=50), [0, 1, 2]
        )
    error = result.get_result("each").error
    assert error is not None
    assert "Timeout" in error
    assert "[1]" in error
    assert result.get_result("each").metadata["failed_items"] == [1]

    # Three 40 ms items one at a time take 120 ms in all: only a per-item bound lets them pass.
    fast = FunctionStage(body)
    with anyio.fail_after(2):
        result = await PipelineExecutor(clock=clock).execute(
            fan(fast, cap=1, timeout_ms=50), [0, 2, 3]
        )
    assert result.success
    assert result.outputs["each"] == [0, 2, 3]


@on_both_backends
async def test_readme_fan_out_definition() -> None:
    """The README's fan-out: per-group planning with retry, output one entry per group."""

    async def plan_group(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success({"group": input["name"], "plan": "ok"})

    pipeline = PipelineDefinition(
        "groups",
        [
            StageDefinition("group_contexts", echo),
            StageDefinition(
                id="groups",
                stage=FunctionStage(plan_group),
                pattern=ExecutionPattern.FAN_OUT,
                inputs=["group_contexts"],
                retry_config=RetryConfig(max_attempts=2),
            ),
        ],
    )
    result = await PipelineExecutor().execute(pipeline, [{"name": "roof"}, {"name": "tree"}])
    assert result.outputs["groups"] == [
        {"group": "roof", "plan": "ok"},
        {"group": "tree", "plan": "ok"},
    ]

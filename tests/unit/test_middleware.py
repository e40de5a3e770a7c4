"""Middleware around every attempt: `PipelineExecutor(middleware=[...])` (SPEC 8).

A middleware is `async (call, call_next) -> StageResult`; the first in the list is the
outermost, each sits inside the retry loop and outside the attempt's timeout. All time is
virtual (`FakeClock`); runs happen on asyncio and trio.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline import (
    AttemptCall,
    DefinitionError,
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    PipelineStage,
    RetryConfig,
    StageDefinition,
    StageResult,
)
from pipeline.cache import MemoryCache
from pipeline.events import AttemptFailed, AttemptStarted, PipelineEvent
from pipeline.testing import Delay, Fail, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    CallNext = Callable[[AttemptCall], Awaitable[StageResult[Any]]]


class Collect:
    """An observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent) -> None:
        self.events.append(event)


class Trace:
    """Records entering and leaving, and every call it saw, into a shared `log`."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.calls: list[AttemptCall] = []

    async def __call__(self, call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        self.calls.append(call)
        self.log.append(f"{self.name} in")
        result = await call_next(call)
        self.log.append(f"{self.name} out")
        return result


class PassThrough:
    """Does nothing but continue the chain."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        self.count += 1
        return await call_next(call)


def one_stage(
    stage: PipelineStage[Any, Any],
    *,
    retry: RetryConfig | None = None,
    timeout_ms: float | None = None,
    fan_out: bool = False,
) -> PipelineDefinition:
    pattern = ExecutionPattern.FAN_OUT if fan_out else ExecutionPattern.SEQUENTIAL
    return PipelineDefinition(
        "mw",
        [StageDefinition("s", stage, retry_config=retry, timeout_ms=timeout_ms, pattern=pattern)],
    )


async def run(
    definition: PipelineDefinition,
    middleware: Sequence[Any],
    clock: FakeClock,
    value: Any = None,
    **kwargs: Any,
) -> PipelineResult:
    executor = PipelineExecutor(clock=clock, middleware=middleware, **kwargs)
    with anyio.fail_after(5):
        return await executor.execute(definition, value)


def error_of(result: PipelineResult) -> str:
    error = result.get_result("s").error
    assert error is not None
    return error


# -- order and call fields -------------------------------------------------------------------------


@on_both_backends
async def test_first_middleware_is_outermost() -> None:
    log: list[str] = []

    async def body(value: Any, ctx: PipelineContext[Any]) -> str:
        log.append("stage")
        return "done"

    chain = [Trace("a", log), Trace("b", log), Trace("c", log)]
    result = await run(one_stage(FunctionStage(body)), chain, FakeClock())
    assert result.outputs == {"s": "done"}
    assert log == ["a in", "b in", "c in", "stage", "c out", "b out", "a out"]


@on_both_backends
async def test_call_carries_stage_attempt_input_and_context() -> None:
    """Outside a fan-out `item` is None; `attempt` counts 1, 2, 3 across retries; the context
    is the run's."""
    trace = Trace("t", [])
    ctx: PipelineContext[Any] = PipelineContext()
    stage = ScriptedStage(Fail("one"), ValueError("two"), "ok")
    definition = one_stage(stage, retry=RetryConfig(max_attempts=3, initial_delay_ms=1))
    executor = PipelineExecutor(clock=FakeClock(), middleware=[trace])
    with anyio.fail_after(5):
        result = await executor.execute(definition, {"doc": 7}, ctx)
    assert result.success
    assert [(c.stage_id, c.item, c.attempt) for c in trace.calls] == [
        ("s", None, 1),
        ("s", None, 2),
        ("s", None, 3),
    ]
    assert all(c.input == {"doc": 7} for c in trace.calls)
    assert all(c.context is ctx for c in trace.calls)


@on_both_backends
async def test_fan_out_items_are_called_one_by_one() -> None:
    """Each item is its own call: its index, its element as input, its own attempt count."""
    trace = Trace("t", [])
    tries: dict[str, int] = {}

    async def shout(word: str, ctx: PipelineContext[Any]) -> str:
        tries[word] = tries.get(word, 0) + 1
        if word == "b" and tries[word] == 1:
            raise ConnectionError("reset")
        return word.upper()

    retry = RetryConfig(max_attempts=2, initial_delay_ms=1)
    definition = one_stage(FunctionStage(shout), retry=retry, fan_out=True)
    result = await run(definition, [trace], FakeClock(), ["a", "b", "c"])
    assert result.outputs == {"s": ["A", "B", "C"]}
    assert sorted((c.stage_id, c.item, c.attempt, c.input) for c in trace.calls) == [
        ("s", 0, 1, "a"),
        ("s", 1, 1, "b"),
        ("s", 1, 2, "b"),
        ("s", 2, 1, "c"),
    ]


# -- changing the call, short-circuiting --------------------------------------------------------------


@on_both_backends
async def test_middleware_can_replace_the_input() -> None:
    """`dataclasses.replace(call, input=...)` is what the stage gets; each attempt starts from
    the original input again."""

    async def tag(call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        return await call_next(dataclasses.replace(call, input=(call.input, call.attempt)))

    stage = ScriptedStage(Fail("again"), "ok")
    definition = one_stage(stage, retry=RetryConfig(max_attempts=2, initial_delay_ms=1))
    result = await run(definition, [tag], FakeClock(), "x")
    assert result.success
    assert stage.inputs == [("x", 1), ("x", 2)]


@on_both_backends
async def test_middleware_can_short_circuit() -> None:
    """A result returned without `call_next` is the attempt's result; the stage never runs,
    nor do the middleware inside."""
    inner = PassThrough()

    async def answer(call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        return StageResult.success(f"canned {call.input}")

    stage = ScriptedStage("real")
    result = await run(one_stage(stage), [answer, inner], FakeClock(), "q")
    assert result.outputs == {"s": "canned q"}
    assert result.get_result("s").stage_name == "s"
    assert stage.call_count == 0
    assert inner.count == 0


@on_both_backends
async def test_short_circuit_for_one_fan_out_item() -> None:
    async def skip_second(call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        if call.item == 1:
            return StageResult.success("from middleware")
        return await call_next(call)

    async def upper(word: str, ctx: PipelineContext[Any]) -> str:
        return word.upper()

    definition = one_stage(FunctionStage(upper), fan_out=True)
    result = await run(definition, [skip_second], FakeClock(), ["a", "b", "c"])
    assert result.outputs == {"s": ["A", "from middleware", "C"]}


@on_both_backends
async def test_a_returned_failure_is_retried_like_the_stage_s() -> None:
    """A middleware's failed result is a failed attempt: the stage's retry policy applies."""
    clock = FakeClock()
    seen: list[int] = []

    async def refuse_first(call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        seen.append(call.attempt)
        if call.attempt == 1:
            return StageResult.failure("quota not yet refreshed")
        return await call_next(call)

    stage = ScriptedStage("ok")
    definition = one_stage(stage, retry=RetryConfig(max_attempts=3, initial_delay_ms=40))
    result = await run(definition, [refuse_first], clock)
    assert result.outputs == {"s": "ok"}
    assert seen == [1, 2]
    assert stage.call_count == 1
    assert clock.sleeps == [0.04]


# -- a middleware that fails -------------------------------------------------------------------------


class Refuse:
    """Raises on the attempts listed, passes the others on."""

    def __init__(self, *attempts: int) -> None:
        self.attempts = attempts

    async def __call__(self, call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        if call.attempt in self.attempts:
            raise ConnectionRefusedError(f"gate closed for attempt {call.attempt}")
        return await call_next(call)


@on_both_backends
async def test_raising_middleware_fails_the_attempt() -> None:
    """The attempt fails with "ExcType: message"; the exception type is recorded and reported."""
    collect = Collect()
    stage = ScriptedStage("never")
    result = await run(one_stage(stage), [Refuse(1)], FakeClock(), observers=[collect])
    assert result.failed_stages == ["s"]
    assert error_of(result) == "ConnectionRefusedError: gate closed for attempt 1"
    assert result.stage_runs["s"].exception_type == "ConnectionRefusedError"
    assert stage.call_count == 0
    failed = [e for e in collect.events if isinstance(e, AttemptFailed)]
    assert [(e.attempt, e.exception_type, e.will_retry) for e in failed] == [
        (1, "ConnectionRefusedError", False)
    ]


@on_both_backends
async def test_raising_middleware_is_retried_by_the_stage_policy() -> None:
    """A refused attempt counts as an attempt and is retried, `retry_on` seeing its type."""
    clock = FakeClock()
    stage = ScriptedStage("ok")
    retry = RetryConfig(max_attempts=3, initial_delay_ms=100, retry_on=(ConnectionError,))
    result = await run(one_stage(stage, retry=retry), [Refuse(1, 2)], clock)
    assert result.outputs == {"s": "ok"}
    assert result.stage_runs["s"].attempts == 3
    assert [r.attempt for r in result.stage_runs["s"].attempt_runs] == [1, 2, 3]
    assert stage.call_count == 1
    assert clock.sleeps == [0.1, 0.2]


@on_both_backends
async def test_refused_attempts_use_up_max_attempts() -> None:
    clock = FakeClock()
    stage = ScriptedStage("never")
    retry = RetryConfig(max_attempts=2, initial_delay_ms=1)
    result = await run(one_stage(stage, retry=retry), [Refuse(1, 2)], clock)
    assert error_of(result) == (
        "Failed after 2 attempts. Last error: ConnectionRefusedError: gate closed for attempt 2"
    )
    assert result.stage_runs["s"].attempts == 2
    assert stage.call_count == 0


@on_both_backends
async def test_raising_after_call_next_fails_a_successful_attempt() -> None:
    async def veto(call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        result = await call_next(call)
        raise ValueError(f"output {result.output!r} rejected")

    stage = ScriptedStage("draft")
    result = await run(one_stage(stage), [veto], FakeClock())
    assert error_of(result) == "ValueError: output 'draft' rejected"
    assert stage.call_count == 1


class ReturnsText:
    """A broken middleware: returns a str instead of a `StageResult`."""

    async def __call__(self, call: AttemptCall, call_next: CallNext) -> Any:
        await call_next(call)
        return "not a result"

    def __repr__(self) -> str:
        return "ReturnsText()"


@on_both_backends
async def test_non_result_from_middleware_fails_naming_it() -> None:
    result = await run(one_stage(ScriptedStage("ok")), [ReturnsText()], FakeClock())
    error = error_of(result)
    assert error.startswith("middleware ReturnsText() of stage 's' returned str")
    assert "str" in error
    assert "StageResult" in error


def test_non_callable_middleware_is_rejected_at_construction() -> None:
    with pytest.raises(DefinitionError) as caught:
        PipelineExecutor(middleware=["tracing"])  # type: ignore[list-item]  # the point of the test
    assert caught.value.owner == "PipelineExecutor"
    assert caught.value.field == "middleware"
    assert "'tracing'" in str(caught.value)


# -- where it sits: inside the retry loop, outside the timeout ----------------------------------------


@on_both_backends
async def test_middleware_sees_a_timeout_as_a_failed_result() -> None:
    """A middleware timing the call gets the timeout back as a failed result (no exception
    reaches it) after exactly `timeout_ms`; it sees each attempt."""
    clock = FakeClock()
    seen: list[tuple[int, bool, str | None, float]] = []
    raised: list[BaseException] = []

    async def timing(call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        t0 = clock.now()
        try:
            result = await call_next(call)
        except BaseException as exc:  # what this test checks does not happen
            raised.append(exc)
            raise
        seen.append((call.attempt, result.success, result.error, clock.now() - t0))
        return result

    stage = ScriptedStage(Delay(5, then="late"), "quick", clock=clock)
    retry = RetryConfig(max_attempts=2, initial_delay_ms=10)
    definition = one_stage(stage, retry=retry, timeout_ms=1000)
    result = await run(definition, [timing], clock)
    assert result.outputs == {"s": "quick"}
    assert raised == []
    assert seen == [
        (1, False, "Timeout: stage 's' exceeded timeout_ms=1000", 1.0),
        (2, True, None, 0.0),
    ]


@on_both_backends
async def test_time_spent_in_middleware_is_not_part_of_the_timeout() -> None:
    """The timeout starts inside the middleware: waiting 5 s there does not time out a stage
    with a 1 s bound that itself takes 0.5 s."""
    clock = FakeClock()

    async def slow_gate(call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        await clock.sleep(5)
        return await call_next(call)

    stage = ScriptedStage(Delay(0.5, then="ok"), clock=clock)
    result = await run(one_stage(stage, timeout_ms=1000), [slow_gate], clock)
    assert result.outputs == {"s": "ok"}
    assert clock.sleeps == [5, 0.5]


@on_both_backends
async def test_events_wrap_the_middleware() -> None:
    """`AttemptStarted` comes before the middleware runs and `AttemptFailed` after it returns."""
    log: list[str] = []

    class Logging:
        def on_event(self, event: PipelineEvent) -> None:
            if isinstance(event, AttemptStarted | AttemptFailed):
                log.append(f"{event.kind} {event.attempt}")

    async def gate(call: AttemptCall, call_next: CallNext) -> StageResult[Any]:
        log.append(f"middleware {call.attempt}")
        return await call_next(call)

    stage = ScriptedStage(Fail("x"), "ok")
    definition = one_stage(stage, retry=RetryConfig(max_attempts=2, initial_delay_ms=1))
    await run(definition, [gate], FakeClock(), observers=[Logging()])
    assert log == [
        "attempt_started 1",
        "middleware 1",
        "attempt_failed 1",
        "attempt_started 2",
        "middleware 2",
    ]


# -- cache hits, and no middleware at all ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fan_out", [False, True], ids=["whole", "fan-out"])
def test_cache_hits_bypass_middleware(backend: Backend, fan_out: bool) -> None:
    """A rerun served from the cache makes no attempt, so no middleware runs."""

    async def scenario() -> None:
        trace = Trace("t", [])
        cache = MemoryCache()
        value: Any = ["a", "b"] if fan_out else "a"

        async def upper(word: str, ctx: PipelineContext[Any]) -> str:
            return word.upper()

        definition = one_stage(FunctionStage(upper), fan_out=fan_out)
        first = await run(definition, [trace], FakeClock(), value, cache=cache)
        calls_first = len(trace.calls)
        assert calls_first == (2 if fan_out else 1)
        second = await run(definition, [trace], FakeClock(), value, cache=cache)
        assert second.outputs == first.outputs
        assert second.stage_runs["s"].cached
        assert len(trace.calls) == calls_first

    anyio.run(scenario, backend=backend)


def summary(result: PipelineResult, events: list[PipelineEvent]) -> object:
    """What a user sees of a run, minus ids and timestamps."""
    run = result.stage_runs["s"]
    fields = ("kind", "item", "attempt", "will_retry", "error", "exception_type", "delay_s")
    seen = [tuple(getattr(e, name, None) for name in fields) for e in events]
    return (
        result.success,
        result.outputs,
        result.get_result("s").error,
        run.attempts,
        run.exception_type,
        [(a.attempt, a.error) for a in run.attempt_runs],
        seen,
    )


def _is_result(outcome: object) -> bool:
    return isinstance(outcome, StageResult)


SCENARIOS: dict[str, Callable[[FakeClock], ScriptedStage[Any, Any]]] = {
    "succeeds": lambda clock: ScriptedStage("ok"),
    "raises-then-succeeds": lambda clock: ScriptedStage(KeyError("k"), "ok"),
    "returns-failures": lambda clock: ScriptedStage(Fail("a"), Fail("b"), Fail("c")),
    "times-out": lambda clock: ScriptedStage(Delay(9, "late"), repeat_last=True, clock=clock),
    "retry-after": lambda clock: ScriptedStage(Fail("x", {"retry_after_s": 2}), "ok"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pass_through_middleware_changes_nothing(backend: Backend, scenario: str) -> None:
    """With no middleware, or one that only calls `call_next`, results, records, events and
    waits are the same (exception types and Retry-After included)."""

    async def body() -> None:
        seen = []
        for middleware in ([], [PassThrough()]):
            clock, collect = FakeClock(), Collect()
            stage = SCENARIOS[scenario](clock)
            retry = RetryConfig(
                max_attempts=3, initial_delay_ms=100, retry_on=(KeyError,), retry_if=_is_result
            )
            definition = one_stage(stage, retry=retry, timeout_ms=1000)
            result = await run(definition, middleware, clock, observers=[collect])
            seen.append((summary(result, collect.events), clock.sleeps, stage.call_count))
        assert seen[0] == seen[1]

    anyio.run(body, backend=backend)


class Annotates:
    """Adds metadata to every result, failures included (a tracing middleware)."""

    async def __call__(self, call: AttemptCall, call_next: Any) -> StageResult[Any]:
        result: StageResult[Any] = await call_next(call)
        return result.model_copy(update={"metadata": {**result.metadata, "traced": True}})


@on_both_backends
async def test_a_middleware_rewriting_a_failure_keeps_its_exception_for_retry_on() -> None:
    class Throttled(Exception):
        pass

    stage = ScriptedStage(Throttled("slow down"), "ok")
    definition = PipelineDefinition(
        "traced",
        [
            StageDefinition(
                "s", stage, retry_config=RetryConfig(2, initial_delay_ms=1, retry_on=(Throttled,))
            )
        ],
    )
    result = await run(definition, [Annotates()], FakeClock())
    assert result.success
    assert stage.call_count == 2


class TwiceReturnFirst:
    """Calls the rest of the chain twice and returns the first answer (a hedging middleware)."""

    async def __call__(self, call: AttemptCall, call_next: Any) -> StageResult[Any]:
        first: StageResult[Any] = await call_next(call)
        await call_next(call)
        return first


@on_both_backends
async def test_the_returned_result_keeps_its_own_exception_when_call_next_ran_twice() -> None:
    class Throttled(Exception):
        pass

    stage = ScriptedStage(Throttled("429"), "ok", "ok", repeat_last=True)
    definition = PipelineDefinition(
        "hedged",
        [
            StageDefinition(
                "s", stage, retry_config=RetryConfig(2, initial_delay_ms=1, retry_on=(Throttled,))
            )
        ],
    )
    result = await run(definition, [TwiceReturnFirst()], FakeClock())
    assert result.success  # the first attempt's Throttled was seen, so it was retried

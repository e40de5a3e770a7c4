"""Retry filters (`retry_on`, `retry_if`, `retryable_errors`), Retry-After and jitter (SPEC 8).

All waits are virtual: `FakeClock.sleeps` records each one. Runs happen on asyncio and trio.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline import (
    DefinitionError,
    ExecutionPattern,
    FunctionStage,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    PipelineStage,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
    StageTimeoutError,
)
from pipeline.events import AttemptFailed, PipelineEvent, RetryScheduled
from pipeline.testing import Delay, Fail, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends

if TYPE_CHECKING:
    from collections.abc import Sequence


class RateLimitError(Exception):
    """What a rate-limited service client raises."""


class TooManyRequests(RateLimitError):
    """A subclass: `retry_on=(RateLimitError,)` must match it."""


class RetryLater(RateLimitError):
    """Carries the server's Retry-After as `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: Any) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Collect:
    """An observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent) -> None:
        self.events.append(event)

    def failed(self) -> list[AttemptFailed]:
        return [e for e in self.events if isinstance(e, AttemptFailed)]

    def scheduled(self) -> list[RetryScheduled]:
        return [e for e in self.events if isinstance(e, RetryScheduled)]


async def run_one(
    stage: PipelineStage[Any, Any],
    clock: FakeClock,
    retry: RetryConfig,
    *,
    timeout_ms: float | None = None,
    observer: Collect | None = None,
) -> PipelineResult:
    definition = PipelineDefinition(
        "filters", [StageDefinition("s", stage, retry_config=retry, timeout_ms=timeout_ms)]
    )
    executor = PipelineExecutor(clock=clock, observers=[] if observer is None else [observer])
    with anyio.fail_after(5):
        return await executor.execute(definition)


def error_of(result: PipelineResult) -> str:
    error = result.get_result("s").error
    assert error is not None
    return error


# -- retry_on ------------------------------------------------------------------------------------


@on_both_backends
async def test_retry_on_matches_subclasses() -> None:
    """`retry_on=(RateLimitError,)` retries a `TooManyRequests` (a subclass) after the backoff."""
    clock = FakeClock()
    stage = ScriptedStage(TooManyRequests("slow down"), "ok")
    retry = RetryConfig(max_attempts=3, initial_delay_ms=100, retry_on=(RateLimitError,))
    result = await run_one(stage, clock, retry)
    assert result.outputs == {"s": "ok"}
    assert stage.call_count == 2
    assert clock.sleeps == [0.1]


@on_both_backends
async def test_retry_on_ignores_unrelated_types() -> None:
    """An exception of another type fails at once, its error left as it was."""
    clock = FakeClock()
    stage = ScriptedStage(ValueError("bad prompt"), "ok")
    retry = RetryConfig(max_attempts=3, retry_on=(RateLimitError, TimeoutError))
    result = await run_one(stage, clock, retry)
    assert result.failed_stages == ["s"]
    assert stage.call_count == 1
    assert clock.sleeps == []
    assert error_of(result) == "ValueError: bad prompt"


@on_both_backends
async def test_retry_on_never_matches_a_failed_result_without_exception() -> None:
    """A returned failure carries no exception: even `retry_on=(BaseException,)` skips it,
    although its text names the type."""
    clock = FakeClock()
    stage = ScriptedStage(Fail("RateLimitError: slow down"), "ok")
    retry = RetryConfig(max_attempts=3, retry_on=(BaseException,))
    result = await run_one(stage, clock, retry)
    assert stage.call_count == 1
    assert clock.sleeps == []
    assert error_of(result) == "RateLimitError: slow down"


@on_both_backends
async def test_retry_on_matches_a_timeout_by_its_type() -> None:
    """A timed-out attempt carries a `StageTimeoutError`: `retry_on` can select timeouts."""
    clock = FakeClock()
    stage = ScriptedStage(Delay(10, then="late"), "second", clock=clock)
    retry = RetryConfig(max_attempts=2, initial_delay_ms=500, retry_on=(StageTimeoutError,))
    result = await run_one(stage, clock, retry, timeout_ms=50)
    assert result.outputs == {"s": "second"}
    assert stage.call_count == 2


# -- retry_if ------------------------------------------------------------------------------------


@on_both_backends
async def test_retry_if_receives_the_exception() -> None:
    """`retry_if` gets the very exception the stage raised."""
    clock = FakeClock()
    raised = RateLimitError("quota")
    seen: list[object] = []

    def decide(outcome: object) -> bool:
        seen.append(outcome)
        return True

    stage = ScriptedStage(raised, "ok")
    result = await run_one(stage, clock, RetryConfig(max_attempts=2, retry_if=decide))
    assert result.success
    assert len(seen) == 1
    assert seen[0] is raised


@on_both_backends
async def test_retry_if_receives_the_failed_result_when_nothing_was_raised() -> None:
    """For a returned failure `retry_if` gets the failed `StageResult`, metadata and all."""
    clock = FakeClock()
    seen: list[object] = []

    def decide(outcome: object) -> bool:
        seen.append(outcome)
        return isinstance(outcome, StageResult) and outcome.metadata.get("status") == 429

    stage = ScriptedStage(Fail("busy", metadata={"status": 429}), Fail("gone", {"status": 410}))
    result = await run_one(stage, clock, RetryConfig(max_attempts=5, retry_if=decide))
    assert stage.call_count == 2  # 429 retried, 410 not
    assert [r.error for r in seen if isinstance(r, StageResult)] == ["busy", "gone"]
    assert all(isinstance(r, StageResult) and r.status is StageStatus.FAILED for r in seen)
    assert error_of(result) == "Failed after 2 attempts. Last error: gone"


@on_both_backends
async def test_retry_if_returning_false_stops() -> None:
    """A filter saying no means one attempt."""
    clock = FakeClock()
    stage = ScriptedStage(RateLimitError("x"), "ok")
    result = await run_one(stage, clock, RetryConfig(max_attempts=3, retry_if=lambda _: False))
    assert stage.call_count == 1
    assert error_of(result) == "RateLimitError: x"


@on_both_backends
async def test_raising_retry_if_means_no_retry() -> None:
    """A broken filter is a "no", never a crash: the stage's own error is reported."""
    clock = FakeClock()

    def broken(outcome: object) -> bool:
        raise KeyError("status")

    stage = ScriptedStage(RuntimeError("boom"), "ok")
    result = await run_one(stage, clock, RetryConfig(max_attempts=3, retry_if=broken))
    assert stage.call_count == 1
    assert clock.sleeps == []
    assert error_of(result) == "RuntimeError: boom"
    assert result.stage_runs["s"].exception_type == "RuntimeError"


# -- combining filters -----------------------------------------------------------------------------


def _accept_flagged(outcome: object) -> bool:
    return isinstance(outcome, StageResult) and outcome.metadata.get("retry") is True


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("failure", "retried"),
    [
        pytest.param(Fail("transient glitch"), True, id="retryable_errors-accepts"),
        pytest.param(TooManyRequests("slow"), True, id="retry_on-accepts"),
        pytest.param(Fail("other", metadata={"retry": True}), True, id="retry_if-accepts"),
        pytest.param(ValueError("nope"), False, id="none-accepts"),
        pytest.param(Fail("other"), False, id="none-accepts-result"),
    ],
)
def test_any_accepting_filter_retries(backend: Backend, failure: object, retried: bool) -> None:
    """With several filters a failure is retried when any of them accepts it."""

    async def scenario() -> None:
        clock = FakeClock()
        stage = ScriptedStage(failure, "ok")
        retry = RetryConfig(
            max_attempts=2,
            initial_delay_ms=10,
            retryable_errors=["transient"],
            retry_on=(RateLimitError,),
            retry_if=_accept_flagged,
        )
        result = await run_one(stage, clock, retry)
        assert result.success is retried
        assert stage.call_count == (2 if retried else 1)
        assert clock.sleeps == ([0.01] if retried else [])

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(ValueError("bad"), id="exception"),
        pytest.param(Fail("returned"), id="failed-result"),
        pytest.param(Delay(10, then="late"), id="timeout"),
    ],
)
def test_without_filters_every_failure_retries(backend: Backend, failure: object) -> None:
    """No `retryable_errors`, `retry_on` or `retry_if`: every failure is retried, as before."""

    async def scenario() -> None:
        clock = FakeClock()
        stage = ScriptedStage(failure, "ok", clock=clock)
        retry = RetryConfig(max_attempts=2, initial_delay_ms=250)
        result = await run_one(stage, clock, retry, timeout_ms=1000)
        assert result.outputs == {"s": "ok"}
        assert stage.call_count == 2
        assert clock.sleeps[-1] == 0.25

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("failure", "entries", "retried"),
    [
        pytest.param(ValueError("invalid timeout value"), ["timeout"], True, id="substring"),
        pytest.param(Fail("Rate LIMIT hit"), ["rate limit"], True, id="case-insensitive"),
        pytest.param(RateLimitError("x"), ["RateLimitError"], True, id="class-name"),
        pytest.param(TooManyRequests("x"), ["RateLimitError"], False, id="not-the-base-class"),
        pytest.param(Fail("invalid request"), ["timeout"], False, id="no-match"),
    ],
)
def test_retryable_errors_keep_their_substring_meaning(
    backend: Backend, failure: object, entries: list[str], retried: bool
) -> None:
    """`retryable_errors` still matches text (any case) or the exact class name; a subclass's
    name is not its base's (that is what `retry_on` is for)."""

    async def scenario() -> None:
        clock = FakeClock()
        stage = ScriptedStage(failure, "ok")
        retry = RetryConfig(max_attempts=2, initial_delay_ms=1, retryable_errors=entries)
        result = await run_one(stage, clock, retry)
        assert stage.call_count == (2 if retried else 1)
        assert result.success is retried

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "retry",
    [
        pytest.param(RetryConfig(max_attempts=3), id="no-filters"),
        pytest.param(RetryConfig(max_attempts=3, retry_if=lambda _: True), id="retry_if-yes"),
        pytest.param(RetryConfig(max_attempts=3, retryable_errors=["cancel"]), id="text-matches"),
    ],
)
def test_a_returned_cancelled_is_never_retried(backend: Backend, retry: RetryConfig) -> None:
    """A stage that returns cancelled said stop: no filter brings it back."""

    async def scenario() -> None:
        clock, observer = FakeClock(), Collect()
        stage = ScriptedStage(StageResult.cancelled("user stopped it"), "ok")
        result = await run_one(stage, clock, retry, observer=observer)
        assert stage.call_count == 1
        assert clock.sleeps == []
        assert result.get_result("s").status is StageStatus.CANCELLED
        assert [e.will_retry for e in observer.failed()] == [False]
        assert observer.scheduled() == []

    anyio.run(scenario, backend=backend)


# -- Retry-After ---------------------------------------------------------------------------------


@on_both_backends
async def test_retry_after_attribute_replaces_the_wait() -> None:
    """`exc.retry_after_s` is the wait, with no jitter; later retries go back to the backoff."""
    clock = FakeClock()
    stage = ScriptedStage(RetryLater("429", 2.5), RateLimitError("again"), "ok")
    retry = RetryConfig(
        max_attempts=3, initial_delay_ms=100, backoff_multiplier=2.0, retry_on=(RateLimitError,)
    )
    result = await run_one(stage, clock, retry)
    assert result.success
    assert clock.sleeps == [2.5, 0.2]


@on_both_backends
async def test_retry_after_ignores_jitter() -> None:
    """Even with full jitter a Retry-After is waited exactly."""
    clock = FakeClock()
    stage = ScriptedStage(RetryLater("429", 1.25), RetryLater("429", 0.75), "ok")
    retry = RetryConfig(max_attempts=3, initial_delay_ms=5000, jitter="full", jitter_seed=3)
    await run_one(stage, clock, retry)
    assert clock.sleeps == [1.25, 0.75]


@on_both_backends
async def test_retry_after_in_failed_result_metadata() -> None:
    """A returned failure with `metadata["retry_after_s"]` sets the wait too."""
    clock = FakeClock()
    stage = ScriptedStage(Fail("busy", metadata={"retry_after_s": 0.25}), "ok")
    retry = RetryConfig(max_attempts=2, initial_delay_ms=10_000, jitter=0.5, jitter_seed=1)
    result = await run_one(stage, clock, retry)
    assert result.success
    assert clock.sleeps == [0.25]


@on_both_backends
async def test_retry_after_is_capped_by_max_delay() -> None:
    """A server asking for two minutes waits at most `max_delay_ms`, from either source."""
    clock = FakeClock()
    stage = ScriptedStage(RetryLater("429", 120), Fail("busy", {"retry_after_s": 90}), "ok")
    retry = RetryConfig(max_attempts=3, initial_delay_ms=100, max_delay_ms=5000)
    result = await run_one(stage, clock, retry)
    assert result.success
    assert clock.sleeps == [5.0, 5.0]


@on_both_backends
async def test_retry_after_is_announced_in_retry_scheduled() -> None:
    """`RetryScheduled.delay_s` is the Retry-After that is actually waited."""
    clock, observer = FakeClock(), Collect()
    stage = ScriptedStage(RetryLater("429", 3), "ok")
    await run_one(stage, clock, RetryConfig(max_attempts=2), observer=observer)
    assert [(e.attempt, e.delay_s) for e in observer.scheduled()] == [(2, 3.0)]
    assert clock.sleeps == [3.0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [None, "soon", True, float("nan"), float("inf")], ids=repr)
def test_unusable_retry_after_falls_back_to_backoff(backend: Backend, value: object) -> None:
    """A Retry-After that is not a finite number is ignored, not a crash."""

    async def scenario() -> None:
        clock = FakeClock()
        stage = ScriptedStage(RetryLater("429", value), Fail("x", {"retry_after_s": value}), "ok")
        retry = RetryConfig(max_attempts=3, initial_delay_ms=100, backoff_multiplier=3.0)
        result = await run_one(stage, clock, retry)
        assert result.success
        assert clock.sleeps == [0.1, pytest.approx(0.3)]

    anyio.run(scenario, backend=backend)


# -- jitter ----------------------------------------------------------------------------------------

BACKOFF = [1.0, 2.0, 4.0, 5.0, 5.0]
"""The exact waits of `jittered(...)` without jitter: 1 s doubling, capped at 5 s."""


def jittered(jitter: Any, seed: int | None) -> RetryConfig:
    return RetryConfig(
        max_attempts=6,
        initial_delay_ms=1000,
        backoff_multiplier=2.0,
        max_delay_ms=5000,
        jitter=jitter,
        jitter_seed=seed,
    )


async def waits_of(retry: RetryConfig) -> list[float]:
    """The waits of a stage that always fails, under `retry`."""
    clock = FakeClock()
    stage = ScriptedStage(Fail("down"), repeat_last=True)
    result = await run_one(stage, clock, retry)
    assert stage.call_count == retry.max_attempts
    assert result.stage_runs["s"].attempts == retry.max_attempts
    return list(clock.sleeps)


@on_both_backends
async def test_no_jitter_waits_exactly() -> None:
    assert await waits_of(jittered(None, 1)) == BACKOFF


@on_both_backends
async def test_full_jitter_stays_in_zero_to_wait() -> None:
    """Full jitter draws each wait from [0, backoff wait]; the waits do spread."""
    waits = await waits_of(jittered("full", 11))
    assert len(waits) == len(BACKOFF)
    assert all(0.0 <= w <= b for w, b in zip(waits, BACKOFF, strict=True))
    assert waits != BACKOFF


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fraction", [0.1, 0.5, 1])
def test_fractional_jitter_stays_within_bounds(backend: Backend, fraction: float) -> None:
    """A fraction f draws from [wait * (1 - f), wait * (1 + f)], never above `max_delay_ms`."""

    async def scenario() -> None:
        waits = await waits_of(jittered(fraction, 5))
        assert len(waits) == len(BACKOFF)
        for wait, base in zip(waits, BACKOFF, strict=True):
            assert base * (1 - fraction) <= wait <= min(base * (1 + fraction), 5.0)
        assert waits != BACKOFF

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_jitter_seed_makes_waits_repeatable() -> None:
    """Two configs with the same seed wait the same; another seed waits differently."""
    for jitter in ("full", 0.5):
        first = await waits_of(jittered(jitter, 42))
        again = await waits_of(jittered(jitter, 42))
        other = await waits_of(jittered(jitter, 43))
        assert first == again
        assert first != other


# -- construction errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"retry_on": ("RateLimitError",)}, "retry_on", id="retry_on-names"),
        pytest.param({"retry_on": (int,)}, "retry_on", id="retry_on-not-exception"),
        pytest.param({"retry_on": (RateLimitError("x"),)}, "retry_on", id="retry_on-instance"),
        pytest.param({"retry_on": "RateLimitError"}, "retry_on", id="retry_on-str"),
        pytest.param({"retry_if": "status == 429"}, "retry_if", id="retry_if-str"),
        pytest.param({"retry_if": True}, "retry_if", id="retry_if-bool"),
        pytest.param({"jitter": "half"}, "jitter", id="jitter-word"),
        pytest.param({"jitter": 0}, "jitter", id="jitter-zero"),
        pytest.param({"jitter": 1.5}, "jitter", id="jitter-above-one"),
        pytest.param({"jitter": -0.1}, "jitter", id="jitter-negative"),
        pytest.param({"jitter": float("nan")}, "jitter", id="jitter-nan"),
        pytest.param({"jitter": True}, "jitter", id="jitter-bool"),
        pytest.param({"jitter_seed": "42"}, "jitter_seed", id="seed-str"),
        pytest.param({"jitter_seed": 4.2}, "jitter_seed", id="seed-float"),
        pytest.param({"jitter_seed": True}, "jitter_seed", id="seed-bool"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        RetryConfig(max_attempts=3, **kwargs)
    assert caught.value.owner == "RetryConfig"
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith(f"RetryConfig: {field} ")
    assert caught.value.fix  # says what to pass instead


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retry_on": [RateLimitError, TimeoutError]},
        {"retry_on": RateLimitError},
        {"retry_on": (BaseException,)},
        {"retry_if": len},
        {"jitter": "full"},
        {"jitter": 1},
        {"jitter": 0.25},
        {"jitter_seed": 0},
        {"jitter_seed": -5},
    ],
    ids=repr,
)
def test_good_values_are_accepted(kwargs: dict[str, Any]) -> None:
    """Accepted values; `retry_on` given as a list or one type is kept as a tuple."""
    config = RetryConfig(max_attempts=2, **kwargs)
    assert isinstance(config.retry_on, tuple)
    assert all(isinstance(t, type) for t in config.retry_on)


# -- AttemptFailed.will_retry ----------------------------------------------------------------------


def _broken_filter(outcome: object) -> bool:
    raise RuntimeError("broken filter")


def _is_result(outcome: object) -> bool:
    return isinstance(outcome, StageResult)


RATE_LIMITED = RetryConfig(3, retry_on=(RateLimitError,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("script", "retry", "flags"),
    [
        pytest.param([ValueError("x"), "ok"], RATE_LIMITED, [False], id="rejected-type"),
        pytest.param([TooManyRequests("x"), "ok"], RATE_LIMITED, [True], id="accepted-type"),
        pytest.param(
            [Fail("a"), Fail("b"), Fail("c")], RetryConfig(3), [True, True, False], id="exhausted"
        ),
        pytest.param(
            [RuntimeError("x"), "ok"],
            RetryConfig(3, retry_if=_broken_filter),
            [False],
            id="broken-filter",
        ),
        pytest.param(
            [Fail("x"), "ok"], RetryConfig(3, retry_on=(Exception,)), [False], id="result-not-type"
        ),
        pytest.param(
            [RetryLater("x", 1), Fail("y"), "ok"],
            RetryConfig(3, retry_on=(RetryLater,), retry_if=_is_result),
            [True, True],
            id="type-then-result",
        ),
    ],
)
def test_will_retry_flag_agrees_with_what_happens(
    backend: Backend, script: Sequence[object], retry: RetryConfig, flags: list[bool]
) -> None:
    """Each `AttemptFailed.will_retry` is True exactly when another attempt follows it."""

    async def scenario() -> None:
        clock, observer = FakeClock(), Collect()
        stage = ScriptedStage(*script)
        await run_one(stage, clock, retry, observer=observer)
        failed = observer.failed()
        assert [e.will_retry for e in failed] == flags
        assert [e.attempt for e in failed] == list(range(1, len(flags) + 1))
        # A retry follows exactly the failures flagged so, and each one runs the stage again.
        assert [e.attempt - 1 for e in observer.scheduled()] == [
            e.attempt for e in failed if e.will_retry
        ]
        assert stage.call_count == 1 + sum(flags)

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_will_retry_per_fan_out_item() -> None:
    """Fan-out items are filtered one by one: the flag on each item's event matches its fate."""
    clock, observer = FakeClock(), Collect()
    calls: dict[str, int] = {}

    async def call(word: str, ctx: Any) -> str:
        calls[word] = calls.get(word, 0) + 1
        if word == "limited" and calls[word] == 1:
            raise TooManyRequests(word)
        if word == "broken":
            raise ValueError(word)
        return word.upper()

    definition = PipelineDefinition(
        "fan",
        [
            StageDefinition(
                "s",
                FunctionStage(call),
                pattern=ExecutionPattern.FAN_OUT,
                max_concurrent_fan_out=1,
                retry_config=RetryConfig(3, initial_delay_ms=1, retry_on=(RateLimitError,)),
            )
        ],
    )
    executor = PipelineExecutor(clock=clock, observers=[observer])
    with anyio.fail_after(5):
        result = await executor.execute(definition, ["limited", "broken"])
    assert result.failed_stages == ["s"]
    assert [(e.item, e.attempt, e.will_retry) for e in observer.failed()] == [
        (0, 1, True),
        (1, 1, False),
    ]
    assert calls == {"limited": 2, "broken": 1}


# -- found by these tests and fixed ----------------------------------------------------------------


@on_both_backends
async def test_stateful_retry_if_is_asked_once_and_the_flag_agrees() -> None:
    """A filter with a budget of one retry: asked once per failure, and the flag tells the truth."""
    clock, observer = FakeClock(), Collect()
    asked: list[object] = []

    def one_retry(outcome: object) -> bool:
        asked.append(outcome)
        return len(asked) == 1

    stage = ScriptedStage(RateLimitError("a"), RateLimitError("b"), "ok")
    await run_one(stage, clock, RetryConfig(3, retry_if=one_retry), observer=observer)
    flags = [e.will_retry for e in observer.failed()]
    assert stage.call_count == 1 + sum(flags)
    assert len(asked) == stage.call_count


@on_both_backends
async def test_async_retry_if_is_rejected_or_awaited() -> None:
    """An `async def` filter saying no must not retry (or must be refused at construction)."""

    async def never(outcome: object) -> bool:
        return False

    # mypy already refuses an async filter; this is about users without a type checker.
    kwargs: dict[str, Any] = {"retry_if": never}
    try:
        retry: RetryConfig | None = RetryConfig(3, initial_delay_ms=1, **kwargs)
    except DefinitionError as exc:
        assert exc.field == "retry_if"  # noqa: PT017  # refusing it is one acceptable fix
        retry = None
    if retry is None:
        return
    stage = ScriptedStage(RateLimitError("a"), "ok")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... was never awaited"
        await run_one(stage, FakeClock(), retry)
    assert stage.call_count == 1


@on_both_backends
async def test_a_seeded_jitter_repeats_run_after_run_with_one_config() -> None:
    """The seed makes a stage's waits repeatable even when one RetryConfig serves many runs."""
    retry = RetryConfig(4, initial_delay_ms=1000, jitter="full", jitter_seed=7)
    waits = []
    for _ in range(2):
        clock = FakeClock()
        stage = ScriptedStage(RateLimitError("a"), RateLimitError("b"), RateLimitError("c"), "ok")
        await run_one(stage, clock, retry)
        waits.append(clock.sleeps)
    assert waits[0] == waits[1]
    assert len(waits[0]) == 3


class BrokenRetryAfter(Exception):
    """Its Retry-After is computed in a property that raises."""

    @property
    def retry_after_s(self) -> float:
        raise KeyError("no header")


@on_both_backends
async def test_a_retry_after_property_that_raises_means_no_retry_after() -> None:
    clock = FakeClock()
    stage = ScriptedStage(BrokenRetryAfter("503"), "ok")
    result = await run_one(stage, clock, RetryConfig(2, initial_delay_ms=250))
    assert result.success
    assert clock.sleeps == [0.25]  # the computed backoff, as if there were no Retry-After

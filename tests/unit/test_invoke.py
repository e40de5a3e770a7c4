"""One invocation (pipeline._invoke) and its attempt chain (pipeline._attempt), driven directly.

Each test builds a `RunEnv` by hand and calls `invoke_stage` / `build_chain` (or the helpers
around them), so the chain's links, the attempt log, retry, cache and fan-out are checked
without a scheduler in between. Time is a `FakeClock` (or a hand-moved clock); every scenario
runs on asyncio and trio.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    RetryConfig,
    StageDefinition,
    StageOutputError,
    StageResult,
    StageStatus,
    StageTimeoutError,
)
from pipeline._attempt import AttemptCall
from pipeline._chain import build_chain
from pipeline._env import RunEnv
from pipeline._invoke import fan_out, invoke_stage
from pipeline._outcome import AttemptRecord, Outcome
from pipeline._reporter import NULL_REPORTER
from pipeline.cache import JsonSerializer, MemoryCache
from pipeline.cache._step import CacheTally
from pipeline.definition import ATTEMPT_CHAIN_ATTR
from pipeline.result import UNKNOWN_STAGE
from pipeline.runners import INLINE, THREADS, InlineRunner, ThreadRunner
from pipeline.testing import Block, Delay, Fail, FakeClock, ScriptedStage
from tests.unit._support import on_both_backends

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pipeline._attempt import Handler
    from pipeline._reporter import Reporter
    from pipeline.clock import Clock
    from pipeline.result import StageRun


# -- helpers -----------------------------------------------------------------------------------------
class EventLog:
    """A reporter that records every call as `(method, args...)`; `enabled` as given."""

    run_id = "run"

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.calls: list[tuple[Any, ...]] = []

    def run_started(self, name: str, plan: object, scheduling: str) -> None:
        self.calls.append(("run_started", name))

    def wave_started(self, wave: int, stage_ids: tuple[str, ...]) -> None:
        self.calls.append(("wave_started", wave))

    def stage_started(self, stage_id: str, wave: int, items: int | None) -> None:
        self.calls.append(("stage_started", stage_id))

    def attempt_started(self, stage_id: str, item: int | None, attempt: int) -> None:
        self.calls.append(("attempt_started", stage_id, item, attempt))

    def attempt_failed(
        self, stage_id: str, item: int | None, attempt: int, outcome: Outcome, *, will_retry: bool
    ) -> None:
        # What the real reporter reads at this moment (the retry loop rewrites the last error).
        error, exc = outcome.result.error, outcome.exception
        self.calls.append(("attempt_failed", stage_id, item, attempt, error, exc, will_retry))

    def retry_scheduled(
        self, stage_id: str, item: int | None, attempt: int, delay_s: float
    ) -> None:
        self.calls.append(("retry_scheduled", stage_id, item, attempt, delay_s))

    def cache_hit(self, stage_id: str, item: int | None, key: str | None) -> None:
        self.calls.append(("cache_hit", stage_id, item))

    def item_finished(self, stage_id: str, item: int, outcome: Outcome) -> None:
        self.calls.append(("item_finished", stage_id, item, outcome.result.status))

    def stage_finished(self, record: StageRun, output: Any = None) -> None:
        self.calls.append(("stage_finished", record.stage_id))

    def run_finished(self, result: object) -> None:
        self.calls.append(("run_finished",))

    def named(self, method: str) -> list[tuple[Any, ...]]:
        """The recorded calls of `method`, without the method name."""
        return [c[1:] for c in self.calls if c[0] == method]


def make_env(
    clock: Clock,
    reporter: EventLog | None = None,
    *,
    cached: bool = False,
    runners: dict[str, Any] | None = None,
) -> RunEnv:
    """A run environment as the executor builds it (unobserved unless `reporter` is given)."""
    rep = NULL_REPORTER if reporter is None else cast("Reporter", reporter)
    return RunEnv(
        clock=clock,
        reporter=rep,
        pipeline_name="p",
        runners=runners or {INLINE: InlineRunner(), THREADS: ThreadRunner()},
        store=MemoryCache() if cached else None,
        serializer=JsonSerializer() if cached else None,
        tally=CacheTally() if cached else None,
    )


def link_names(chain: Handler) -> list[str]:
    """The chain's links, outermost first (each link closes over the next as `inner`)."""
    names: list[str] = []
    link: Any = chain
    while link is not None:
        if isinstance(link, functools.partial):  # the innermost call: `run_attempt`, bound
            names.append(link.func.__name__)
            break
        names.append(link.__name__)
        cells = dict(zip(link.__code__.co_freevars, link.__closure__ or (), strict=True))
        cell = cells.get("inner")
        link = None if cell is None else cell.cell_contents
    return names


def spy(chain: Handler, seen: list[AttemptCall]) -> Handler:
    """`chain`, recording each `AttemptCall` it is given."""

    async def spying(call: AttemptCall) -> Outcome:
        seen.append(call)
        return await chain(call)

    return spying


class StepClock:
    """A clock moved by hand: `now()` is `t`, deadlines never fire by themselves."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await anyio.lowlevel.checkpoint()

    def deadline_scope(self, seconds: float) -> anyio.CancelScope:
        return anyio.CancelScope()


class ReturnsInt:
    """A stage whose `execute` returns a bare int (a contract violation)."""

    name = "returns_int"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> Any:
        return 42


async def in_clock(clock: FakeClock, body: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """Run `body` with `clock` entered (its sleeps and deadlines then move by themselves)."""
    with anyio.fail_after(5):
        async with clock:
            return await body()


async def invoke_in(clock: FakeClock, sdef: StageDefinition, value: Any, env: RunEnv) -> Outcome:
    """`invoke_stage` as the executor calls it (with the stage's cache, if any), clock entered."""

    def body() -> Awaitable[Outcome]:
        return invoke_stage(sdef, value, PipelineContext(), env, env.cache_for(sdef))

    return await in_clock(clock, body)


# -- the chain's links ---------------------------------------------------------------------------
def test_chain_links_depend_on_observation_and_timeout() -> None:
    """Unobserved and without a timeout the chain is the bare execute link: nothing else."""
    clock = FakeClock()
    plain = StageDefinition("s", ScriptedStage(1))
    timed = StageDefinition("t", ScriptedStage(1), timeout_ms=100)
    assert link_names(build_chain(plain, make_env(clock))) == ["run_attempt"]
    assert link_names(build_chain(timed, make_env(clock))) == ["with_timeout", "run_attempt"]
    assert link_names(build_chain(plain, make_env(clock, EventLog()))) == [
        "reported",
        "run_attempt",
    ]
    assert link_names(build_chain(timed, make_env(clock, EventLog()))) == [
        "reported",
        "with_timeout",
        "run_attempt",
    ]


def test_a_plain_run_calls_the_stage_with_no_chain_built_or_kept() -> None:
    """No observers, middleware or output checks (`env.plain`): a stage with no timeout,
    `uses=` or runner is called directly, and nothing is kept on its definition."""
    clock = FakeClock()
    env = dataclasses.replace(make_env(clock), plain=True, chain_key=object())
    plain = StageDefinition("s", ScriptedStage(1))
    assert link_names(build_chain(plain, env)) == ["run_attempt"]
    assert ATTEMPT_CHAIN_ATTR not in plain.__dict__
    timed = StageDefinition("t", ScriptedStage(1), timeout_ms=100)
    assert link_names(build_chain(timed, env)) == ["with_timeout", "run_attempt"]
    assert ATTEMPT_CHAIN_ATTR in timed.__dict__  # a chain with links is kept, as before


def test_a_chain_is_kept_per_executor_and_clock() -> None:
    """Built once per stage and reused by the next run of the same executor on the same clock.

    An executor's settings are fixed at construction (its `chain_key`); links read the run's
    reporter per call, so observed chains are kept too. A hand-built environment (no key) never
    keeps one.
    """
    clock = FakeClock()
    sdef = StageDefinition("s", ScriptedStage(1))
    executor_token = object()
    env = dataclasses.replace(make_env(clock), chain_key=executor_token)
    first = build_chain(sdef, env)
    same = dataclasses.replace(env, pipeline_name="other")
    assert build_chain(sdef, same) is first
    assert build_chain(sdef, dataclasses.replace(env, clock=FakeClock())) is not first
    assert build_chain(sdef, dataclasses.replace(env, chain_key=object())) is not first
    observed = dataclasses.replace(make_env(clock, EventLog()), chain_key=object())
    assert build_chain(sdef, observed) is build_chain(sdef, observed)
    by_hand = make_env(clock)
    assert build_chain(sdef, by_hand) is not build_chain(sdef, by_hand)


@on_both_backends
async def test_an_unobserved_chain_never_calls_the_reporter() -> None:
    """A disabled reporter sees nothing from the chain, even for a failed attempt."""
    log = EventLog(enabled=False)
    sdef = StageDefinition("s", ScriptedStage(ValueError("x")), timeout_ms=100)
    chain = build_chain(sdef, make_env(FakeClock(), log))
    outcome = await chain(AttemptCall("s", None, 1, None, PipelineContext()))
    assert outcome.result.error == "ValueError: x"
    assert log.calls == []


@on_both_backends
async def test_an_observed_chain_reports_each_attempt_and_its_failure() -> None:
    log = EventLog()
    env = make_env(FakeClock(), log)
    ok = build_chain(StageDefinition("ok", ScriptedStage(1)), env)
    bad = build_chain(StageDefinition("bad", ScriptedStage(Fail("no"))), env)
    await ok(AttemptCall("ok", None, 1, None, PipelineContext()))
    outcome = await bad(AttemptCall("bad", 3, 2, None, PipelineContext()))
    assert log.calls == [
        ("attempt_started", "ok", None, 1),
        ("attempt_started", "bad", 3, 2),
        ("attempt_failed", "bad", 3, 2, "no", None, False),
    ]
    assert outcome.result.error == "no"


@on_both_backends
async def test_events_see_the_timeout_failure_and_whether_it_is_retried() -> None:
    """The events link wraps the timeout link: it reports the timeout, not a cancellation."""
    clock, log = FakeClock(), EventLog()
    retry = RetryConfig(max_attempts=2, initial_delay_ms=500, retryable_errors=["timeout"])
    sdef = StageDefinition("s", ScriptedStage(Block(), Block()), timeout_ms=100, retry_config=retry)
    env = make_env(clock, log)
    outcome = await invoke_in(clock, sdef, None, env)
    failures = log.named("attempt_failed")
    assert [(f[2], f[5]) for f in failures] == [(1, True), (2, False)]
    for f in failures:
        assert f[3] == "Timeout: stage 's' exceeded timeout_ms=100"
        assert isinstance(f[4], StageTimeoutError)
    assert log.named("retry_scheduled") == [("s", None, 2, 0.5)]
    assert outcome.result.error == (
        "Failed after 2 attempts. Last error: Timeout: stage 's' exceeded timeout_ms=100"
    )


@on_both_backends
async def test_the_timeout_link_cuts_a_blocked_attempt_at_its_deadline() -> None:
    clock = FakeClock()
    sdef = StageDefinition("s", ScriptedStage(Block()), timeout_ms=250)
    outcome = await invoke_in(clock, sdef, 1, make_env(clock))
    assert outcome.result.status is StageStatus.FAILED
    assert isinstance(outcome.exception, StageTimeoutError)
    assert outcome.exception.timeout_ms == 250
    assert clock.now() == 0.25
    assert outcome.attempt_log == [
        AttemptRecord(1, 0.0, 0.0, 0.25, "Timeout: stage 's' exceeded timeout_ms=250")
    ]


@on_both_backends
async def test_the_timeout_link_lets_an_attempt_within_time_through() -> None:
    clock = FakeClock()
    stage = ScriptedStage(Delay(0.05, then="done"), clock=clock)
    sdef = StageDefinition("s", stage, timeout_ms=100)
    outcome = await invoke_in(clock, sdef, 1, make_env(clock))
    assert outcome.result.output == "done"
    assert outcome.attempt_log == [AttemptRecord(1, 0.0, 0.0, 0.05, None)]


@on_both_backends
async def test_an_overrun_without_a_checkpoint_is_still_a_timeout() -> None:
    """The deadline never fired (no checkpoint), but the attempt took too long: a timeout."""
    clock = StepClock()

    class Overrun:
        name = "overrun"

        async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[int]:
            clock.t += 5.0  # five seconds of blocking work, no checkpoint
            return StageResult.success(42)

    sdef = StageDefinition("s", Overrun(), timeout_ms=100)
    outcome = await invoke_stage(sdef, None, PipelineContext(), make_env(clock))
    assert outcome.result.status is StageStatus.FAILED
    assert outcome.result.error == "Timeout: stage 's' exceeded timeout_ms=100"
    assert isinstance(outcome.exception, StageTimeoutError)


# -- AttemptCall -------------------------------------------------------------------------------------
def test_attempt_call_is_a_slotted_value_with_its_fields_in_order() -> None:
    ctx: PipelineContext[Any] = PipelineContext()
    call = AttemptCall("s", 2, 3, "in", ctx)
    assert [f.name for f in dataclasses.fields(call)] == [
        "stage_id",
        "item",
        "attempt",
        "input",
        "context",
    ]
    assert (call.stage_id, call.item, call.attempt, call.input, call.context) == (
        "s",
        2,
        3,
        "in",
        ctx,
    )
    with pytest.raises(AttributeError):
        call.extra = 1  # type: ignore[attr-defined]  # slots: no stray attributes


@on_both_backends
async def test_the_chain_hands_the_call_input_and_context_to_the_stage() -> None:
    stage: ScriptedStage[Any, Any] = ScriptedStage("a", "b")
    sdef = StageDefinition("s", stage)
    chain = build_chain(sdef, make_env(FakeClock()))
    ctx: PipelineContext[Any] = PipelineContext()
    whole = await chain(AttemptCall("s", None, 1, "in0", ctx))
    item = await chain(AttemptCall("s", 4, 1, "in1", ctx))
    assert stage.inputs == ["in0", "in1"]
    assert stage.contexts[0] is ctx
    assert whole.result.stage_name == "s"  # the whole stage's result is named after it
    assert item.result.stage_name == UNKNOWN_STAGE  # an item's result is only read for its output


@on_both_backends
async def test_a_bad_return_value_fails_naming_the_stage_and_the_attempt() -> None:
    chain = build_chain(StageDefinition("s", ReturnsInt()), make_env(FakeClock()))
    outcome = await chain(AttemptCall("s", None, 3, None, PipelineContext()))
    assert isinstance(outcome.exception, StageOutputError)
    assert outcome.exception.attempt == 3
    assert outcome.attempts == 3
    assert outcome.result.error is not None
    assert outcome.result.error.startswith("stage 's' returned int, expected StageResult")


# -- the attempt log ---------------------------------------------------------------------------------
@on_both_backends
async def test_a_single_attempt_logs_exactly_one_record() -> None:
    clock = FakeClock()
    stage = ScriptedStage(Delay(2.0, then=7), Delay(1.0, then=Fail("bad")), clock=clock)
    sdef = StageDefinition("s", stage)
    env = make_env(clock)
    ok = await invoke_in(clock, sdef, None, env)
    bad = await invoke_in(clock, sdef, None, env)
    assert ok.attempts == 1
    assert ok.attempt_log == [AttemptRecord(1, 0.0, 0.0, 2.0, None)]
    assert bad.attempt_log == [AttemptRecord(1, 0.0, 2.0, 3.0, "bad")]


@on_both_backends
async def test_max_attempts_one_and_a_cached_stage_log_one_record_too() -> None:
    """Every single-attempt route (no retry, max_attempts=1, through the cache) logs alike."""
    clock = FakeClock()
    one = RetryConfig(max_attempts=1)
    for sdef, env in [
        (
            StageDefinition("s", ScriptedStage(Delay(1.0, then=5), clock=clock), retry_config=one),
            make_env(clock),
        ),
        (
            StageDefinition("s", ScriptedStage(Delay(1.0, then=5), clock=clock)),
            make_env(clock, cached=True),
        ),
    ]:
        start = clock.now()
        outcome = await invoke_in(clock, sdef, None, env)
        assert outcome.result.output == 5
        assert outcome.attempt_log == [AttemptRecord(1, 0.0, start, start + 1.0, None)]


@on_both_backends
async def test_retries_log_one_record_per_attempt_with_its_backoff() -> None:
    clock, log = FakeClock(), EventLog()
    stage = ScriptedStage(
        Delay(0.5, then=Fail("e1")),
        Delay(0.5, then=ValueError("e2")),
        Delay(0.5, then=9),
        clock=clock,
    )
    retry = RetryConfig(max_attempts=3, initial_delay_ms=1000, backoff_multiplier=2.0)
    sdef = StageDefinition("s", stage, retry_config=retry)
    outcome = await invoke_in(clock, sdef, None, make_env(clock, log))
    assert outcome.result.output == 9
    assert outcome.attempts == 3
    assert outcome.attempt_log == [
        AttemptRecord(1, 0.0, 0.0, 0.5, "e1"),
        AttemptRecord(2, 1.0, 1.5, 2.0, "ValueError: e2"),
        AttemptRecord(3, 2.0, 4.0, 4.5, None),
    ]
    assert clock.sleeps == [0.5, 1.0, 0.5, 2.0, 0.5]
    assert log.named("retry_scheduled") == [("s", None, 2, 1.0), ("s", None, 3, 2.0)]
    assert [c[:3] for c in log.named("attempt_started")] == [
        ("s", None, 1),
        ("s", None, 2),
        ("s", None, 3),
    ]


# -- cache and retry ---------------------------------------------------------------------------------
@on_both_backends
async def test_the_cache_sits_outside_retries_and_a_hit_makes_no_attempt() -> None:
    clock, log = FakeClock(), EventLog()
    stage: ScriptedStage[Any, Any] = ScriptedStage(Fail("flaky"), "out")
    retry = RetryConfig(max_attempts=3, initial_delay_ms=0)
    sdef = StageDefinition("s", stage, retry_config=retry)
    env = make_env(clock, log, cached=True)
    assert env.tally is not None
    assert env.store is not None

    first = await invoke_in(clock, sdef, "in", env)
    assert (first.result.output, first.attempts, first.cached) == ("out", 2, False)
    assert (env.tally.misses, env.tally.writes) == (1, 1)  # one lookup and one write for 2 attempts
    assert await env.store.count("s") == 1

    log.calls.clear()
    hit = await invoke_in(clock, sdef, "in", env)
    assert (hit.result.output, hit.attempts, hit.cached) == ("out", 0, True)
    assert hit.result.metadata == {"cached": True}
    assert hit.attempt_log is None
    assert stage.call_count == 2  # no attempt: the stage was not called again
    assert [c[0] for c in log.calls] == ["cache_hit"]


@on_both_backends
async def test_a_failure_after_every_retry_is_not_cached() -> None:
    clock = FakeClock()
    stage: ScriptedStage[Any, Any] = ScriptedStage(Fail("a"), Fail("b"), "late")
    sdef = StageDefinition("s", stage, retry_config=RetryConfig(max_attempts=2, initial_delay_ms=0))
    env = make_env(clock, cached=True)
    failed = await invoke_in(clock, sdef, 1, env)
    assert failed.result.error == "Failed after 2 attempts. Last error: b"
    again = await invoke_in(clock, sdef, 1, env)
    assert (again.result.output, again.cached, stage.call_count) == ("late", False, 3)


# -- fan-out -----------------------------------------------------------------------------------------
@on_both_backends
async def test_fan_out_item_calls_carry_their_item() -> None:
    clock = FakeClock()
    stage = ScriptedStage(10, Fail("once"), 11, 12, clock=clock)
    retry = RetryConfig(max_attempts=2, initial_delay_ms=0)
    sdef = StageDefinition(
        "f", stage, pattern=ExecutionPattern.FAN_OUT, retry_config=retry, max_concurrent_fan_out=1
    )
    env = make_env(clock)
    seen: list[AttemptCall] = []
    chain = spy(build_chain(sdef, env), seen)
    ctx: PipelineContext[Any] = PipelineContext()
    outcome = await in_clock(clock, lambda: fan_out(sdef, chain, ["a", "b", "c"], ctx, env, None))
    assert [(c.stage_id, c.item, c.attempt, c.input) for c in seen] == [
        ("f", 0, 1, "a"),
        ("f", 1, 1, "b"),
        ("f", 1, 2, "b"),
        ("f", 2, 1, "c"),
    ]
    assert all(c.context is ctx for c in seen)
    assert outcome.result.output == [10, 11, 12]
    assert (outcome.items, outcome.attempts) == (3, 2)


@on_both_backends
async def test_fan_out_through_invoke_stage_reports_each_item() -> None:
    clock, log = FakeClock(), EventLog()
    sdef = StageDefinition(
        "f", ScriptedStage(1, 2), pattern=ExecutionPattern.FAN_OUT, max_concurrent_fan_out=1
    )
    outcome = await invoke_in(clock, sdef, ["x", "y"], make_env(clock, log))
    assert outcome.result.output == [1, 2]
    assert log.named("attempt_started") == [("f", 0, 1), ("f", 1, 1)]
    assert log.named("item_finished") == [
        ("f", 0, StageStatus.SUCCEEDED),
        ("f", 1, StageStatus.SUCCEEDED),
    ]


@on_both_backends
async def test_fan_out_of_a_non_list_fails_without_an_attempt() -> None:
    sdef = StageDefinition("f", ScriptedStage(1), pattern=ExecutionPattern.FAN_OUT)
    seen: list[AttemptCall] = []
    env = make_env(FakeClock())
    outcome = await fan_out(
        sdef, spy(build_chain(sdef, env), seen), 5, PipelineContext(), env, None
    )
    assert outcome.result.error == "FAN_OUT requires list input, got int"
    assert (outcome.attempts, seen) == (0, [])


# -- condition ---------------------------------------------------------------------------------------
@on_both_backends
async def test_a_false_condition_skips_without_an_attempt() -> None:
    stage: ScriptedStage[Any, Any] = ScriptedStage(1)
    sdef = StageDefinition("s", stage, condition=lambda ctx: False)
    outcome = await invoke_stage(sdef, None, PipelineContext(), make_env(FakeClock()))
    assert outcome.result.status is StageStatus.SKIPPED
    assert (outcome.attempts, stage.call_count, outcome.attempt_log) == (0, 0, None)


@on_both_backends
async def test_a_raising_condition_fails_its_stage_naming_it() -> None:
    def condition(ctx: PipelineContext[Any]) -> bool:
        raise KeyError("flag")

    stage: ScriptedStage[Any, Any] = ScriptedStage(1)
    sdef = StageDefinition("s", stage, condition=condition)
    outcome = await invoke_stage(sdef, None, PipelineContext(), make_env(FakeClock()))
    assert outcome.result.error == "condition of stage 's' raised KeyError: 'flag'"
    assert isinstance(outcome.exception, KeyError)
    assert (outcome.attempts, stage.call_count) == (0, 0)

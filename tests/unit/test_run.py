"""`RunState` (pipeline._run): release rules, failure propagation, records and the result.

Most scenarios are small runs through the executor on a `FakeClock`; the cases a real run
cannot reach on purpose (a task lost to an outside cancellation, a deadline firing as the
last stage returns) drive a `RunState` by hand. Every scenario runs on asyncio and trio.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    Scheduling,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline._outcome import Outcome
from pipeline._run import NOT_STARTED, UPSTREAM_FAILED, RunState
from pipeline.testing import Block, Delay, Fail, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends
from tests.unit.test_invoke import EventLog, make_env

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from pipeline.events import PipelineEvent


def sd(sid: str, stage: ScriptedStage[Any, Any], *inputs: str, **kw: Any) -> StageDefinition:
    return StageDefinition(sid, stage, inputs=list(inputs), **kw)


async def run(
    definition: PipelineDefinition,
    clock: FakeClock | None = None,
    *,
    scheduling: Scheduling = "waves",
    initial: Any = None,
    timeout_ms: float | None = None,
    observers: tuple[Any, ...] = (),
) -> PipelineResult:
    executor = PipelineExecutor(
        clock=clock or FakeClock(),
        scheduling=scheduling,
        timeout_ms=timeout_ms,
        observers=observers,
    )
    with anyio.fail_after(10):
        return await executor.execute(definition, initial)


class Events:
    """An observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent) -> None:
        self.events.append(event)


# -- failure propagation -----------------------------------------------------------------------------
@on_both_backends
async def test_upstream_failed_propagates_to_every_dependent_and_spares_the_rest() -> None:
    """fail_fast=False: dependents of a failed critical stage (and theirs) are skipped."""
    d = PipelineDefinition(
        "p",
        [
            sd("a", ScriptedStage(Fail("boom"))),
            sd("side", ScriptedStage("s")),
            sd("b", ScriptedStage(1), "a"),
            sd("c", ScriptedStage(2), "b"),
            sd("mixed", ScriptedStage(3), "side", "c"),
            sd("free", ScriptedStage(4), "side"),
        ],
        fail_fast=False,
    )
    result = await run(d)
    assert result.success is False
    assert result.failed_stages == ["a"]
    assert result.skipped_stages == ["b", "c", "mixed"]
    for sid in ("b", "c", "mixed"):
        assert result.get_result(sid).metadata["skip_reason"] == UPSTREAM_FAILED
        assert result.stage_runs[sid].attempts == 0
    assert result.outputs == {"side": "s", "free": 4}


@on_both_backends
async def test_a_condition_skip_does_not_propagate() -> None:
    """A skipped stage hands None to its dependents, which still run."""
    b: ScriptedStage[Any, Any] = ScriptedStage("ran")
    d = PipelineDefinition(
        "p", [sd("a", ScriptedStage(1), condition=lambda ctx: False), sd("b", b, "a")]
    )
    result = await run(d)
    assert result.success is True
    assert result.skipped_stages == ["a"]
    assert b.inputs == [None]
    assert result.outputs == {"b": "ran"}


@on_both_backends
async def test_a_non_critical_failure_hands_none_downstream_and_the_run_succeeds() -> None:
    b: ScriptedStage[Any, Any] = ScriptedStage("ran")
    d = PipelineDefinition(
        "p", [sd("a", ScriptedStage(Fail("x")), critical=False), sd("b", b, "a")]
    )
    result = await run(d)
    assert result.success is True
    assert result.failed_stages == ["a"]
    assert b.inputs == [None]


@on_both_backends
async def test_a_critical_stage_returning_cancelled_fails_the_run_like_a_failure() -> None:
    d = PipelineDefinition(
        "p",
        [
            sd("a", ScriptedStage(StageResult.cancelled("gave up"))),
            sd("b", ScriptedStage(1), "a"),
        ],
    )
    result = await run(d)
    assert result.success is False
    assert result.get_result("a").error == "[CANCELLED] gave up"
    assert result.get_result("b").error == f"[CANCELLED] {NOT_STARTED}"


@on_both_backends
async def test_fail_fast_cancels_what_runs_and_settles_what_never_started() -> None:
    clock = FakeClock()
    blocked: ScriptedStage[Any, Any] = ScriptedStage(Block())
    later: ScriptedStage[Any, Any] = ScriptedStage(1)
    d = PipelineDefinition(
        "p",
        [
            sd("slow", blocked),
            sd("bad", ScriptedStage(Delay(1.0, then=Fail("boom")), clock=clock)),
            sd("after", later, "bad"),
        ],
    )
    result = await run(d, clock)
    assert result.success is False
    assert result.failed_stages == ["bad"]
    assert result.cancelled_stages == ["slow", "after"]
    assert later.call_count == 0
    after = result.stage_runs["after"]
    assert (after.status, after.error, after.attempts, after.started_ms) == (
        StageStatus.CANCELLED,
        f"[CANCELLED] {NOT_STARTED}",
        0,
        None,
    )
    assert result.stage_runs["slow"].finished_ms == 1000.0


@on_both_backends
async def test_a_fan_out_over_a_skipped_input_is_skipped_too() -> None:
    fan: ScriptedStage[Any, Any] = ScriptedStage(1)
    d = PipelineDefinition(
        "p",
        [
            sd("a", ScriptedStage([1, 2]), condition=lambda ctx: False),
            sd("f", fan, "a", pattern=ExecutionPattern.FAN_OUT),
        ],
    )
    result = await run(d)
    assert result.success is True
    assert result.get_result("f").metadata["skip_reason"] == "input stage 'a' was skipped"
    assert fan.call_count == 0


@on_both_backends
async def test_an_input_listed_twice_releases_its_stage_once() -> None:
    b: ScriptedStage[Any, Any] = ScriptedStage("ok")
    d = PipelineDefinition("p", [sd("a", ScriptedStage(7)), sd("b", b, "a", "a")])
    result = await run(d)
    assert result.outputs == {"a": 7, "b": "ok"}
    assert b.inputs == [{"a": 7}]


# -- inputs and records ------------------------------------------------------------------------------
@on_both_backends
async def test_each_stage_gets_its_inputs_in_declared_order() -> None:
    entry: ScriptedStage[Any, Any] = ScriptedStage("x")
    join: ScriptedStage[Any, Any] = ScriptedStage("j")
    d = PipelineDefinition(
        "p",
        [
            sd("e", entry),
            sd("one", ScriptedStage(1)),
            sd("two", ScriptedStage(2), "e"),
            sd("join", join, "two", "one"),
        ],
    )
    await run(d, initial="seed")
    assert entry.inputs == ["seed"]
    assert join.inputs == [{"two": 2, "one": 1}]
    assert list(join.inputs[0]) == ["two", "one"]


@on_both_backends
async def test_records_time_each_stage_from_the_run_start() -> None:
    clock = FakeClock(start=100.0)
    d = PipelineDefinition(
        "p",
        [
            sd("a", ScriptedStage(Delay(1.0, then=1), clock=clock)),
            sd("b", ScriptedStage(Delay(2.0, then=2), clock=clock), "a"),
        ],
    )
    result = await run(d, clock)
    b = result.stage_runs["b"]
    assert (b.started_ms, b.finished_ms, b.duration_ms, b.queue_wait_ms) == (
        1000.0,
        3000.0,
        2000.0,
        0.0,
    )
    assert b.attempts == 1
    assert [(a.attempt, a.started_ms, a.duration_ms) for a in b.attempt_runs] == [
        (1, 1000.0, 2000.0)
    ]
    assert result.total_duration_ms == 3000.0
    assert list(result.stage_runs) == ["a", "b"]


# -- waves vs eager ----------------------------------------------------------------------------------
def _staggered(clock: FakeClock) -> PipelineDefinition:
    """`slow` (3 s) and `fast` (1 s) in wave 0; `next` (1 s) after `fast` only."""
    return PipelineDefinition(
        "p",
        [
            sd("slow", ScriptedStage(Delay(3.0, then="s"), clock=clock)),
            sd("fast", ScriptedStage(Delay(1.0, then="f"), clock=clock)),
            sd("next", ScriptedStage(Delay(1.0, then="n"), clock=clock), "fast"),
        ],
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("scheduling", "started_ms", "queue_wait_ms", "total_ms"),
    [("waves", 3000.0, 2000.0, 4000.0), ("eager", 1000.0, 0.0, 3000.0)],
)
def test_waves_hold_a_released_stage_until_its_wave_eager_starts_it_at_once(
    backend: Backend,
    scheduling: Scheduling,
    started_ms: float,
    queue_wait_ms: float,
    total_ms: float,
) -> None:
    async def main() -> PipelineResult:
        clock = FakeClock()
        return await run(_staggered(clock), clock, scheduling=scheduling)

    result = anyio.run(main, backend=backend)
    record = result.stage_runs["next"]
    assert (record.started_ms, record.queue_wait_ms) == (started_ms, queue_wait_ms)
    assert result.total_duration_ms == total_ms
    assert result.outputs == {"slow": "s", "fast": "f", "next": "n"}
    assert result.scheduling == scheduling


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduling", ["waves", "eager"])
def test_wave_events_only_under_waves(backend: Backend, scheduling: Scheduling) -> None:
    async def main() -> list[PipelineEvent]:
        clock, events = FakeClock(), Events()
        await run(_staggered(clock), clock, scheduling=scheduling, observers=(events,))
        return events.events

    events = anyio.run(main, backend=backend)
    waves = [(e.wave, e.stage_ids) for e in events if e.kind == "wave_started"]
    expected = [(0, ("slow", "fast")), (1, ("next",))] if scheduling == "waves" else []
    assert waves == expected


async def _idle_worker(run: RunState) -> None:
    """A worker that takes nothing: the test plays the workers' part itself."""


def _by_hand(d: PipelineDefinition, tg: TaskGroup, clock: FakeClock, **kw: Any) -> RunState:
    kw.setdefault("eager", False)
    kw.setdefault("env", make_env(clock))
    return RunState(
        definition=d,
        plan=d.plan,
        context=PipelineContext(),
        initial_input=None,
        started=clock.now(),
        tg=tg,
        task=_idle_worker,
        **kw,
    )


def _done(run: RunState, sid: str, output: Any = None) -> None:
    """What a worker does with a launched stage that returns `output`."""
    if sid in run.queue:
        run.queue.remove(sid)
    run.in_flight.discard(sid)
    result = StageResult.success(output, stage_name=sid)
    run.finish(sid, Outcome(result), run.clock.now(), run.clock.now())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eager", [False, True])
def test_release_by_hand_waves_wait_for_the_wave_eager_does_not(
    backend: Backend, eager: bool
) -> None:
    async def main() -> None:
        clock, log = FakeClock(), EventLog()
        d = PipelineDefinition(
            "p",
            [
                sd("slow", ScriptedStage()),
                sd("fast", ScriptedStage()),
                sd("next", ScriptedStage(), "fast"),
            ],
        )
        async with anyio.create_task_group() as tg:
            state = _by_hand(d, tg, clock, eager=eager, env=make_env(clock, log))
            state.launch_ready()
            assert state.in_flight == {"slow", "fast"}
            _done(state, "fast", 1)
            state.launch_ready()
            assert ("next" in state.in_flight) is eager
            assert log.named("wave_started") == []
            _done(state, "slow", 2)
            state.launch_ready()
            assert "next" in state.in_flight
            assert log.named("wave_started") == ([] if eager else [(1,)])
            _done(state, "next", 3)
        assert state.outputs == {"fast": 1, "slow": 2, "next": 3}
        assert state.in_flight == set()

    anyio.run(main, backend=backend)


# -- losing a task, and timeouts that cut nothing short --------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fail_fast", [True, False])
def test_fail_lost_fails_a_stage_whose_task_vanished_and_stops_the_run(
    backend: Backend, fail_fast: bool
) -> None:
    async def main() -> PipelineResult:
        clock = FakeClock()
        d = PipelineDefinition(
            "p", [sd("a", ScriptedStage()), sd("b", ScriptedStage(), "a")], fail_fast=fail_fast
        )
        async with anyio.create_task_group() as tg:
            state = _by_hand(d, tg, clock)
            state.launch_ready()
            assert state.take() == "a"  # a worker took "a", then vanished without a result
        state.fail_lost()
        assert state.in_flight == set()
        state.launch_ready()  # the run is stopped: nothing new starts
        assert "b" not in state.in_flight
        state.settle_unfinished()
        return state.build("waves")

    result = anyio.run(main, backend=backend)
    assert result.success is False
    assert result.failed_stages == ["a"]
    assert result.get_result("a").error == (
        "stage 'a': its task was cancelled by something outside the run"
    )
    assert result.get_result("b").error == f"[CANCELLED] {NOT_STARTED}"
    if not fail_fast:
        reason = "stage task(s) ['a'] cancelled from outside the run"
        assert result.metadata["cancellation"] == {"reason": reason}
        assert result.error == f"cancelled: {reason}"


@on_both_backends
async def test_fail_lost_leaves_a_run_alone_when_no_task_was_lost() -> None:
    clock = FakeClock()
    d = PipelineDefinition("p", [sd("a", ScriptedStage())])
    async with anyio.create_task_group() as tg:
        state = _by_hand(d, tg, clock)
        state.launch_ready()
        _done(state, "a", 1)
    state.fail_lost()
    result = state.build("waves")
    assert (result.success, result.error, result.outputs) == (True, None, {"a": 1})


@on_both_backends
async def test_a_timeout_that_cut_nothing_short_is_not_reported() -> None:
    """The deadline fired as the last stage returned: every stage finished, so the run succeeds."""
    clock = FakeClock()
    d = PipelineDefinition("p", [sd("a", ScriptedStage())])
    async with anyio.create_task_group() as tg:
        state = _by_hand(d, tg, clock)
        state.launch_ready()
        _done(state, "a", 1)
        state.stop("timeout", "Timeout: pipeline exceeded timeout_ms=10")
    state.settle_unfinished()
    result = state.build("waves")
    assert (result.success, result.error) == (True, None)
    assert "cancellation" not in result.metadata


@on_both_backends
async def test_a_timeout_that_cut_a_stage_short_is_reported() -> None:
    clock = FakeClock()
    d = PipelineDefinition("p", [sd("a", ScriptedStage()), sd("b", ScriptedStage(), "a")])
    async with anyio.create_task_group() as tg:
        state = _by_hand(d, tg, clock)
        state.launch_ready()
        _done(state, "a", 1)
        state.stop("timeout", "Timeout: pipeline exceeded timeout_ms=10")
    state.settle_unfinished()
    result = state.build("waves")
    assert (result.success, result.error) == (False, "Timeout: pipeline exceeded timeout_ms=10")
    assert result.cancelled_stages == ["b"]


@on_both_backends
async def test_a_pipeline_timeout_through_the_executor() -> None:
    """A run cut short by `timeout_ms` fails with "Timeout"; one that fits succeeds."""
    clock = FakeClock()
    d = PipelineDefinition("p", [sd("a", ScriptedStage(Delay(2.0, then=1), clock=clock))])
    cut = await run(d, clock, timeout_ms=1000)
    assert cut.success is False
    assert cut.error is not None
    assert "Timeout" in cut.error
    assert cut.cancelled_stages == ["a"]
    fits = await run(
        PipelineDefinition("p", [sd("a", ScriptedStage(Delay(2.0, then=1), clock=clock))]),
        clock,
        timeout_ms=3000,
    )
    assert (fits.success, fits.error, fits.outputs) == (True, None, {"a": 1})


@on_both_backends
async def test_build_reports_the_plan_and_statuses_in_plan_order() -> None:
    d = PipelineDefinition(
        "p",
        [
            sd("late", ScriptedStage(1), "first"),
            sd("first", ScriptedStage(Fail("no")), critical=False),
            sd("skip", ScriptedStage(1), condition=lambda ctx: False),
        ],
    )
    result = await run(d)
    assert result.plan == d.plan
    assert list(result.stage_results) == ["first", "skip", "late"]
    assert (result.failed_stages, result.skipped_stages) == (["first"], ["skip"])
    assert result.run_id is None  # unobserved runs have no run id


_tag: contextvars.ContextVar[str | None] = contextvars.ContextVar("_tag", default=None)


@on_both_backends
async def test_a_context_variable_a_stage_sets_never_reaches_other_stages() -> None:
    """Stages share worker tasks; each still runs in its own copy of the context."""
    seen: dict[str, str | None] = {}

    def tagging(name: str) -> FunctionStage[Any, str]:
        async def body(x: Any, ctx: PipelineContext[Any]) -> str:
            seen[name] = _tag.get()
            _tag.set(f"{name} was here")
            return name

        return FunctionStage(body, name=name)

    stages = [StageDefinition("a", tagging("a"))]
    stages += [StageDefinition(s, tagging(s), inputs=["a"]) for s in ("x", "y", "z")]
    stages += [StageDefinition("after", tagging("after"), inputs=["x"])]
    with anyio.fail_after(5):
        result = await PipelineExecutor().execute(PipelineDefinition("tags", stages))
    assert result.success
    assert seen == dict.fromkeys(["a", "x", "y", "z", "after"])
    assert _tag.get() is None

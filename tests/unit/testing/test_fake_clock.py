"""`FakeClock` driving the executor's retry waits and timeouts, and entering it: nested,
concurrent, manual (`advance` only) and `busy()`."""

from __future__ import annotations

import threading
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
    PipelineResult,
    RetryConfig,
    StageDefinition,
)
from pipeline.testing import Block, Delay, Fail, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends


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


# -- overlapping virtual time: sleeps register wake-ups, time jumps when every task waits -------


def _parallel(
    clock: FakeClock, sleeps: dict[str, float], timeouts: dict[str, int] | None = None
) -> PipelineDefinition:
    """Independent stages, each sleeping its number of seconds on `clock`."""
    timeouts = timeouts or {}
    return PipelineDefinition(
        "parallel",
        [
            StageDefinition(
                sid, ScriptedStage(Delay(s, then=sid), clock=clock), timeout_ms=timeouts.get(sid)
            )
            for sid, s in sleeps.items()
        ],
    )


def _timings(result: PipelineResult) -> dict[str, tuple[float | None, float | None]]:
    return {sid: (run.started_ms, run.finished_ms) for sid, run in result.stage_runs.items()}


async def test_parallel_sleeps_overlap_so_the_makespan_is_the_longest(
    fake_clock: FakeClock,
) -> None:
    sleeps = {"a": 1.0, "b": 3.0, "c": 2.0, "d": 0.5}
    with anyio.fail_after(5):
        result = await PipelineExecutor(clock=fake_clock).execute(_parallel(fake_clock, sleeps))
    assert result.success
    assert fake_clock.now() == 3.0
    assert result.total_duration_ms == 3000
    assert sorted(fake_clock.sleeps) == sorted(sleeps.values())
    assert {sid: run.duration_ms for sid, run in result.stage_runs.items()} == {
        sid: s * 1000 for sid, s in sleeps.items()
    }


@pytest.mark.parametrize("late_first", [False, True])
async def test_parallel_sleeps_do_not_push_a_sibling_past_its_timeout(late_first: bool) -> None:
    """Four 1 s sleeps beside a 1.2 s one under a 1.5 s timeout: 1.2 s in all, no timeout."""
    clock = FakeClock()
    sleeps = {f"s{i}": 1.0 for i in range(4)}
    sleeps = {"late": 1.2, **sleeps} if late_first else {**sleeps, "late": 1.2}
    definition = _parallel(clock, sleeps, timeouts={"late": 1500})
    with anyio.fail_after(5):
        result = await PipelineExecutor(clock=clock).execute(definition)
    assert result.success, result.error
    assert result.outputs["late"] == "late"
    assert clock.now() == pytest.approx(1.2)
    assert result.total_duration_ms == pytest.approx(1200)


async def test_same_pipeline_gives_the_same_virtual_timings_every_run() -> None:
    async def one_run() -> dict[str, tuple[float | None, float | None]]:
        clock = FakeClock()
        stages = [
            StageDefinition("a", ScriptedStage(Delay(1, then=1), clock=clock)),
            StageDefinition("b", ScriptedStage(Delay(2, then=2), clock=clock)),
            StageDefinition("c", ScriptedStage(Delay(0.5, then=3), clock=clock), inputs=["a"]),
            StageDefinition(
                "d", ScriptedStage(Delay(0.25, then=4), clock=clock), inputs=["b", "c"]
            ),
        ]
        executor = PipelineExecutor(clock=clock, scheduling="eager")
        result = await executor.execute(PipelineDefinition("p", stages))
        assert result.success
        return _timings(result)

    with anyio.fail_after(5):
        first = await one_run()
        for _ in range(5):
            assert await one_run() == first
    expected = {
        "a": (0.0, 1000.0),
        "b": (0.0, 2000.0),
        "c": (1000.0, 1500.0),
        "d": (2000.0, 2250.0),
    }
    assert first == expected  # c after a, d after b: sleeps overlap, none adds up


async def test_a_stage_blocked_on_an_event_times_out_without_advance(
    fake_clock: FakeClock,
) -> None:
    never = anyio.Event()
    blocked = ScriptedStage(Block(until=never))
    definition = PipelineDefinition("p", [StageDefinition("blocked", blocked, timeout_ms=2500)])
    with anyio.fail_after(5):  # nothing sleeps: the clock jumps to the deadline once all wait
        result = await PipelineExecutor(clock=fake_clock).execute(definition)
    assert result.get_result("blocked").error == "Timeout: stage 'blocked' exceeded timeout_ms=2500"
    assert fake_clock.now() == 2.5
    assert fake_clock.sleeps == []


async def test_a_pipeline_timeout_fires_while_a_stage_waits_on_an_event(
    fake_clock: FakeClock,
) -> None:
    executor = PipelineExecutor(clock=fake_clock, timeout_ms=800)
    definition = PipelineDefinition("p", [StageDefinition("blocked", ScriptedStage(Block()))])
    with anyio.fail_after(5):
        result = await executor.execute(definition)
    assert result.error == "Timeout: pipeline 'p' exceeded timeout_ms=800"
    assert fake_clock.now() == 0.8


async def test_parallel_retries_record_every_backoff_and_overlap(fake_clock: FakeClock) -> None:
    retry = RetryConfig(max_attempts=3, initial_delay_ms=1000, backoff_multiplier=2)
    definition = PipelineDefinition(
        "p",
        [
            StageDefinition(
                "x", ScriptedStage(Fail("busy"), Fail("busy"), "x"), retry_config=retry
            ),
            StageDefinition("y", ScriptedStage(Fail("busy"), "y"), retry_config=retry),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor(clock=fake_clock).execute(definition)
    assert result.outputs == {"x": "x", "y": "y"}
    assert sorted(fake_clock.sleeps) == [1.0, 1.0, 2.0]  # x: 1 s then 2 s; y: 1 s, alongside
    assert fake_clock.now() == 3.0
    assert [a.backoff_ms for a in result.stage_runs["x"].attempt_runs] == [0.0, 1000.0, 2000.0]


async def test_a_sleep_longer_than_its_timeout_ends_at_the_deadline(fake_clock: FakeClock) -> None:
    slow = ScriptedStage(Delay(30, then="late"), clock=fake_clock)
    definition = PipelineDefinition("p", [StageDefinition("slow", slow, timeout_ms=500)])
    with anyio.fail_after(5):
        result = await PipelineExecutor(clock=fake_clock).execute(definition)
    assert result.failed_stages == ["slow"]
    assert fake_clock.now() == 0.5  # not 30: the cancelled sleep's wake-up is dropped
    assert fake_clock._pending() == 0


async def test_exited_deadline_scopes_leave_the_timer_heap(fake_clock: FakeClock) -> None:
    async def with_timeout() -> bool:
        with fake_clock.deadline_scope(10) as scope:
            await anyio.lowlevel.checkpoint()
        return scope.cancel_called

    async with fake_clock:
        for _ in range(1000):
            assert not await with_timeout()
        # A plain CancelScope tells no one it was left: its deadline goes once it is garbage,
        # as soon as the function that used it returned.
        assert fake_clock._pending() == 0
        assert len(fake_clock._heap) <= 65  # dropped entries are swept out, not kept
        with fake_clock.deadline_scope(10) as kept:
            await anyio.lowlevel.checkpoint()
        assert fake_clock._pending() == 1  # still referenced, so still pending
        await fake_clock.sleep(20)
        assert fake_clock.now() == 20
    assert kept.cancel_called  # cancelled at 10 when its time came, with no one inside: harmless
    assert not kept.cancelled_caught
    assert fake_clock._pending() == 0


async def test_a_deadline_counts_from_its_call_even_before_the_scope_is_entered(
    fake_clock: FakeClock,
) -> None:
    cancelled: list[bool] = []
    async with fake_clock:
        not_entered = fake_clock.deadline_scope(5)
        await fake_clock.sleep(3)
        cancelled.append(not_entered.cancel_called)
        await fake_clock.sleep(17)
        cancelled.append(not_entered.cancel_called)  # its time came while it waited
        assert fake_clock.now() == 20
        with not_entered:  # entered past its deadline: cancelled at once
            await anyio.lowlevel.checkpoint()
    assert cancelled == [False, True]
    assert not_entered.cancelled_caught
    assert fake_clock._pending() == 0


async def test_fan_out_with_timeouts_leaves_no_timers(fake_clock: FakeClock) -> None:
    async def item(x: int, ctx: PipelineContext[Any]) -> int:
        await fake_clock.sleep(x / 100)
        return x

    definition = PipelineDefinition(
        "p",
        [
            StageDefinition(
                "fan",
                FunctionStage(item),
                pattern=ExecutionPattern.FAN_OUT,
                max_concurrent_fan_out=None,
                timeout_ms=5000,
            )
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor(clock=fake_clock).execute(definition, list(range(200)))
    assert result.outputs["fan"] == list(range(200))
    assert fake_clock.now() == pytest.approx(1.99)  # the items sleep side by side
    assert fake_clock._pending() == 0
    assert fake_clock._heap == []  # swept when the run left the clock


async def test_advance_wakes_sleepers_in_order(fake_clock: FakeClock) -> None:
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await fake_clock.sleep(seconds)
        woke.append((name, fake_clock.now()))

    with anyio.fail_after(5):
        async with fake_clock, anyio.create_task_group() as tg:
            tg.start_soon(nap, "late", 3.0)
            tg.start_soon(nap, "early", 1.0)
            await anyio.lowlevel.checkpoint()  # both registered their wake-ups
            await fake_clock.advance(2.0)
            await anyio.lowlevel.checkpoint()
            assert woke == [("early", 2.0)]  # like a jump: a woken sleeper sees the new time
            assert fake_clock.now() == 2.0
    assert woke == [("early", 2.0), ("late", 3.0)]  # the last one by autojump


async def test_a_sync_stage_in_a_thread_is_waited_for_not_timed_out(fake_clock: FakeClock) -> None:
    """A running worker thread keeps the clock from jumping, so its real time is not virtual."""

    def work(x: int, ctx: PipelineContext[Any]) -> int:
        threading.Event().wait(0.02)  # 20 ms of real work in the worker thread
        return x + 1

    definition = PipelineDefinition(
        "p",
        [
            StageDefinition("sync", FunctionStage(work), timeout_ms=1000),
            StageDefinition("sleepy", ScriptedStage(Delay(5, then="z"), clock=fake_clock)),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor(clock=fake_clock).execute(definition, 1)
    assert result.outputs == {"sync": 2, "sleepy": "z"}
    assert result.stage_runs["sync"].finished_ms == 0.0  # the thread ran before time moved
    assert fake_clock.now() == 5


def test_overlap_and_event_timeouts_on_trio() -> None:
    async def main() -> tuple[float, str | None, float, list[float]]:
        clock = FakeClock()
        sleeps = {"late": 1.2, **{f"s{i}": 1.0 for i in range(4)}}
        definition = _parallel(clock, sleeps, timeouts={"late": 1500})
        parallel = await PipelineExecutor(clock=clock).execute(definition)
        assert parallel.success, parallel.error
        makespan = clock.now()

        clock = FakeClock()
        blocked = PipelineDefinition(
            "b", [StageDefinition("b", ScriptedStage(Block()), timeout_ms=700)]
        )
        timed_out = await PipelineExecutor(clock=clock).execute(blocked)

        retry_clock = FakeClock()
        retry = RetryConfig(max_attempts=3, initial_delay_ms=250)
        flaky = ScriptedStage(Fail("x"), Fail("x"), "ok")
        retried = PipelineDefinition("r", [StageDefinition("f", flaky, retry_config=retry)])
        await PipelineExecutor(clock=retry_clock).execute(retried)
        return makespan, timed_out.get_result("b").error, clock.now(), retry_clock.sleeps

    makespan, error, blocked_at, sleeps = anyio.run(main, backend="trio")
    assert makespan == pytest.approx(1.2)
    assert error == "Timeout: stage 'b' exceeded timeout_ms=700"
    assert blocked_at == 0.7
    assert sleeps == [0.25, 0.5]


# -- entering the clock: `async with clock:` runs the autojump -----------------------------------


@on_both_backends
async def test_entries_nest_and_the_last_exit_stops_the_clock() -> None:
    clock = FakeClock()
    stage = ScriptedStage(Delay(1, then="x"), clock=clock)
    definition = PipelineDefinition("p", [StageDefinition("s", stage, timeout_ms=5000)])
    with anyio.fail_after(5):
        async with clock:
            async with clock:
                await clock.sleep(1)
            result = await PipelineExecutor(clock=clock).execute(definition)  # enters it again
            await clock.sleep(1)  # the outer entry still drives time after both inner exits
    assert result.outputs == {"s": "x"}
    assert result.total_duration_ms == 1000
    assert clock.now() == 3.0
    with pytest.raises(RuntimeError, match="the clock is not running"):
        await clock.sleep(1)  # the last exit stopped it


@on_both_backends
async def test_concurrent_runs_share_a_clock_after_the_first_to_enter_has_left() -> None:
    """Run `a` enters first (its entry runs the driver) and leaves at 1 s; autojump goes on for
    run `b`, still inside: its sleep ends at 3 s and its blocked stage times out at 2 s."""
    clock = FakeClock()
    a_inside = anyio.Event()

    async def a_stage(x: Any, ctx: PipelineContext[Any]) -> str:
        a_inside.set()
        await clock.sleep(1)
        return "a"

    run_a = PipelineDefinition("a", [StageDefinition("a", FunctionStage(a_stage))])
    run_b = PipelineDefinition(
        "b",
        [
            StageDefinition("slow", ScriptedStage(Delay(3, then="b"), clock=clock)),
            StageDefinition("stuck", ScriptedStage(Block()), timeout_ms=2000, critical=False),
        ],
    )
    done: list[tuple[str, float, PipelineResult]] = []

    async def run(definition: PipelineDefinition) -> None:
        result = await PipelineExecutor(clock=clock).execute(definition)
        done.append((definition.name, clock.now(), result))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, run_a)
            await a_inside.wait()  # `a` has entered the clock
            tg.start_soon(run, run_b)
    assert [(name, at) for name, at, _ in done] == [("a", 1.0), ("b", 3.0)]
    result_b = done[1][2]
    assert result_b.outputs == {"slow": "b"}
    assert result_b.stage_results["stuck"].error == (
        "Timeout: stage 'stuck' exceeded timeout_ms=2000"
    )
    assert result_b.stage_runs["stuck"].finished_ms == 2000
    assert clock._driver is None  # the last exit stopped the driver


@on_both_backends
async def test_outside_async_with_only_advance_moves_time() -> None:
    clock = FakeClock()  # never entered: no autojump, deadlines fire by `advance`
    seen: list[float] = []
    with anyio.fail_after(5):
        with clock.deadline_scope(2) as scope:
            await clock.advance(1.5)
            seen.append(clock.now())
            await anyio.lowlevel.checkpoint()  # nothing moves time by itself
            seen.append(clock.now())
            await clock.advance(0.5)  # reaches the deadline: cancelled at its checkpoint
            seen.append(-1.0)
    assert scope.cancelled_caught
    assert seen == [1.5, 1.5]
    assert clock.now() == 2.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mark", ["with", "async with", "none"])
def test_busy_holds_virtual_time_while_outside_work_runs(mark: str, backend: Backend) -> None:
    """A thread on a limiter of its own is invisible to the clock: only `busy()` holds time."""

    async def scenario() -> tuple[list[bool], bool, float]:
        clock = FakeClock()
        own = anyio.CapacityLimiter(1)  # not anyio's default limiter, which the clock watches
        seen: list[bool] = []

        def work(real_s: float) -> None:
            # Real work until virtual time moves (it must not, under busy()) or `real_s` pass.
            moved = threading.Event()
            for _ in range(int(real_s / 0.005)):
                if clock.now() > 0:
                    moved.set()
                    break
                moved.wait(0.005)
            seen.append(moved.is_set())

        with anyio.fail_after(10):
            async with clock:
                with clock.deadline_scope(1) as scope:
                    if mark == "with":
                        with clock.busy():
                            await anyio.to_thread.run_sync(work, 0.1, limiter=own)
                    elif mark == "async with":
                        async with clock.busy():
                            await anyio.to_thread.run_sync(work, 0.1, limiter=own)
                    else:
                        await anyio.to_thread.run_sync(work, 5.0, limiter=own)
        return seen, scope.cancel_called, clock.now()

    seen, cancelled, now = anyio.run(scenario, backend=backend)
    if mark == "none":  # the clock saw everything wait and jumped to the deadline meanwhile
        assert (seen, cancelled, now) == ([True], True, 1.0)
    else:
        assert (seen, cancelled, now) == ([False], False, 0.0)

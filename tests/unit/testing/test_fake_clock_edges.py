"""`FakeClock` at the edges: NaN, infinity, negative and sub-resolution durations, overflow; and
misuse: a clock not entered, another thread or task, a failing driver.

Each scenario runs on asyncio and trio inside `anyio.fail_after` (real seconds), so a clock that
spins or hangs again fails the test instead of holding the run until pytest-timeout.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
)
from pipeline.testing import Delay, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_REAL_TIMEOUT_S = 5
"""Real seconds any scenario may take; each needs milliseconds unless the clock spins."""

_T = 1.15
"""A start time where 1e-16 s is below half a float step: `1.15 + 1e-16 == 1.15`."""

_AFTER_T = math.nextafter(_T, math.inf)


def guarded(scenario: Callable[[], Awaitable[None]]) -> Callable[[str], None]:
    """`on_both_backends`, with the scenario bounded by `_REAL_TIMEOUT_S` real seconds."""

    @functools.wraps(scenario)
    async def bounded() -> None:
        with anyio.fail_after(_REAL_TIMEOUT_S):
            await scenario()

    return on_both_backends(bounded)


async def _until_parked(clock: FakeClock) -> None:
    """Wait (real time) until the autojump driver waits for a wake-up: nothing is pending."""
    while clock._parked is None:  # noqa: ASYNC110  # the driver sets no event to await
        await anyio.sleep(0.001)


class _TokenBucket:
    """The user's rate limiter from the bug report: one token per `1 / rate` s, burst of 1."""

    def __init__(self, clock: FakeClock, rate: float) -> None:
        self.clock = clock
        self.rate = rate
        self.tokens = 1.0
        self.last = clock.now()

    async def acquire(self) -> None:
        while True:
            now = self.clock.now()
            self.tokens = min(1.0, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            await self.clock.sleep((1.0 - self.tokens) / self.rate)


# -- NaN is rejected -----------------------------------------------------------------------------


@guarded
async def test_sleep_nan_raises_naming_the_clock_duration_time_and_fix() -> None:
    clock = FakeClock(start=1.5)
    with pytest.raises(ValueError, match="NaN") as caught:
        await clock.sleep(math.nan)
    message = str(caught.value)
    assert "FakeClock.sleep(nan)" in message
    assert "now=1.5" in message
    assert "pass a number of seconds" in message
    assert clock.sleeps == []  # a rejected duration is not recorded
    assert clock._pending() == 0  # and never reaches the timer heap
    async with clock:
        await clock.sleep(1)  # the clock still works
    assert clock.now() == 2.5


@guarded
async def test_deadline_scope_and_advance_reject_nan() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match=r"FakeClock\.deadline_scope\(nan\) at now=0\.0"):
        clock.deadline_scope(math.nan)
    with pytest.raises(ValueError, match=r"FakeClock\.advance\(nan\) at now=0\.0"):
        await clock.advance(math.nan)
    assert clock.now() == 0.0
    assert clock._pending() == 0


@pytest.mark.parametrize("start", [math.nan, math.inf, -math.inf])
def test_a_non_finite_start_is_rejected(start: float) -> None:
    with pytest.raises(ValueError, match=r"FakeClock\(start=.*\): the start time must be a finite"):
        FakeClock(start=start)


@guarded
async def test_a_stage_sleeping_nan_fails_instead_of_spinning() -> None:
    clock = FakeClock()

    async def wait_nan(x: Any, ctx: PipelineContext[Any]) -> int:
        await clock.sleep(x * math.inf)  # 0 * inf: a NaN from the stage's own arithmetic
        return 1

    definition = PipelineDefinition("p", [StageDefinition("waits", FunctionStage(wait_nan))])
    result = await PipelineExecutor(clock=clock).execute(definition, 0)
    assert result.failed_stages == ["waits"]
    error = result.stage_results["waits"].error or ""
    assert error.startswith("ValueError: FakeClock.sleep(nan) at now=0.0")


# -- +inf means forever --------------------------------------------------------------------------


@guarded
async def test_sleep_inf_waits_until_its_deadline_cancels_it() -> None:
    clock = FakeClock()
    async with clock:
        with clock.deadline_scope(5) as scope:
            await clock.sleep(math.inf)
    assert scope.cancelled_caught
    assert clock.now() == 5.0
    assert clock.sleeps == [math.inf]
    assert clock._pending() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["sleep", "deadline_scope"])
def test_an_infinite_wait_never_moves_time(kind: str, backend: Backend) -> None:
    """Nothing but an infinite wait is pending: the clock stays put instead of jumping to inf."""

    async def scenario() -> None:
        clock = FakeClock()
        waiting = anyio.Event()
        outcome: list[str] = []

        async def forever() -> None:
            waiting.set()
            if kind == "sleep":
                await clock.sleep(math.inf)
            else:
                with clock.deadline_scope(math.inf):
                    await anyio.sleep_forever()
                outcome.append("deadline fired")

        with anyio.fail_after(_REAL_TIMEOUT_S):
            async with clock, anyio.create_task_group() as tg:
                tg.start_soon(forever)
                await waiting.wait()
                await clock.sleep(1)  # a finite wake-up to jump to while `forever` waits
                await _until_parked(clock)  # idle, and nothing left to jump to
                assert clock.now() == 1.0
                assert outcome == []
                tg.cancel_scope.cancel()  # "forever" ends when cancelled
        assert clock.now() == 1.0
        assert clock._pending() == 0

    anyio.run(scenario, backend=backend)


@guarded
async def test_an_infinite_deadline_scope_lets_its_body_finish() -> None:
    clock = FakeClock()
    async with clock:
        with clock.deadline_scope(math.inf) as scope:
            await clock.sleep(3)
    assert not scope.cancel_called
    assert clock.now() == 3.0
    assert clock._pending() == 0


@guarded
async def test_a_stage_sleeping_forever_times_out_with_finite_durations() -> None:
    clock = FakeClock()
    forever = ScriptedStage(Delay(math.inf, then="never"), clock=clock)
    quick = ScriptedStage(Delay(0.5, then="quick"), clock=clock)
    definition = PipelineDefinition(
        "p",
        [StageDefinition("forever", forever, timeout_ms=1500), StageDefinition("quick", quick)],
    )
    result = await PipelineExecutor(clock=clock).execute(definition)
    assert result.outputs == {"quick": "quick"}
    assert result.stage_results["forever"].error == (
        "Timeout: stage 'forever' exceeded timeout_ms=1500"
    )
    assert result.total_duration_ms == 1500
    assert result.stage_runs["forever"].duration_ms == 1500
    assert "forever" in result.summary()  # finite durations: the report renders
    assert sorted(clock.sleeps) == [0.5, math.inf]  # the stages start in either order


# -- negative durations: a checkpoint, as before -------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seconds", [0.0, -1.0, -math.inf])
def test_a_non_positive_sleep_is_a_recorded_checkpoint(seconds: float, backend: Backend) -> None:
    async def scenario() -> None:
        clock = FakeClock(start=2.0)  # not entered: a sleep that waits for no time needs no driver
        with anyio.fail_after(_REAL_TIMEOUT_S):
            await clock.sleep(seconds)  # returns at once (no wake-up to wait for)
            with anyio.CancelScope() as cancelled:
                cancelled.cancel()
                await clock.sleep(seconds)
        assert cancelled.cancelled_caught  # a checkpoint: it honours a pending cancel
        assert clock.now() == 2.0
        assert clock.sleeps == [seconds, seconds]
        assert clock._pending() == 0

    anyio.run(scenario, backend=backend)


@guarded
async def test_a_non_positive_deadline_cancels_at_once() -> None:
    clock = FakeClock()
    for seconds in (0.0, -1.0, -math.inf):
        with clock.deadline_scope(seconds) as scope:
            await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught, seconds
    assert clock.now() == 0.0


# -- sub-resolution durations move time by one float step ----------------------------------------


@guarded
async def test_a_sleep_below_float_resolution_moves_time_one_step() -> None:
    clock = FakeClock(start=_T)
    assert _T + 1e-16 == _T  # the premise: the sum rounds back to now
    async with clock:
        await clock.sleep(1e-16)
    assert clock.now() == _AFTER_T  # forward, by the smallest step there is
    assert clock.sleeps == [1e-16]
    assert clock._pending() == 0


@guarded
async def test_a_token_bucket_with_sub_resolution_waits_finishes() -> None:
    """The reported rate limiter: at t=1.48 it computed a 7.4e-17 s wait and spun forever."""
    clock = FakeClock(start=_T)
    bucket = _TokenBucket(clock, rate=3.0)
    async with clock:
        for _ in range(5):
            await bucket.acquire()
    assert clock.now() == pytest.approx(_T + 4 / 3)
    assert len(clock.sleeps) < 20  # a few float-step top-ups, not a spin
    assert any(0 < s < 1e-15 for s in clock.sleeps)  # the sub-resolution wait did happen


@guarded
async def test_a_deadline_below_float_resolution_fires_one_step_later() -> None:
    clock = FakeClock(start=_T)
    entered: list[float] = []
    async with clock:
        with clock.deadline_scope(1e-16) as scope:
            entered.append(clock.now())
            await anyio.lowlevel.checkpoint()  # not cancelled at once: its time has not come
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert entered == [_T]
    assert clock.now() == _AFTER_T


@guarded
async def test_advance_below_float_resolution_moves_time_and_wakes_the_sleeper() -> None:
    clock = FakeClock(start=_T)
    woke: list[float] = []

    async def nap() -> None:
        await clock.sleep(1e-16)
        woke.append(clock.now())

    async with clock, anyio.create_task_group() as tg:
        tg.start_soon(nap)
        while clock._pending() == 0:  # until the sleeper registered its wake-up
            await anyio.lowlevel.checkpoint()
        await clock.advance(1e-16)
        assert clock.now() == _AFTER_T  # moved by advance itself, not by an autojump
        assert clock._pending() == 0  # and the wake-up fired
    assert woke == [_AFTER_T]


@guarded
async def test_advance_rejects_infinity_and_ignores_negatives() -> None:
    clock = FakeClock(start=3.0)
    with pytest.raises(ValueError, match=r"FakeClock\.advance\(inf\) at now=3\.0: .* finite"):
        await clock.advance(math.inf)
    await clock.advance(-1)
    await clock.advance(-math.inf)
    assert clock.now() == 3.0


# -- time that cannot move forward raises --------------------------------------------------------


@guarded
async def test_a_wake_up_past_the_largest_float_raises_instead_of_hanging() -> None:
    top = sys.float_info.max
    clock = FakeClock(start=top)
    with pytest.raises(OverflowError) as caught:
        await clock.sleep(1)  # top + 1 == top, and the next float is inf
    message = str(caught.value)
    assert message.startswith(f"FakeClock.sleep(1) at now={top!r}: ")
    assert "cannot move forward" in message
    assert "start the FakeClock nearer 0" in message
    with pytest.raises(OverflowError, match=r"FakeClock\.deadline_scope\(1e\+308\)"):
        FakeClock(start=1e308).deadline_scope(1e308)
    with pytest.raises(OverflowError, match=r"FakeClock\.advance\(1e\+308\)"):
        await FakeClock(start=1e308).advance(1e308)
    assert clock.sleeps == []
    assert clock.now() == top
    assert clock._pending() == 0


# -- misuse: not entered, another thread or task, a failing driver -------------------------------


@guarded
async def test_a_sleep_on_a_clock_not_entered_raises_naming_async_with() -> None:
    clock = FakeClock(start=1.0)
    for seconds in (2.0, math.inf):
        with pytest.raises(RuntimeError) as caught:
            await clock.sleep(seconds)
        message = str(caught.value)
        assert message.startswith(f"FakeClock.sleep({seconds!r}) at now=1.0: ")
        assert "the clock is not running" in message
        assert "`async with clock:`" in message  # the fix
    assert clock.sleeps == []  # a refused sleep is not recorded
    assert clock._pending() == 0
    async with clock:
        await clock.sleep(2.0)
    assert clock.now() == 3.0


@guarded
async def test_a_sleep_from_another_threads_loop_raises_instead_of_deadlocking() -> None:
    clock = FakeClock()

    async def enter() -> None:
        async with clock:
            pass

    async with clock:
        with pytest.raises(RuntimeError, match=r"FakeClock\.sleep\(1\.0\) .* another thread"):
            await anyio.to_thread.run_sync(anyio.run, clock.sleep, 1.0)
        with pytest.raises(RuntimeError, match="a second thread or event loop"):
            await anyio.to_thread.run_sync(anyio.run, enter)
        await clock.sleep(1)  # the clock itself is unharmed
    assert clock.sleeps == [1]


@guarded
async def test_leaving_in_another_task_raises_naming_the_fix() -> None:
    clock = FakeClock()
    inside, release = anyio.Event(), anyio.Event()

    async def holder() -> None:
        async with clock:
            inside.set()
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await inside.wait()
        with pytest.raises(RuntimeError, match=r"left in another task .* enter the clock in the"):
            await clock.__aexit__(None, None, None)
        await clock.sleep(1)  # still entered (by `holder`) and running
        release.set()
    assert clock.now() == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_driver_error_is_raised_by_every_entry_and_every_later_call(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> None:
        raise ZeroDivisionError("idle check broke")

    async def scenario() -> list[BaseException]:
        clock = FakeClock()
        errors: list[BaseException] = []

        async def enter(body: Callable[[], Awaitable[None]]) -> None:
            try:
                async with clock:
                    await body()
            except RuntimeError as exc:
                errors.append(exc)

        monkeypatch.setattr(anyio, "wait_all_tasks_blocked", broken)
        with anyio.fail_after(_REAL_TIMEOUT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(enter, functools.partial(clock.sleep, 1))  # runs the driver
                await anyio.lowlevel.checkpoint()
                tg.start_soon(enter, anyio.sleep_forever)  # a second entry: stopped too
        assert len(errors) == 2
        with pytest.raises(RuntimeError, match="autojump driver failed"):
            await clock.sleep(0)
        with pytest.raises(RuntimeError, match="autojump driver failed"):
            await clock.advance(1)
        with pytest.raises(RuntimeError, match="autojump driver failed"):
            clock.deadline_scope(1)
        with pytest.raises(RuntimeError, match="autojump driver failed"):
            async with clock:
                pass
        return errors

    errors = anyio.run(scenario, backend=backend)
    for error in errors:
        assert "FakeClock: its autojump driver failed (ZeroDivisionError: idle check broke)" in (
            str(error)
        )
        assert isinstance(error.__cause__, ZeroDivisionError)  # the original, chained

"""`FakeClock`: virtual time for tests, so retry waits and timeouts never really wait.

The executor only sees the `pipeline.clock.Clock` protocol; this is one implementation.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import threading
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

if TYPE_CHECKING:
    from types import TracebackType

_SPIN_ROUNDS = 20
"""Checkpoints the driver yields before each idle check, so work still in flight (a chain of
awaits a few scheduler rounds long) settles before `anyio.wait_all_tasks_blocked` looks: on
asyncio that check sleeps 0.1 s of real time whenever it finds a runnable task. Measured on the
test suite: with no warm-up 30 of ~230 idle checks paid 0.1 s (+3 s); with 20 rounds, ~1 of ~500."""

_THREAD_POLL_S = 0.001
"""Real seconds between looks at the default thread limiter while a worker thread runs."""

_COMPACT_AT = 32
"""Dead heap entries tolerated before the timer heap is rebuilt from its live entries."""


class _Timer:
    """One pending wake-up: a sleeper's event or a deadline scope, due at `when`."""

    __slots__ = ("event", "live", "scope", "when")

    def __init__(
        self, when: float, event: anyio.Event | None, scope: anyio.CancelScope | None
    ) -> None:
        self.when = when
        self.event = event
        self.scope = scope
        self.live = False
        """In the heap and not yet fired or retired."""

    def fire(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.scope is not None:
            self.scope.cancel()


_scope_types: dict[type[Any], type[Any]] = {}


def _deadline_scope_type(base: type[Any]) -> type[Any]:
    """A subclass of anyio's backend cancel scope telling its clock when it is entered and left.

    Entering arms the deadline and leaving retires it, so only scopes something is inside can
    make the clock jump: a scope never entered (a run that failed validation) or already left
    (a finished stage) is not waited for and leaves nothing in the heap.
    """
    scope_type = _scope_types.get(base)
    if scope_type is None:

        def __enter__(self: Any) -> Any:
            entered = base.__enter__(self)
            clock, timer = self._fake_clock_timer
            clock._arm(timer)
            return entered

        def __exit__(
            self: Any,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> bool:
            try:
                return bool(base.__exit__(self, exc_type, exc, tb))
            finally:
                clock, timer = self._fake_clock_timer
                clock._retire(timer)

        namespace = {
            "__slots__": ("_fake_clock_timer",),
            "__enter__": __enter__,
            "__exit__": __exit__,
        }
        scope_type = type(f"FakeClock{base.__name__}", (base,), namespace)
        _scope_types[base] = scope_type
    return scope_type


@final
class FakeClock:
    """A `Clock` on virtual time that jumps ahead whenever every task is waiting.

    Pass it as `PipelineExecutor(clock=...)`. Semantics, like trio's `MockClock` with autojump:

    - `sleep(s)` records `s` in `sleeps` and registers a wake-up at `now() + s`; the sleeper
      waits until virtual time reaches it. Sleeps in concurrent tasks therefore overlap: four
      parallel stages sleeping 1 s each end at virtual 1 s, not 4 s. `sleep(0)` (or less, down
      to `-inf`) is recorded and is a plain checkpoint (more lenient than `anyio.sleep`, and so
      `SystemClock`, which raise `ValueError` for a negative delay). `sleep(math.inf)` is recorded
      and waits until cancelled (by a deadline, a task group or the caller): it registers no
      wake-up, so virtual time never jumps to infinity. A cancelled sleep drops its wake-up.
    - `deadline_scope(s)` (timeouts) returns a cancel scope cancelled when virtual time reaches
      `now() + s` (at once if `s <= 0`; never if `s` is `math.inf`). The deadline is pending
      only while the scope is entered: a scope not yet entered, or already left, never makes
      the clock jump.
    - Every wake-up and deadline moves time forward: for `s > 0` it is due at `now() + s`, or at
      the next float after `now()` when that sum rounds back to `now()` (`1e-16` s at t=1.15).
      So a loop that sleeps until a target time (a rate limiter's refill) always gets there;
      were time to stay put, it would spin at full CPU. A due time that overflows the largest
      float cannot be reached: `sleep`, `deadline_scope` and `advance` raise `OverflowError`
      naming the duration and `now()`, instead of jumping to infinity or hanging.
    - NaN is rejected with `ValueError` by `sleep`, `deadline_scope` and `advance` (and a
      non-finite `start`), before anything is recorded, so a NaN never enters the timer heap.
    - When the program is idle, virtual time jumps to the earliest pending wake-up or deadline,
      and everything due at that instant fires, in the order it was registered; then the clock
      waits for idle again. A stage blocked forever on an event inside a `timeout_ms` thus
      times out at its deadline with no `advance()`.
    - `advance(s)` moves virtual time forward by `s` at once, firing what falls due on the way
      in order (every woken sleeper sees the new time, as after trio's `MockClock.jump`), then
      yields once. Time never moves otherwise: `now()` is constant while any task runs.

    Idle means, checked in this order by a driver task: it has yielded 20 checkpoint rounds (so
    work still in flight settles); `anyio.wait_all_tasks_blocked()` returned, i.e. every other
    task is blocked (exact on trio; on asyncio anyio looks at each task's pending future and
    sleeps 0.1 s of real time before looking again while any task is runnable); and no anyio
    worker thread on the default limiter is running. While one runs (a sync function stage),
    the driver waits for it from a helper thread, so the thread's real run time never trips a
    virtual timeout, and then checks again. The driver is started on the running loop by a
    short-lived helper thread through `anyio.from_thread.run` (no task group is at hand) when a
    wake-up or deadline is registered; it ends when the loop is idle with nothing pending, or
    when the loop shuts down. Given the same program, the virtual timings are the same on every
    run, on asyncio and on trio.

    Limitations: anything else the loop waits for counts as idle, so virtual time jumps past a
    real `anyio.sleep`, a socket, a subprocess or a thread of your own (give stages under test
    this clock rather than real delays). On asyncio, a test's own `wait_all_tasks_blocked()`
    that looks while the driver is in its warm-up rounds waits 0.1 s more, and two `FakeClock`s
    with work on one loop see each other's driver as busy, costing up to 0.1 s per jump; the
    virtual timings stay exact. A worker thread that waits for something only virtual time can
    bring (a sleep on this clock) deadlocks, as time never moves while it runs. For the same
    reason a loop polling `now()` around `sleep(0)` never sees time move: sleep for the time
    that is left instead. Deadline scopes are instances of a subclass of anyio's backend cancel
    scope (asyncio's or trio's) whose `__enter__` and `__exit__` arm and drop the deadline.
    """

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(
                f"FakeClock(start={start!r}): the start time must be a finite number of "
                "seconds; pass a number such as 0.0"
            )
        self._now = start
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._live = 0
        self._dead = 0
        self._driver: anyio.lowlevel.EventLoopToken | None = None
        self._error: BaseException | None = None
        self.sleeps: list[float] = []
        """Every duration `sleep` accepted, in call order (retry backoff waits, in seconds)."""

    def now(self) -> float:
        """The virtual time in seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Record `seconds`, then wait until virtual time reaches now + `seconds`.

        `seconds <= 0` is a checkpoint and `math.inf` waits until cancelled.

        Raises:
            ValueError: `seconds` is NaN (nothing is recorded).
            OverflowError: now + `seconds` is past the largest float.
        """
        self._check("sleep", seconds)
        if seconds <= 0:
            self.sleeps.append(seconds)
            await anyio.lowlevel.checkpoint()
            return
        if seconds == math.inf:
            self.sleeps.append(seconds)
            await anyio.sleep_forever()  # no wake-up: only a cancellation ends it
            return
        when = self._due("sleep", seconds)
        self.sleeps.append(seconds)
        event = anyio.Event()
        timer = self._register(_Timer(when, event, None))
        try:
            await event.wait()
        finally:
            self._retire(timer)

    def deadline_scope(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope cancelled once virtual time reaches now + `seconds`.

        The deadline counts from this call; it is armed when the scope is entered (at once
        cancelled if it has already passed) and dropped when the scope is left. With
        `seconds <= 0` the scope is cancelled at once; with `math.inf` it never is.

        Raises:
            ValueError: `seconds` is NaN.
            OverflowError: now + `seconds` is past the largest float.
        """
        self._check("deadline_scope", seconds)
        if seconds <= 0 or seconds == math.inf:
            when = self._now + seconds  # -inf..now: cancelled below; +inf: never armed
        else:
            when = self._due("deadline_scope", seconds)
        scope: Any = _deadline_scope_type(type(anyio.CancelScope()))()
        scope._fake_clock_timer = (self, _Timer(when, None, scope))
        if seconds <= 0:
            scope.cancel()
        return scope  # type: ignore[no-any-return]

    async def advance(self, seconds: float) -> None:
        """Move virtual time forward by `seconds`, firing what falls due on the way; yield once.

        `seconds <= 0` only yields; a positive `seconds` moves time by at least one float step.

        Raises:
            ValueError: `seconds` is NaN or infinite (virtual time stays finite).
            OverflowError: now + `seconds` is past the largest float.
        """
        self._check("advance", seconds)
        if seconds == math.inf:
            raise ValueError(
                f"FakeClock.advance({seconds!r}) at now={self._now!r}: virtual time must stay "
                "finite; advance by a finite number of seconds (a sleep of math.inf already "
                "waits until cancelled)"
            )
        if seconds > 0:
            self._fire_until(self._due("advance", seconds))
        await anyio.lowlevel.checkpoint()

    # -- durations -------------------------------------------------------------------------------
    def _check(self, method: str, seconds: float) -> None:
        if math.isnan(seconds):
            raise ValueError(
                f"FakeClock.{method}({seconds!r}) at now={self._now!r}: the duration is NaN; "
                "pass a number of seconds (math.inf to wait until cancelled), and check the "
                "arithmetic that produced it"
            )

    def _due(self, method: str, seconds: float) -> float:
        """The time `seconds > 0` from now: strictly later than now, and finite."""
        when = self._now + seconds
        if when <= self._now:  # below half a float step of `now`: take the next step
            when = math.nextafter(self._now, math.inf)
        if when == math.inf:
            raise OverflowError(
                f"FakeClock.{method}({seconds!r}) at now={self._now!r}: the wake-up time is "
                "past the largest float, so virtual time cannot move forward; start the "
                "FakeClock nearer 0 or use shorter durations (math.inf waits until cancelled)"
            )
        return when

    # -- timers ----------------------------------------------------------------------------------
    def _register(self, timer: _Timer) -> _Timer:
        if self._error is not None:
            raise RuntimeError("the FakeClock driver failed") from self._error
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        timer.live = True
        self._live += 1
        self._start_driver()
        return timer

    def _arm(self, timer: _Timer) -> None:
        """Arm an entered scope's deadline, or cancel the scope if the deadline has passed."""
        if timer.scope is None or timer.scope.cancel_called or timer.when == math.inf:
            timer.live = False
        elif timer.when <= self._now:
            timer.live = False
            timer.scope.cancel()
        else:
            self._register(timer)

    def _retire(self, timer: _Timer) -> None:
        if not timer.live:
            return
        timer.live = False
        self._live -= 1
        self._dead += 1
        if self._dead > _COMPACT_AT and self._dead > self._live:
            self._heap = [entry for entry in self._heap if entry[2].live]
            heapq.heapify(self._heap)
            self._dead = 0

    def _next_due(self) -> float | None:
        heap = self._heap
        while heap and not heap[0][2].live:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def _fire_until(self, when: float) -> None:
        """Fire every live timer due by `when`, earliest first; time ends at `when`."""
        while (due := self._next_due()) is not None and due <= when:
            self._now = max(self._now, due)
            timer = heapq.heappop(self._heap)[2]
            timer.live = False
            self._live -= 1
            timer.fire()
        self._now = max(self._now, when)

    # -- autojump --------------------------------------------------------------------------------
    def _start_driver(self) -> None:
        token = anyio.lowlevel.current_token()
        if self._driver == token:
            return
        self._driver = token
        thread = threading.Thread(
            target=self._inject, args=(token,), name="FakeClock autojump", daemon=True
        )
        thread.start()

    def _inject(self, token: anyio.lowlevel.EventLoopToken) -> None:
        """Helper thread: run `_drive` as a task of the loop; return when it ends."""
        # The driver ends by itself; anything raised here means the loop ended or cancelled it.
        with contextlib.suppress(BaseException):
            anyio.from_thread.run(self._drive, token, token=token)

    async def _drive(self, token: anyio.lowlevel.EventLoopToken) -> None:
        """Jump to the next wake-up each time the loop is idle; end when idle with none left."""
        try:
            while True:
                if not await self._idle():
                    continue
                due = self._next_due()
                if due is None:
                    return
                self._fire_until(due)
        except anyio.get_cancelled_exc_class():
            return  # the loop is shutting down: end quietly, nothing is left to drive
        except Exception as exc:  # pragma: no cover  # a bug here must not pass silently
            self._error = exc
            raise
        finally:
            if self._driver == token:
                self._driver = None

    async def _idle(self) -> bool:
        for _ in range(_SPIN_ROUNDS):
            await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
        workers = anyio.to_thread.current_default_thread_limiter()
        if not workers.borrowed_tokens:
            return True
        # A worker thread is running. Wait for it from a thread of our own, so that this task
        # looks blocked meanwhile: a periodic `anyio.sleep` would make it look runnable to a
        # test's own `anyio.wait_all_tasks_blocked()` and hold that up, 0.1 s at a time.
        stop = threading.Event()

        def wait_for_workers() -> None:
            while workers.borrowed_tokens and not stop.wait(_THREAD_POLL_S):
                pass

        try:
            await anyio.to_thread.run_sync(
                wait_for_workers, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
            )
        finally:
            stop.set()
        return False  # the task the thread ran for resumes now: look again once it has settled

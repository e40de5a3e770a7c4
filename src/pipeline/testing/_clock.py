"""`FakeClock`: virtual time for tests, so retry waits and timeouts never really wait.

The executor only sees the `pipeline.clock.Clock` protocol; this is one implementation. It uses
anyio's public API only: deadlines are plain `anyio.CancelScope`s, and the task that moves time
runs in a task group the clock opens while it is entered (`async with clock:`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import weakref
from typing import TYPE_CHECKING, final

import anyio
import anyio.lowlevel
import anyio.to_thread

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

_SPIN_ROUNDS = 20
"""Checkpoints the driver yields before each idle check, so work still in flight (a chain of
awaits a few scheduler rounds long) settles before `anyio.wait_all_tasks_blocked` looks: on
asyncio that check sleeps 0.1 s of real time whenever it finds a runnable task. Measured on the
test suite: with no warm-up 30 of ~230 idle checks paid 0.1 s (+3 s); with 20 rounds, ~1 of ~500."""

_THREAD_POLL_S = 0.001
"""Real seconds between looks at the default thread limiter while a worker thread runs."""

_COMPACT_AT = 64
"""Heap size below which dead entries (left, fired or collected) are never swept out early."""


class _Timer:
    """One pending wake-up, due at `when`: a sleeper's event, or a deadline's (weakly held) scope."""

    __slots__ = ("event", "live", "scope", "when")

    def __init__(
        self,
        when: float,
        event: anyio.Event | None,
        scope: weakref.ref[anyio.CancelScope] | None,
    ) -> None:
        self.when = when
        self.event = event
        self.scope = scope
        self.live = True
        """Not yet fired, nor given up by its sleeper."""

    def alive(self) -> bool:
        return self.live and (self.scope is None or self.scope() is not None)

    def fire(self) -> None:
        self.live = False
        if self.event is not None:
            self.event.set()
        elif self.scope is not None and (scope := self.scope()) is not None:
            scope.cancel()


class _Entry:
    """One `async with clock:`: the task group it opened there, which may host the driver."""

    __slots__ = ("failed", "tg")

    def __init__(self, tg: TaskGroup) -> None:
        self.tg = tg
        self.failed = False
        """The driver failed while this entry was open: its body was cancelled."""


@final
class _Busy:
    """`FakeClock.busy()`: a sync and async context manager; reusable, and nests."""

    __slots__ = ("_clock",)

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock

    def __enter__(self) -> None:
        self._clock._add_busy(1)

    def __exit__(self, *exc_info: object) -> None:
        self._clock._add_busy(-1)

    async def __aenter__(self) -> None:
        self._clock._add_busy(1)

    async def __aexit__(self, *exc_info: object) -> None:
        self._clock._add_busy(-1)


@final
class FakeClock:
    """A `Clock` on virtual time that jumps ahead whenever every task is waiting.

    Pass it as `PipelineExecutor(clock=...)`: each run enters it (`async with clock:`), which
    starts the autojump. Semantics, like trio's `MockClock` with autojump:

    - `sleep(s)` records `s` in `sleeps` and registers a wake-up at `now() + s`; the sleeper
      waits until virtual time reaches it. Sleeps in concurrent tasks therefore overlap: four
      parallel stages sleeping 1 s each end at virtual 1 s, not 4 s. `sleep(0)` (or less, down
      to `-inf`) is recorded and is a plain checkpoint (more lenient than `anyio.sleep`, and so
      `SystemClock`, which raise `ValueError` for a negative delay). `sleep(math.inf)` is recorded
      and waits until cancelled (by a deadline, a task group or the caller): it registers no
      wake-up, so virtual time never jumps to infinity. A cancelled sleep drops its wake-up.
    - `deadline_scope(s)` (timeouts) returns a plain `anyio.CancelScope` that the clock cancels
      when virtual time reaches `now() + s`, counted from the call, entered yet or not
      (cancelled at once if `s <= 0`; never if `s` is `math.inf`). The clock holds it weakly:
      the deadline is dropped when it fires or when the scope is garbage, normally as soon as
      the function whose `with` block used it returns (anyio tells nobody when a scope is
      left). A scope still referenced after its block keeps its deadline: the clock may stop
      there while everything waits and cancel a scope nobody is in, which changes nothing.
    - Every wake-up and deadline moves time forward: for `s > 0` it is due at `now() + s`, or at
      the next float after `now()` when that sum rounds back to `now()` (`1e-16` s at t=1.15).
      So a loop that sleeps until a target time (a rate limiter's refill) always gets there;
      were time to stay put, it would spin at full CPU. A due time that overflows the largest
      float cannot be reached: `sleep`, `deadline_scope` and `advance` raise `OverflowError`
      naming the duration and `now()`, instead of jumping to infinity or hanging.
    - NaN is rejected with `ValueError` by `sleep`, `deadline_scope` and `advance` (and a
      non-finite `start`), before anything is recorded, so a NaN never enters the timer heap.
    - While the clock is entered and the program is idle, virtual time jumps to the earliest
      pending wake-up or deadline, and everything due at that instant fires, in the order it was
      registered; then the clock waits for idle again. A stage blocked forever on an event
      inside a `timeout_ms` thus times out at its deadline with no `advance()`.
    - `advance(s)` moves virtual time forward by `s` at once, firing what falls due on the way
      in order (every woken sleeper sees the new time, as after trio's `MockClock.jump`), then
      yields once. Time never moves otherwise: `now()` is constant while any task runs.

    Running: `async with clock:` opens a task group in the entering task and starts the driver
    task in it, shielded from the caller's cancellation (a cancelled body's shielded cleanup on
    this clock still sees time move) until the entry is left; the body's own exceptions pass
    through as they are. Entries nest and may come from several tasks at once (a test around a
    run, a `SubPipeline`'s child run, concurrent runs sharing the clock); each opens its own task
    group and only the first runs the driver. If the entry running it is left while others are
    open, the driver moves to the oldest open entry, so autojump goes on; the last exit stops
    it. Enter and leave in one task, on one event loop. Outside any entry only `advance()`
    moves time: `deadline_scope` works there (the executor makes the run's deadline before it
    enters), but a `sleep(s)` with `s > 0` raises `RuntimeError` naming `async with clock:`, as
    nothing would wake it; so do `sleep`, `deadline_scope` and `advance` called from another
    thread while the clock runs. If the driver fails, its error is recorded, every open entry's
    body is cancelled and its `__aexit__` raises `RuntimeError` chained to the error, as does
    every later call but `now()`.

    Idle means, checked in this order by the driver: it has yielded 20 checkpoint rounds (so
    work still in flight settles); `anyio.wait_all_tasks_blocked()` returned, i.e. every other
    task is blocked (exact on trio; on asyncio anyio looks at each task's pending future and
    sleeps 0.1 s of real time before looking again while any task is runnable); and no work
    outside the loop is under way: no anyio worker thread on the default limiter is running
    (a sync function stage) and no `busy()` block is open. While there is, the driver waits for
    it from a helper thread, so its real run time never trips a virtual timeout, and then
    checks again. Given the same program, the virtual timings are the same on every run, on
    asyncio and on trio.

    Limitations: anything else the loop waits for counts as idle, so virtual time jumps past a
    real `anyio.sleep`, a socket, a subprocess or a thread on a limiter of your own: give
    stages under test this clock rather than real delays, or wrap such waits in `busy()`. On
    asyncio, a test's own `wait_all_tasks_blocked()` that looks while the driver is in its
    warm-up rounds waits 0.1 s more, and two `FakeClock`s with work on one loop see each
    other's driver as busy, costing up to 0.1 s per jump; the virtual timings stay exact.
    Outside work (a worker thread, a `busy()` block) that waits for a sleep on this clock
    deadlocks, as time never moves meanwhile; a loop polling `now()` around `sleep(0)` never
    sees time move either: sleep for the time that is left instead.
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
        self._sweep_at = _COMPACT_AT
        self._entries: list[_Entry] = []
        """Open `async with clock:` entries, oldest first."""
        self._by_task: dict[int, list[_Entry]] = {}
        self._thread: int | None = None
        """The thread whose event loop entered the clock."""
        self._driver: _Entry | None = None
        self._driver_scope: anyio.CancelScope | None = None
        self._parked: anyio.Event | None = None
        """Set when the driver waits for a wake-up to be registered (nothing is pending)."""
        self._busy = 0
        self._busy_changed = threading.Condition()
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
            RuntimeError: `seconds > 0` and the clock is not entered (`async with clock:`), or
                this is another thread than the entered loop's, or the driver failed.
        """
        self._check("sleep", seconds)
        self._raise_if_failed()
        if seconds <= 0:
            self.sleeps.append(seconds)
            await anyio.lowlevel.checkpoint()
            return
        if seconds == math.inf:
            self._check_running("sleep", seconds)
            self.sleeps.append(seconds)
            await anyio.sleep_forever()  # no wake-up: only a cancellation ends it
            return
        when = self._due("sleep", seconds)
        self._check_running("sleep", seconds)
        self.sleeps.append(seconds)
        event = anyio.Event()
        timer = _Timer(when, event, None)
        self._register(timer)
        try:
            await event.wait()
        finally:
            woken_by_failure = timer.live
            timer.live = False
        if woken_by_failure:
            self._raise_if_failed()

    def deadline_scope(self, seconds: float) -> anyio.CancelScope:
        """A plain cancel scope, cancelled once virtual time reaches now + `seconds`.

        The deadline counts from this call and is pending at once, whether or not the scope
        has been entered yet: one entered past its deadline is cancelled at once. With
        `seconds <= 0` the scope is cancelled at once; with `math.inf` it never is.

        Raises:
            ValueError: `seconds` is NaN.
            OverflowError: now + `seconds` is past the largest float.
            RuntimeError: called from another thread than the entered loop's, or the driver
                failed.
        """
        self._check("deadline_scope", seconds)
        self._raise_if_failed()
        self._check_thread("deadline_scope", seconds)
        when = None if seconds <= 0 or seconds == math.inf else self._due("deadline_scope", seconds)
        scope = anyio.CancelScope()
        if seconds <= 0:
            scope.cancel()
        elif when is not None:
            self._register(_Timer(when, None, weakref.ref(scope)))
        return scope

    async def advance(self, seconds: float) -> None:
        """Move virtual time forward by `seconds`, firing what falls due on the way; yield once.

        `seconds <= 0` only yields; a positive `seconds` moves time by at least one float step.
        Works whether or not the clock is entered.

        Raises:
            ValueError: `seconds` is NaN or infinite (virtual time stays finite).
            OverflowError: now + `seconds` is past the largest float.
            RuntimeError: called from another thread than the entered loop's, or the driver
                failed.
        """
        self._check("advance", seconds)
        self._raise_if_failed()
        self._check_thread("advance", seconds)
        if seconds == math.inf:
            raise ValueError(
                f"FakeClock.advance({seconds!r}) at now={self._now!r}: virtual time must stay "
                "finite; advance by a finite number of seconds (a sleep of math.inf already "
                "waits until cancelled)"
            )
        if seconds > 0:
            self._fire_until(self._due("advance", seconds))
        await anyio.lowlevel.checkpoint()

    def busy(self) -> _Busy:
        """Mark work the event loop cannot see, so virtual time stands still while it runs.

        Use it as `with clock.busy():` or `async with clock.busy():` around awaiting work done
        elsewhere (a process, a remote worker, a thread on a limiter of your own): while any
        such block is open, autojump does not move time, so the work's real duration never
        trips a virtual timeout. Blocks nest and may be opened from any thread. Worker threads
        on anyio's default limiter (`anyio.to_thread.run_sync`, sync function stages) already
        count as busy without it. Do not sleep on this clock inside the block: time cannot
        move until it closes.
        """
        return _Busy(self)

    async def __aenter__(self) -> FakeClock:
        """Run the autojump driver until the matching exit (re-entrant; see the class doc)."""
        self._raise_if_failed()
        thread = threading.get_ident()
        if self._entries and thread != self._thread:
            raise RuntimeError(
                "FakeClock: `async with clock:` on a second thread or event loop while it is "
                "entered on another; one FakeClock drives one event loop at a time: give each "
                "loop its own FakeClock"
            )
        tg = anyio.create_task_group()
        await tg.__aenter__()
        entry = _Entry(tg)
        self._thread = thread
        self._entries.append(entry)
        self._by_task.setdefault(anyio.get_current_task().id, []).append(entry)
        if self._driver is None and self._error is None:
            self._start_driver(entry)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close this entry's task group; the last exit stops the driver."""
        task = anyio.get_current_task().id
        stack = self._by_task.get(task)
        if not stack:
            raise RuntimeError(
                "FakeClock: `async with clock:` was left in another task than the one that "
                "entered it; enter and leave it in one task (an async fixture may set up and "
                "tear down in different tasks: enter the clock in the test itself)"
            )
        entry = stack.pop()
        if not stack:
            del self._by_task[task]
        self._entries.remove(entry)
        if entry is self._driver:
            self._stop_driver()
            if self._entries and self._error is None:
                self._start_driver(self._entries[0])  # the oldest open entry takes over
        if not self._entries:
            self._sweep()  # stopped: drop what was left, fired or collected
        if not entry.failed:
            # Our task group's scope was never cancelled, so `exc` is not ours to absorb; an
            # exception of the body passes through as itself, not in an ExceptionGroup.
            await entry.tg.__aexit__(None, None, None)
            return
        try:  # the body was cancelled by us when the driver failed: absorb that cancellation
            await entry.tg.__aexit__(exc_type, exc, tb)
        except BaseException:  # noqa: BLE001  # re-raised as the driver's failure, not lost
            raise self._failure() from self._error
        raise self._failure() from self._error

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

    # -- state checks ----------------------------------------------------------------------------
    def _check_thread(self, method: str, seconds: float) -> None:
        if self._entries and threading.get_ident() != self._thread:
            raise RuntimeError(
                f"FakeClock.{method}({seconds!r}) at now={self._now!r}: called from another "
                "thread than the event loop that entered the clock; virtual time does not move "
                "while a worker thread runs, so it would wait forever: wait on the loop (e.g. "
                "anyio.from_thread.run), or give that thread's loop its own FakeClock"
            )

    def _check_running(self, method: str, seconds: float) -> None:
        if not self._entries:
            raise RuntimeError(
                f"FakeClock.{method}({seconds!r}) at now={self._now!r}: the clock is not "
                "running, so nothing would ever wake this sleep; enter it around the code that "
                "sleeps: `async with clock:` (PipelineExecutor.execute does so for each run)"
            )
        self._check_thread(method, seconds)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._failure() from self._error

    def _failure(self) -> RuntimeError:
        error = self._error
        return RuntimeError(
            f"FakeClock: its autojump driver failed ({type(error).__name__}: {error}), so "
            "virtual time no longer moves by itself; use a new FakeClock (the cause below is "
            "a bug in FakeClock unless your code patched what it calls)"
        )

    # -- timers ----------------------------------------------------------------------------------
    def _register(self, timer: _Timer) -> None:
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        if len(self._heap) > self._sweep_at:  # amortised: sweep when the heap has doubled
            self._sweep()
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.set()

    def _sweep(self) -> None:
        self._heap = [item for item in self._heap if item[2].alive()]
        heapq.heapify(self._heap)
        self._sweep_at = max(_COMPACT_AT, 2 * len(self._heap))

    def _pending(self) -> int:
        """Live wake-ups and deadlines (for tests)."""
        return sum(item[2].alive() for item in self._heap)

    def _next_due(self) -> float | None:
        heap = self._heap
        while heap and not heap[0][2].alive():
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _fire_until(self, when: float) -> None:
        """Fire every live timer due by `when`, earliest first; time ends at `when`."""
        while (due := self._next_due()) is not None and due <= when:
            self._now = max(self._now, due)
            heapq.heappop(self._heap)[2].fire()
        self._now = max(self._now, when)

    # -- work outside the loop -------------------------------------------------------------------
    def _add_busy(self, delta: int) -> None:
        with self._busy_changed:
            self._busy += delta
            self._busy_changed.notify_all()

    def _outside_work(self) -> bool:
        workers = anyio.to_thread.current_default_thread_limiter()
        return self._busy > 0 or workers.borrowed_tokens > 0

    async def _wait_outside_work(self) -> None:
        # Wait from a thread of our own, so that the driver looks blocked meanwhile: a periodic
        # `anyio.sleep` would make it look runnable to a test's own `wait_all_tasks_blocked()`
        # and hold that up, 0.1 s at a time.
        workers = anyio.to_thread.current_default_thread_limiter()
        changed = self._busy_changed
        stopped = False

        def wait() -> None:
            with changed:
                while not stopped and (self._busy > 0 or workers.borrowed_tokens > 0):
                    changed.wait(_THREAD_POLL_S)

        try:
            await anyio.to_thread.run_sync(
                wait, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
            )
        finally:
            with changed:
                stopped = True
                changed.notify_all()

    # -- autojump --------------------------------------------------------------------------------
    def _start_driver(self, entry: _Entry) -> None:
        # Shielded: when the caller is cancelled, the body's shielded cleanup (an observer
        # grace on this clock) may still need time to move until the entry is left.
        scope = anyio.CancelScope(shield=True)
        self._driver, self._driver_scope = entry, scope
        entry.tg.start_soon(self._drive, scope, name=f"FakeClock autojump {id(self):#x}")

    def _stop_driver(self) -> None:
        if self._driver_scope is not None:
            self._driver_scope.cancel()
        self._driver = self._driver_scope = self._parked = None

    async def _drive(self, scope: anyio.CancelScope) -> None:
        """Jump to the next wake-up each time the loop is idle, until cancelled."""
        with scope:
            try:
                while True:
                    if self._next_due() is None:
                        self._parked = parked = anyio.Event()
                        await parked.wait()  # set by the next registration
                    elif await self._settled() and (due := self._next_due()) is not None:
                        self._fire_until(due)
            except Exception as exc:  # noqa: BLE001  # recorded and raised, never swallowed
                self._fail(exc)

    async def _settled(self) -> bool:
        """Whether the program is idle: every task waits and no outside work is under way."""
        for _ in range(_SPIN_ROUNDS):
            await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
        if not self._outside_work():
            return True
        await self._wait_outside_work()
        return False  # the task the work ran for resumes now: look again once it has settled

    def _fail(self, exc: Exception) -> None:
        """Record the driver's error; stop every entry's body and wake every sleeper with it."""
        self._error = exc
        self._driver = self._driver_scope = self._parked = None
        for entry in self._entries:
            entry.failed = True
            entry.tg.cancel_scope.cancel()
        for _, _, timer in self._heap:
            if timer.live and timer.event is not None:
                timer.event.set()

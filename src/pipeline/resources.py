"""Shared resources: a concurrency limit and a weighted token bucket, guarded by a circuit breaker.

`Resource` and `CircuitBreaker` are pure policy on an injected `pipeline.clock.Clock`: they read
`clock.now()`, wait with `clock.sleep()` (tokens) and per-waiter anyio events (slots), and know
nothing of stages, runs or events. The executor links them into every attempt (`uses=`) and into
`PipelineContext.acquire` elsewhere (`pipeline._attempt`, `pipeline.context`), where the wait is
recorded and a `CircuitOpenError` becomes the attempt's failure.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Literal, final

import anyio

from pipeline.errors import CircuitOpenError, DefinitionError

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from pipeline.clock import Clock

BreakerState = Literal["closed", "open", "half_open"]
"""Where a `CircuitBreaker` stands: letting attempts through, refusing them, or trying one."""

_SLACK_S = 1e-9
"""Tokens due within this many seconds count as there: `clock.sleep(due - now)` may land one
float step short of `due`, and sleeping again for that step would be a wasted wake-up."""


def _positive(owner: str, field: str, value: object, fix: str) -> float:
    """`value` as a float, or `DefinitionError` unless it is a finite number above zero."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DefinitionError(owner, field, f"must be a number, got {value!r}", fix)
    if not (math.isfinite(value) and value > 0):
        raise DefinitionError(owner, field, f"must be finite and above 0, got {value!r}", fix)
    return float(value)


def _whole(owner: str, field: str, value: object, fix: str) -> int:
    """`value` itself, or `DefinitionError` unless it is an int (not a bool) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DefinitionError(owner, field, f"must be an int, got {value!r}", fix)
    if value < 1:
        raise DefinitionError(owner, field, f"must be at least 1, got {value!r}", fix)
    return value


@final
class CircuitBreaker:
    """Stops attempts on a resource after `failure_threshold` consecutive failures.

    Attach it with `Resource(breaker=...)`. Closed, it lets every acquisition through and counts
    consecutive failed attempts (a success resets the count); at `failure_threshold` it opens.
    Open, every acquisition fails at once with `CircuitOpenError` until `reset_after_s` has
    passed on the clock since it opened (rejected acquisitions do not re-arm it). Then it goes
    half-open and lets exactly one trial attempt through, rejecting others while that trial is
    out: a success closes it, a failure opens it again from that moment. A trial cancelled
    before its verdict gives its place to the next acquisition.

    It reads time only from the `now` it is given. When `now` goes backwards (another clock:
    a fresh `FakeClock` after an earlier run's), the time still to wait is kept. Not
    thread-safe: use it from one event loop at a time, like `Resource`.
    """

    __slots__ = (
        "_epoch",
        "_failures",
        "_opened_at",
        "_reset_after_s",
        "_seen",
        "_state",
        "_threshold",
        "_trial_out",
    )

    def __init__(self, failure_threshold: int = 5, reset_after_s: float = 30.0) -> None:
        self._threshold = _whole(
            "CircuitBreaker",
            "failure_threshold",
            failure_threshold,
            "pass how many consecutive failed attempts open the circuit, e.g. 5",
        )
        self._reset_after_s = _positive(
            "CircuitBreaker",
            "reset_after_s",
            reset_after_s,
            "pass how many seconds an open circuit waits before a trial attempt, e.g. 30.0",
        )
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_out = False
        self._seen: float | None = None
        self._epoch = 0
        """Bumped on every change of state: a verdict from an attempt let through before the
        latest change is stale and ignored."""

    @property
    def failure_threshold(self) -> int:
        """Consecutive failed attempts that open the circuit."""
        return self._threshold

    @property
    def reset_after_s(self) -> float:
        """Seconds, from the moment it opened, before an open circuit lets a trial through."""
        return self._reset_after_s

    @property
    def state(self) -> BreakerState:
        """The state as of the last `check` or `record` (time passing alone changes nothing)."""
        return self._state

    def check(self, now: float, resource: str) -> None:
        """Let an attempt on `resource` through at time `now`, or refuse it.

        Raises:
            CircuitOpenError: the circuit is open and `reset_after_s` has not passed since it
                opened (`retry_in_s` is the time left), or it is half-open and its one trial
                attempt is still out (`retry_in_s` is `reset_after_s`, the wait should the
                trial fail).
        """
        self._admit(now, resource)

    def record(self, success: bool, now: float) -> None:
        """Count the outcome of an attempt that `check` let through.

        Closed: a success resets the count of consecutive failures, a failure adds one and
        opens the circuit at `failure_threshold`. Half-open: the outcome is the trial's; a
        success closes the circuit, a failure opens it again at `now`. Open: ignored (an attempt
        let through before it opened), so `reset_after_s` still counts from the opening.
        """
        self._observe(now)
        if self._state == "open":
            return
        if self._state == "half_open":
            if success:
                self._move("closed")
            else:
                self._open(now)
        elif success:
            self._failures = 0
        else:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open(now)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(failure_threshold={self._threshold}, "
            f"reset_after_s={self._reset_after_s!r}, state={self._state!r})"
        )

    def _admit(self, now: float, resource: str) -> int:
        """`check`, returning the epoch the attempt was let through in."""
        self._observe(now)
        if self._state == "open":
            left = self._opened_at + self._reset_after_s - now
            if left > 0:
                raise CircuitOpenError(resource, retry_in_s=left)
            self._move("half_open")
        if self._state == "half_open":
            if self._trial_out:
                raise CircuitOpenError(resource, retry_in_s=self._reset_after_s)
            self._trial_out = True
        return self._epoch

    def _settle(self, epoch: int, success: bool | None, now: float) -> None:
        """The verdict of an attempt let through in `epoch`; None when it was cancelled."""
        if epoch != self._epoch:
            return
        if success is None:
            if self._state == "half_open":
                self._trial_out = False
            return
        self.record(success, now)

    def _open(self, now: float) -> None:
        self._move("open")
        self._opened_at = now

    def _move(self, state: BreakerState) -> None:
        self._state = state
        self._failures = 0
        self._trial_out = False
        self._epoch += 1

    def _observe(self, now: float) -> None:
        seen = self._seen
        if seen is not None and now < seen:
            self._opened_at -= seen - now
        self._seen = now


@final
class Lease:
    """A granted acquisition: what `async with resource.acquire(...) as lease:` binds."""

    __slots__ = ("_failed", "wait_s", "weight")

    def __init__(self, weight: int, wait_s: float) -> None:
        self.weight = weight
        """Units held: in-flight slots and tokens."""
        self.wait_s = wait_s
        """Seconds spent waiting for the grant, on the clock given to `acquire` (0 when free)."""
        self._failed = False

    @property
    def failed(self) -> bool:
        """Whether `mark_failed` was called."""
        return self._failed

    def mark_failed(self) -> None:
        """Count the attempt holding this lease as failed, though no exception escapes it.

        For the resource's breaker: use it when the attempt returned a failed result.
        """
        self._failed = True

    def __repr__(self) -> str:
        return f"Lease(weight={self.weight}, wait_s={self.wait_s!r}, failed={self._failed})"


@final
class _Waiter:
    """One queued acquisition; only the head of the queue is ever granted."""

    __slots__ = ("event", "granted", "weight")

    def __init__(self, weight: int) -> None:
        self.weight = weight
        self.granted = False
        self.event: anyio.Event | None = None
        """Made afresh before each wait, on the waiter's own event loop."""


@final
class Resource:
    """A limit shared by every attempt that uses it: concurrent holders and/or a rate.

    `max_in_flight` caps the total weight held at once. `rate` units per `per_s` seconds caps
    the rate of acquisitions with a token bucket that starts full and holds `burst` units
    (default: `rate`, but at least 1, as a bucket smaller than one unit could grant nothing).
    An acquisition of `weight` takes `weight` slots and `weight` tokens; its slots come back
    when the `async with` block ends, its tokens refill with time. Waiting is first come, first
    served: a heavy acquisition at the head is never overtaken by light ones behind it.

    An optional `breaker` is checked before waiting (an open circuit fails at once with
    `CircuitOpenError`) and again on a grant after a wait, and is told each attempt's outcome
    when the block ends.

    Time comes only from the clock passed to `acquire`, so under `pipeline.testing.FakeClock`
    nothing really waits. One `Resource` may be shared by several executors and concurrent runs
    on one event loop, and reused by runs on other event loops one after another; it is not
    thread-safe. Concurrent users should share one time base: when `now` goes backwards (a
    fresh `FakeClock` after an earlier run's), the bucket keeps the tokens it had.

    Raises:
        DefinitionError: an argument is out of range: `max_in_flight` not an int of at least 1;
            `rate`, `per_s` or `burst` not a finite number above 0, `burst` below 1 or given
            without `rate`; `breaker` not a `CircuitBreaker`.
    """

    __slots__ = (
        "_anchor",
        "_breaker",
        "_bucket",
        "_burst",
        "_capacity",
        "_drawn",
        "_held",
        "_limit",
        "_max_in_flight",
        "_per_s",
        "_queue",
        "_rate",
        "_refill",
        "_seen",
    )

    def __init__(
        self,
        *,
        max_in_flight: int | None = None,
        rate: float | None = None,
        per_s: float = 1.0,
        burst: float | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        owner = "Resource"
        if max_in_flight is not None:
            _whole(owner, "max_in_flight", max_in_flight, "pass the most units held at once")
        self._max_in_flight = max_in_flight
        self._per_s = _positive(owner, "per_s", per_s, "pass the seconds `rate` is counted over")
        self._rate = self._burst = None
        if rate is not None:
            self._rate = _positive(owner, "rate", rate, "pass the units granted per `per_s`")
        if burst is not None:
            fix = "pass the most units granted at once (at least 1), or leave it to default"
            if self._rate is None:
                raise DefinitionError(owner, "burst", "is given without rate", "pass rate= too")
            self._burst = _positive(owner, "burst", burst, fix)
            if self._burst < 1:
                raise DefinitionError(owner, "burst", f"is {burst!r}, below one unit", fix)
        elif self._rate is not None:
            self._burst = max(self._rate, 1.0)
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise DefinitionError(
                owner, "breaker", f"must be a CircuitBreaker, got {breaker!r}", "pass one or None"
            )
        self._breaker = breaker
        self._limit: float = math.inf if max_in_flight is None else max_in_flight
        self._capacity = min(self._limit, math.inf if self._burst is None else self._burst)
        self._bucket = 0.0 if self._burst is None else self._burst
        self._refill = 1.0 if self._rate is None else self._rate
        self._held = 0
        self._anchor: float | None = None
        """When the bucket was last drawn from while full (None before the first grant). It is
        full again at `anchor + drawn * per_s / rate` (a GCRA's "theoretical arrival time"):
        computed from the anchor in one step, a due time is exact, not a sum of refills."""
        self._drawn = 0
        """Units taken since the anchor."""
        self._seen = -math.inf
        self._queue: deque[_Waiter] = deque()

    @property
    def max_in_flight(self) -> int | None:
        """The most weight held at once, or None for no limit."""
        return self._max_in_flight

    @property
    def rate(self) -> float | None:
        """Units granted per `per_s` seconds, or None for no rate limit."""
        return self._rate

    @property
    def per_s(self) -> float:
        """The seconds `rate` is counted over."""
        return self._per_s

    @property
    def burst(self) -> float | None:
        """The token bucket's size: the most units granted at once; None without `rate`."""
        return self._burst

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The circuit breaker guarding this resource, if any."""
        return self._breaker

    @property
    def capacity(self) -> float:
        """The largest weight that can ever be granted: `math.inf` when nothing is limited."""
        return self._capacity

    def acquire(
        self, weight: int = 1, *, clock: Clock, name: str = "resource"
    ) -> AbstractAsyncContextManager[Lease]:
        """Wait on `clock` until `weight` units are free, hold them for an `async with` block.

        `async with resource.acquire(2, clock=clock, name="llm") as lease:` waits its turn
        (FIFO), then yields a `Lease`. The slots come back when the block ends; the breaker
        (if any) counts the block as a success unless an exception escapes it or
        `lease.mark_failed()` was called; a cancellation counts as neither. Cancelled while
        waiting, it leaves no slots or tokens taken.

        Args:
            weight: units to take, at least 1 and at most `capacity`.
            clock: the time source to wait on (the executor's).
            name: the resource's name, for error messages.

        Raises:
            DefinitionError: `weight` is not an int of at least 1, or is above `capacity`
                (a `ValueError`; the executor's validation rejects this earlier).
            CircuitOpenError: on entering the block, when the breaker is open.
        """
        if weight.__class__ is not int or weight < 1:
            raise DefinitionError(
                f"Resource {name!r}",
                "weight",
                f"must be an int of at least 1, got {weight!r}",
                "pass how many units one acquisition takes, e.g. 1",
            )
        if weight > self._capacity:
            raise DefinitionError(
                f"Resource {name!r}",
                "weight",
                f"{weight} is above the resource's capacity {self._capacity:g}, so it could "
                f"never be granted (max_in_flight={self._max_in_flight}, burst={self._burst})",
                f"use a weight of at most {self._capacity:g}, or raise the resource's limits",
            )
        return _Acquisition(self, weight, clock, name)

    def __repr__(self) -> str:
        return (
            f"Resource(max_in_flight={self._max_in_flight}, rate={self._rate}, "
            f"per_s={self._per_s}, burst={self._burst}, breaker={self._breaker!r})"
        )

    def _free(self, weight: int, now: float) -> bool:
        """Whether `weight` could be granted at `now` by someone at the head of the queue."""
        return self._held + weight <= self._limit and self._token_wait(weight, now) == 0.0

    def _token_wait(self, weight: int, now: float) -> float:
        """Seconds from `now` until the bucket holds `weight` tokens (0.0 within the slack)."""
        anchor = self._observe(now)
        if anchor is None:
            return 0.0
        if anchor + self._drawn * self._per_s / self._refill <= now:
            return 0.0  # full, and `weight` is at most `burst`
        wait = anchor + (self._drawn + weight - self._bucket) * self._per_s / self._refill - now
        return wait if wait > _SLACK_S else 0.0

    def _observe(self, now: float) -> float | None:
        """Note the time; when it went backwards (another clock), shift the bucket with it."""
        anchor = self._anchor
        if anchor is not None and now < self._seen:
            anchor = self._anchor = anchor - (self._seen - now)
        self._seen = now
        return anchor

    def _take(self, weight: int, now: float) -> None:
        self._held += weight
        if self._rate is not None:
            anchor = self._anchor
            # Drawn from a bucket full only just now (within the slack), the anchor stays: due
            # times stay exact multiples of `per_s / rate` from it.
            if anchor is None or anchor + self._drawn * self._per_s / self._refill < now - _SLACK_S:
                self._anchor = now
                self._drawn = weight
            else:
                self._drawn += weight
            self._seen = now

    def _give_back(self, weight: int, now: float) -> None:
        """Undo a grant whose holder never got it (cancelled as it was granted)."""
        self._held -= weight
        if self._anchor is not None:
            self._drawn -= weight
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Grant from the head of the queue while the head fits; wake the next head."""
        queue = self._queue
        while queue:
            head = queue[0]
            if not self._free(head.weight, now):
                if head.event is not None and self._held + head.weight <= self._limit:
                    head.event.set()  # it has its slots: let it sleep for its tokens
                return
            self._take(head.weight, now)
            queue.popleft()
            head.granted = True
            if head.event is not None:
                head.event.set()

    async def _wait(self, weight: int, clock: Clock, start: float) -> float:
        """Queue up and wait for a grant; the seconds waited."""
        waiter = _Waiter(weight)
        queue = self._queue
        queue.append(waiter)
        try:
            while not waiter.granted:
                if queue[0] is waiter and self._held + weight <= self._limit:
                    await clock.sleep(self._token_wait(weight, clock.now()))
                    self._pump(clock.now())
                else:
                    waiter.event = event = anyio.Event()
                    await event.wait()
        except BaseException:
            if waiter.granted:
                self._give_back(weight, clock.now())
            else:
                queue.remove(waiter)
                self._pump(clock.now())
            raise
        return clock.now() - start


@final
class _Acquisition:
    """`Resource.acquire(...)`: an async context manager yielding a `Lease`; single use."""

    __slots__ = ("_clock", "_epoch", "_lease", "_name", "_resource", "_weight")

    def __init__(self, resource: Resource, weight: int, clock: Clock, name: str) -> None:
        self._resource = resource
        self._weight = weight
        self._clock = clock
        self._name = name
        self._epoch = 0
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        if self._lease is not None:
            raise RuntimeError(f"resource {self._name!r}: this acquisition was already entered")
        resource, weight, clock = self._resource, self._weight, self._clock
        now = clock.now()
        breaker = resource._breaker
        if breaker is not None:
            self._epoch = breaker._admit(now, self._name)
        if not resource._queue and resource._free(weight, now):
            resource._take(weight, now)
            lease = self._lease = Lease(weight, 0.0)
            return lease
        try:
            waited = await resource._wait(weight, clock, now)
        except BaseException:
            if breaker is not None:
                breaker._settle(self._epoch, None, clock.now())
            raise
        if breaker is not None and breaker._epoch != self._epoch:
            # The circuit changed while this waited: admit it again, as if it came now.
            try:
                self._epoch = breaker._admit(clock.now(), self._name)
            except CircuitOpenError:
                resource._give_back(weight, clock.now())
                raise
        lease = self._lease = Lease(weight, waited)
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        resource = self._resource
        now = self._clock.now()
        resource._held -= self._weight
        if resource._queue:
            resource._pump(now)
        elif resource._rate is not None:
            resource._observe(now)
        breaker = resource._breaker
        if breaker is not None:
            lease = self._lease
            if lease is not None and lease._failed:
                verdict: bool | None = False
            elif exc is None:
                verdict = True
            else:
                verdict = False if isinstance(exc, Exception) else None
            breaker._settle(self._epoch, verdict, now)

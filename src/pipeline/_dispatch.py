"""`EventDispatcher`: delivers a run's events to its observers without ever changing the run.

What the events are lives in `pipeline.events`; the built-in observers in `pipeline.observers`.
The run decides *when* to emit and `pipeline._reporter.RunReporter` builds each event; this
module only decides *how* events reach observers.

Delivery model (and why):

- Observers whose `on_event` is a plain function are called inline by `emit`, in the run loop.
  That costs no task and no queue, keeps the event order exact, and lets an observer read the
  ambient context of the run (an OpenTelemetry observer parents the run span on the caller's
  current span). Such observers must be quick; the built-in ones are.
- Observers whose `on_event` is `async def` are never awaited by `emit` (the run loop must not
  wait on a slow observer). `emit` puts the event on an unbounded memory object stream that one
  task, started by `async with dispatcher.running():`, drains in order, awaiting each async
  observer in turn, so no task outlives the run.
- Async observers never hold the caller (SPEC 7). Once the body of `running()` ends (the run
  finished, failed, timed out or was cancelled), what is still queued gets `grace_s` (default
  `OBSERVER_GRACE_S`) to be delivered; then the delivery in progress is cancelled, the rest is
  dropped, and one WARNING on the `pipeline` logger says how many events were lost (those
  queued plus the one whose delivery was cut short) and for which observers. When the caller
  cancels the run, the delivery in progress is cancelled at once (it is the caller's
  cancellation, and counts as cut short) and the rest is delivered in a shielded scope within
  the same grace. The grace is measured on the executor's clock: real time with the default
  `SystemClock` (which is what holding the caller is about), virtual and deterministic with
  `pipeline.testing.FakeClock`. A *sync* observer that blocks cannot be bounded this way: it
  runs inline in the run loop and must be quick.
- An observer that raises `Exception` is logged on `logging.getLogger("pipeline")` (with the
  traceback the first time, at DEBUG afterwards, so a broken observer cannot flood the log)
  and ignored. Cancellation and other `BaseException`s are never swallowed.
- A plain `on_event` that returns an awaitable anyway has that awaitable awaited by the same
  drain task, in order (and closed unawaited if it is dropped).
- With no observers, `enabled` is False and `emit` returns at once; a caller checks `enabled`
  to skip building events at all.
"""

from __future__ import annotations

import inspect
import logging
import math
import uuid
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, final

import anyio

from pipeline.errors import DefinitionError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Iterable

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from pipeline.clock import Clock
    from pipeline.events import Observer, PipelineEvent

logger = logging.getLogger("pipeline")

OBSERVER_GRACE_S = 1.0
"""Seconds (on the executor's clock) that async observers get, once a run has ended, to receive
the events still queued for them; what is left then is dropped with one warning. Long enough
for a healthy observer to catch up on a burst of final events, short enough that a stuck one
does not noticeably hold `execute()`."""

_Queued = tuple[Any, Any]
"""(async observer, event), or (None, (sync observer, event, the awaitable it returned))."""


run_observers: ContextVar[tuple[Observer, ...]] = ContextVar("pipeline_run_observers", default=())
"""Observers of the next run started in this context only, besides the executor's own
(`PipelineExecutor.stream` sets its forwarder here around its `execute`)."""


def new_run_id() -> str:
    """A fresh, short, unique run id (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def _is_seconds(value: object) -> bool:
    """A real number >= 0 (inf allowed), not a bool or NaN."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not math.isnan(value)
        and value >= 0
    )


def _is_async(observer: Observer) -> bool:
    return inspect.iscoroutinefunction(getattr(observer, "on_event", None))


@final
class EventDispatcher:
    """Fans one run's events out to its observers; see the module docstring for the model.

    Use on the event loop thread only (the executor hands it to a `RunReporter`, which
    builds the events)::

        bus = EventDispatcher(observers, clock=clock)
        async with bus.running():
            bus.emit(RunStarted(run_id=..., at_s=0.0, pipeline_name=...))
            ...

    Args:
        observers: Objects with an `on_event(event)` method, sync or async.
        clock: The executor's clock, on which the grace is measured (None: real time).
        grace_s: How long, once the run has ended, async observers may take to receive what is
            still queued for them before it is dropped (default `OBSERVER_GRACE_S`; 0 drops at
            once; `math.inf` waits for every event, and so may hold the caller).

    Raises:
        DefinitionError: `grace_s` is not a number >= 0.
    """

    def __init__(
        self,
        observers: Iterable[Observer] = (),
        *,
        clock: Clock | None = None,
        grace_s: float = OBSERVER_GRACE_S,
    ) -> None:
        if not _is_seconds(grace_s):
            raise DefinitionError(
                "EventDispatcher",
                "grace_s",
                f"is {grace_s!r}",
                f"use seconds >= 0 (default {OBSERVER_GRACE_S})",
            )
        self.observers: tuple[Observer, ...] = tuple(observers)
        self._sync = tuple(o for o in self.observers if not _is_async(o))
        self._async = tuple(o for o in self.observers if _is_async(o))
        self._clock = clock
        self._grace_s = float(grace_s)
        self._send: MemoryObjectSendStream[_Queued] | None = None
        self._failures: dict[int, int] = {}
        self._cut: list[Observer] = []
        """Observers whose delivery was cancelled midway during the current `running()`."""

    @property
    def grace_s(self) -> float:
        """Seconds async observers get, once the run has ended, before queued events drop."""
        return self._grace_s

    @property
    def enabled(self) -> bool:
        """True when at least one observer listens; skip building events when False."""
        return bool(self.observers)

    def emit(self, event: PipelineEvent) -> None:
        """Deliver `event`: sync observers now, async ones through the drain task.

        Never raises for an observer's error and never blocks. Call it from the event loop
        thread; with async observers, only inside `running()`.
        """
        for observer in self._sync:
            try:
                returned = observer.on_event(event)
            except Exception as exc:  # noqa: BLE001  # an observer never changes the run
                self._report(observer, event, exc)
                continue
            if returned is not None and inspect.isawaitable(returned):
                self._enqueue((None, (observer, event, returned)))
        for observer in self._async:
            self._enqueue((observer, event))

    def _enqueue(self, item: _Queued) -> None:
        if self._send is None:
            _discard(item)
            msg = "EventDispatcher.emit() must run inside `async with dispatcher.running():`"
            raise RuntimeError(msg)
        self._send.send_nowait(item)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Own the drain task for async observers while the run is in progress.

        A no-op without observers. On exit (however the body ends), waits at most `grace_s`
        for the queued events to be delivered, shielded; then drops the rest with one warning.
        """
        if not self.observers:
            yield
            return
        send, receive = anyio.create_memory_object_stream[_Queued](math.inf)
        drained = anyio.Event()
        self._send = send
        self._cut = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._drain, receive, drained)
                try:
                    yield
                finally:
                    self._send = None
                    send.close()
                    with self._grace_scope():
                        await drained.wait()
                        await self._flush(receive)
                    tg.cancel_scope.cancel()  # past the grace: stop the delivery in progress
        finally:
            self._drop(receive)

    def _grace_scope(self) -> anyio.CancelScope:
        if math.isinf(self._grace_s):
            scope = anyio.CancelScope()
        elif self._clock is not None:
            scope = self._clock.deadline_scope(self._grace_s)
        else:
            scope = anyio.move_on_after(self._grace_s)
        scope.shield = True  # the caller's cancellation must not skip the final events
        return scope

    async def _drain(
        self, receive: MemoryObjectReceiveStream[_Queued], drained: anyio.Event
    ) -> None:
        try:
            async for item in receive:
                await self._deliver(item)
        finally:
            drained.set()

    async def _flush(self, receive: MemoryObjectReceiveStream[_Queued]) -> None:
        """Deliver what a drain cancelled with the run left behind (nothing if it finished)."""
        while True:
            try:
                item = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            await self._deliver(item)

    async def _deliver(self, item: _Queued) -> None:
        observer, payload = item
        if observer is None:
            observer, event, awaitable = payload
        else:
            event = payload
            awaitable = observer.on_event(event)
        try:
            await awaitable
        except anyio.get_cancelled_exc_class():
            self._cut.append(observer)
            raise
        except Exception as exc:  # noqa: BLE001  # an observer never changes the run
            self._report(observer, event, exc)

    def _drop(self, receive: MemoryObjectReceiveStream[_Queued]) -> None:
        """Discard what the grace left undelivered and say so, once."""
        lost = list(self._cut)
        self._cut = []
        while True:
            try:
                item = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            lost.append(item[0] if item[0] is not None else item[1][0])
            _discard(item)
        receive.close()
        if not lost:
            return
        names = ", ".join(dict.fromkeys(type(o).__name__ for o in lost))
        logger.warning(
            "async observers: %d event(s) not delivered within grace_s=%s s after the run "
            "ended were dropped (observers: %s); make on_event return sooner, or hand slow "
            "work to a queue of your own",
            len(lost),
            f"{self._grace_s:g}",
            names,
            extra={"pipeline_dropped_events": len(lost)},
        )

    def _report(self, observer: Observer, event: Any, exc: Exception) -> None:
        count = self._failures.get(id(observer), 0) + 1
        self._failures[id(observer)] = count
        kind = getattr(event, "kind", "?")
        if count == 1:
            logger.error(
                "observer %r raised on a %s event; ignored (the run is unaffected)",
                observer,
                kind,
                exc_info=exc,
                extra={"pipeline_observer": repr(observer)},
            )
        else:
            logger.debug(
                "observer %r raised again on a %s event (%d failures)", observer, kind, count
            )


def _discard(item: _Queued) -> None:
    observer, payload = item
    if observer is None:
        awaitable: Awaitable[None] = payload[2]
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()

"""`EventDispatcher`: delivers a run's events to its observers without ever changing the run.

What the events are lives in `pipeline.events`; the built-in observers in `pipeline.observers`.
The executor decides *when* to emit; this module only decides *how* events reach observers.

Delivery model (and why):

- Observers whose `on_event` is a plain function are called inline by `emit`, in the run loop.
  That costs no task and no queue, keeps the event order exact, and lets an observer read the
  ambient context of the run (an OpenTelemetry observer parents the run span on the caller's
  current span). Such observers must be quick; the built-in ones are.
- Observers whose `on_event` is `async def` are never awaited by `emit` (the run loop must not
  wait on a slow observer). `emit` puts the event on an unbounded memory object stream that one
  task, started by `async with dispatcher.running():`, drains in order, awaiting each async
  observer in turn. `running()` returns only when every queued event has been delivered, so no
  task outlives the run; when the run is cancelled, what is still queued is delivered in a
  shielded scope bounded by `grace_s` on the executor's clock.
- An observer that raises `Exception` is logged on `logging.getLogger("pipeline")` (with the
  traceback the first time, at DEBUG afterwards, so a broken observer cannot flood the log)
  and ignored. Cancellation and other `BaseException`s are never swallowed.
- With no observers, `enabled` is False and `emit` returns at once: the executor should test
  `enabled` before it builds an event at all.
"""

from __future__ import annotations

import inspect
import logging
import math
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Iterable

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from pipeline.clock import Clock
    from pipeline.events import Observer, PipelineEvent

logger = logging.getLogger("pipeline")

_Queued = tuple[Any, Any]
"""(async observer, event), or (None, (sync observer, event, the awaitable it returned))."""


def new_run_id() -> str:
    """A fresh, short, unique run id (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def _is_async(observer: Observer) -> bool:
    return inspect.iscoroutinefunction(getattr(observer, "on_event", None))


@final
class EventDispatcher:
    """Fans one run's events out to its observers; see the module docstring for the model.

    Use from the executor (on the event loop thread only)::

        bus = EventDispatcher(observers, clock=clock)
        async with bus.running():
            if bus.enabled:
                bus.emit(RunStarted(run_id=..., at_s=0.0, pipeline_name=...))
            ...

    Args:
        observers: Objects with an `on_event(event)` method, sync or async.
        clock: The executor's clock; bounds the final flush of a cancelled run.
        grace_s: How long a cancelled run may spend delivering queued events to async observers.
    """

    def __init__(
        self,
        observers: Iterable[Observer] = (),
        *,
        clock: Clock | None = None,
        grace_s: float = 1.0,
    ) -> None:
        self.observers: tuple[Observer, ...] = tuple(observers)
        self._sync = tuple(o for o in self.observers if not _is_async(o))
        self._async = tuple(o for o in self.observers if _is_async(o))
        self._clock = clock
        self._grace_s = grace_s
        self._send: MemoryObjectSendStream[_Queued] | None = None
        self._failures: dict[int, int] = {}

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

        A no-op without observers. On exit, waits until every queued event has been
        delivered (on cancellation: at most `grace_s`, shielded).
        """
        if not self.observers:
            yield
            return
        send, receive = anyio.create_memory_object_stream[_Queued](math.inf)
        self._send = send
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._drain, receive)
                try:
                    yield
                finally:
                    self._send = None
                    send.close()
        finally:
            await self._flush(receive)

    async def _drain(self, receive: MemoryObjectReceiveStream[_Queued]) -> None:
        async for item in receive:
            await self._deliver(item)

    async def _flush(self, receive: MemoryObjectReceiveStream[_Queued]) -> None:
        """Deliver what a cancelled drain left behind, shielded, within `grace_s`."""
        scope = (
            self._clock.deadline_scope(self._grace_s)
            if self._clock is not None
            else anyio.move_on_after(self._grace_s)
        )
        scope.shield = True
        try:
            with scope:
                while True:
                    try:
                        item = receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        break
                    await self._deliver(item)
        finally:
            while True:  # past the deadline: drop the rest without "never awaited" warnings
                try:
                    _discard(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            receive.close()

    async def _deliver(self, item: _Queued) -> None:
        observer, payload = item
        if observer is None:
            observer, event, awaitable = payload
        else:
            event = payload
            awaitable = observer.on_event(event)
        try:
            await awaitable
        except Exception as exc:  # noqa: BLE001  # an observer never changes the run
            self._report(observer, event, exc)

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


EventBus = EventDispatcher
"""Alias: some call it a bus."""

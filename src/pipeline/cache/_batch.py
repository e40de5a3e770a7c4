"""Worker-thread trips shared by concurrent operations: the machinery of the SQLite and Redis stores.

A worker-thread trip costs far more than a query or a command, so the first caller carries
everyone's operations: callers arriving while it is in the worker thread ride together on its
next trip (`_run_batch` gets them all). Whoever is woken unserved leads next, so a cancelled
leader never strands the operations queued behind it (a shielded write among them).
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class Job(Generic[T]):
    """One store operation waiting for a trip; `_run_batch` sets `value` or `error`, then `done`."""

    __slots__ = ("done", "error", "key", "value", "wakeup")

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.done = False
        self.value: T | None = None
        self.error: BaseException | None = None
        self.wakeup: anyio.Event | None = None

    def wake(self) -> None:
        """Wake the job's caller (if it is waiting for a trip led by another)."""
        if self.wakeup is not None:
            self.wakeup.set()


class TripBatcher:
    """Base of a store whose operations run in worker threads, gathered into shared trips.

    Subclasses set `_pending = []` and `_leading = False` and implement `_run_batch`, which
    runs in the worker thread and must finish every job it gets (`done`, with a value or an
    error).
    """

    _pending: list[Job[Any]]
    _leading: bool

    def _run_batch(self, batch: list[Any]) -> None:
        raise NotImplementedError

    async def _submit(self, job: Job[T]) -> T:
        """Queue `job`, ride (or lead) trips until it is done, and return its value."""
        self._pending.append(job)
        try:
            while not job.done:
                if self._leading:
                    job.wakeup = anyio.Event()
                    await job.wakeup.wait()
                else:
                    await self._lead()
        finally:
            if not job.done:
                with suppress(ValueError):
                    self._pending.remove(job)
        if job.error is not None:
            raise job.error
        return job.value  # type: ignore[return-value]  # done without error: a T was set

    async def _lead(self) -> None:
        self._leading = True
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await anyio.to_thread.run_sync(self._run_batch, batch)
                except BaseException:
                    # Cancelled before the trip started: the batch did not run. Put it back so
                    # the jobs' own callers (woken below) carry it; dropping it would leave
                    # them waiting for a trip that never comes.
                    self._pending[:0] = [job for job in batch if not job.done]
                    raise
                finally:
                    for job in batch:
                        job.wake()
        finally:
            self._leading = False
            for job in self._pending:
                job.wake()

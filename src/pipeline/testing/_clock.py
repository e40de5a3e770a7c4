"""`FakeClock`: virtual time for tests, so retry waits and timeouts never really wait.

The executor only sees the `pipeline.clock.Clock` protocol; this is one implementation.
"""

from __future__ import annotations

import heapq
import itertools
from typing import final

import anyio
import anyio.lowlevel


@final
class FakeClock:
    """A `Clock` whose time only moves when something sleeps on it or a test advances it.

    `sleep(s)` returns at once, moving virtual time to `s` after the moment it was called and
    recording `s` in `sleeps`. `deadline_scope(s)` (timeouts) fires when virtual time passes its
    deadline, through any sleep or through `advance()`. Pass it as `PipelineExecutor(clock=...)`.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, anyio.CancelScope]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []
        """Every duration passed to `sleep`, in call order (retry backoff waits, in seconds)."""

    def now(self) -> float:
        """The virtual time in seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Record `seconds`, move virtual time forward by it, and yield once."""
        self.sleeps.append(seconds)
        self._move_to(self._now + max(seconds, 0.0))
        await anyio.lowlevel.checkpoint()

    def deadline_scope(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope cancelled once virtual time reaches now + `seconds`."""
        scope = anyio.CancelScope()
        heapq.heappush(self._timers, (self._now + seconds, next(self._seq), scope))
        if seconds <= 0:
            self._move_to(self._now)
        return scope

    async def advance(self, seconds: float) -> None:
        """Move virtual time forward by `seconds`, firing due deadlines, and yield once."""
        self._move_to(self._now + max(seconds, 0.0))
        await anyio.lowlevel.checkpoint()

    def _move_to(self, when: float) -> None:
        self._now = max(self._now, when)
        while self._timers and self._timers[0][0] <= self._now:
            heapq.heappop(self._timers)[2].cancel()

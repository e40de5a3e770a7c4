"""Time as the library sees it: one injectable `Clock` for now(), sleeping and deadlines.

Every retry wait, timeout and duration goes through it, so tests can swap in
`pipeline.testing.FakeClock` and never wait. The executor decides *when* to use time; this
module only says *how* time is read and spent.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Protocol, final

import anyio


class Clock(Protocol):
    """The time source `PipelineExecutor(clock=...)` uses."""

    def now(self) -> float:
        """Monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` (retry backoff waits)."""
        ...

    def deadline_scope(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope that cancels itself `seconds` from now (timeouts)."""
        ...


@final
class SystemClock:
    """Real time: `time.perf_counter`, `anyio.sleep` and `anyio.move_on_after`."""

    # `time.perf_counter` itself, not a method calling it: read 5 times a stage, a Python-level
    # method cost ~0.15 us of the ~12 us a no-op stage costs (benchmarks/overhead.py W1/W2).
    now = staticmethod(time.perf_counter)
    """Monotonic time in seconds (`time.perf_counter`)."""

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        await anyio.sleep(seconds)

    def deadline_scope(self, seconds: float) -> anyio.CancelScope:
        """`anyio.move_on_after(seconds)`: the event loop enforces the deadline."""
        return anyio.move_on_after(seconds)


current_clock: ContextVar[Clock | None] = ContextVar("pipeline_current_clock", default=None)
"""The clock of the run this task belongs to (set by `PipelineExecutor.execute`), or None.

Nested runs (`SubPipeline`) read it so a child pipeline keeps its parent's time source.
"""

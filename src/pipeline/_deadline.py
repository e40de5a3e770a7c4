"""`Within`: a block bounded by a stage's `timeout_ms`, and whether it timed out.

One rule for every place that bounds an attempt (the chain's timeout link, a runner that keeps
an item's timeout itself): the deadline cancels the block, and a block that overran it without
reaching a checkpoint was never interrupted, yet its late result is a timeout all the same (so
it is never cached).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

    import anyio

    from pipeline.clock import Clock


class Within:
    """`with Within(clock, limit_s) as bound: ...`, then `bound.passed` says if it timed out."""

    __slots__ = ("_clock", "_limit_s", "_scope", "_t0", "passed")

    def __init__(self, clock: Clock, limit_s: float) -> None:
        self._clock = clock
        self._limit_s = limit_s
        self._scope: anyio.CancelScope | None = None
        self._t0 = 0.0
        self.passed = False
        """After the block: the deadline cancelled it, or it ended past the deadline."""

    def __enter__(self) -> Within:
        clock = self._clock
        self._t0 = clock.now()
        scope = self._scope = clock.deadline_scope(self._limit_s)
        scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        scope = self._scope
        assert scope is not None  # entered
        swallowed = bool(scope.__exit__(exc_type, exc, tb))
        self.passed = scope.cancelled_caught or self._clock.now() - self._t0 > self._limit_s
        return swallowed

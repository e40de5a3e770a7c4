"""Waking the run's event loop from another thread, without blocking that thread.

A pool's result thread (or the Dask gather thread) finishes many calls in a row. Waking the
loop once per call costs a syscall and a GIL hand-over each (`call_soon_threadsafe` writes to
the loop's self-pipe every time); `LoopInbox` queues the wake-ups and asks the loop to run them
once per burst: the first `post` schedules a drain, the others only queue.

    other thread: inbox.post(event.set) --(first since the last drain)--> loop: drain()
    loop: drain() runs every queued callback, in order
"""

from __future__ import annotations

import contextlib
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Callable

_inboxes: weakref.WeakKeyDictionary[Any, LoopInbox] = weakref.WeakKeyDictionary()
"""Each running loop's inbox, by its asyncio loop or TrioToken (nothing outlives its loop).
One lookup a call (a `RunVar` would cost two: it keys by the same token)."""


def loop_waker() -> Callable[[Callable[[], object]], object]:
    """A non-blocking, thread-safe `call_soon` into the running event loop (asyncio or trio).

    `anyio.from_thread.run_sync` would block the calling thread (the pool's queue thread)
    until the loop ran the call. The returned function raises `RuntimeError` (trio's
    `RunFinishedError` is one) once that loop has ended.
    """
    return _waker_of(anyio.lowlevel.current_token().native_token)


def _waker_of(native: Any) -> Callable[[Callable[[], object]], object]:
    """The thread-safe `call_soon` of an asyncio loop or a `TrioToken`."""
    waker: Callable[[Callable[[], object]], object] = (
        native.call_soon_threadsafe if hasattr(native, "call_soon_threadsafe")
        else native.run_sync_soon
    )  # fmt: skip
    return waker


class LoopInbox:
    """Callbacks posted from any thread, run on one event loop in order, one wake-up a burst.

    Args:
        waker: The loop's thread-safe `call_soon` (`loop_waker()`).
    """

    __slots__ = ("_pending", "_scheduled", "_waker")

    def __init__(self, waker: Callable[[Callable[[], object]], object]) -> None:
        self._waker = waker
        self._pending: deque[Callable[[], object]] = deque()
        self._scheduled = False

    def post(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the loop soon (from any thread; never blocks).

        Dropped silently once the loop has ended (nobody is left to wake).
        """
        self._pending.append(callback)
        # Appended before the check: a drain that cleared the flag already will still see it,
        # and one that has not yet run will too. Two threads may both wake: a spare drain.
        if not self._scheduled:
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop has ended
                self._waker(self._drain)

    def _drain(self) -> None:
        """On the loop: run everything posted so far (and anything posted meanwhile)."""
        self._scheduled = False
        pending = self._pending
        while pending:
            pending.popleft()()


def loop_inbox() -> LoopInbox:
    """The running event loop's `LoopInbox` (made on first use in each loop)."""
    native: Any = anyio.lowlevel.current_token().native_token  # an asyncio loop or a TrioToken
    inbox = _inboxes.get(native)
    if inbox is None:
        inbox = _inboxes[native] = LoopInbox(_waker_of(native))
    return inbox

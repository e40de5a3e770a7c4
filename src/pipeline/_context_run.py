"""Running one awaitable in a `contextvars.Context` of its own, inside the current task.

The scheduler runs several stages one after another in one worker task; without this, a
`ContextVar` one stage sets (a logging tag, a tracing span, a `decimal` context) would be seen
by the stages that run after it in that task, and by the helper tasks it spawns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, final

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Coroutine, Generator

T = TypeVar("T")

_UNSENT: Final = object()


@final
class InContext(Generic[T]):
    """`await InContext(coro, context)` runs `coro` with `context` as its current context.

    Each step of the coroutine runs inside `context.run`; what it yields to the event loop
    (asyncio futures, trio's traps) passes through unchanged, so cancellation and every backend
    work as for a plain `await coro`.
    """

    __slots__ = ("_context", "_coro", "_first")

    def __init__(
        self, coro: Coroutine[Any, Any, T], context: contextvars.Context, first: Any = _UNSENT
    ) -> None:
        self._coro = coro
        self._context = context
        self._first = first  # what the coroutine yielded already, if it was started

    def __await__(self) -> Generator[Any, Any, T]:
        coro, run = self._coro, self._context.run
        step: Any = coro.send
        arg: Any = None
        if self._first is not _UNSENT:
            try:
                arg = yield self._first
            except BaseException as exc:  # noqa: BLE001  # thrown in by the loop: pass it on
                step, arg = coro.throw, exc
        while True:
            try:
                yielded = run(step, arg)
            except StopIteration as done:
                result: T = done.value
                return result
            try:
                arg = yield yielded
                step = coro.send
            except BaseException as exc:  # noqa: BLE001  # thrown in by the loop: pass it on
                step, arg = coro.throw, exc

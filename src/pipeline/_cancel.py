"""Telling a cancellation the run (or its caller) caused from a stray one.

Stage tasks are only ever cancelled by the run through anyio cancel scopes: fail-fast, a
timeout, `context.cancel()`, or the caller's cancellation reaching the run's task group. A
`CancelledError` that arrives any other way (a stage awaited a future someone else cancelled,
or foreign code called `Task.cancel()` on a stage's task) is *stray*: by contract it is the
failure of whatever raised it, never a silent stop.
"""

from __future__ import annotations

import sys

import anyio
import anyio.lowlevel


async def raise_unless_stray(exc: BaseException) -> None:
    """Return if a caught cancellation is stray; raise the real cancellation otherwise.

    A cancel scope around the caller that was cancelled makes the checkpoint below raise the
    scope's *own* cancellation, which the scope recognises and absorbs (re-raising a stray
    `CancelledError` instead would escape the scope as if something else had cancelled it).
    When nothing around us is cancelled, the exception was stray; on asyncio a foreign
    `Task.cancel()` it came from is then withdrawn (`Task.uncancel()`), as asyncio asks of
    code that swallows a cancellation, so later scopes do not mistake it for their own.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()
    asyncio = sys.modules.get("asyncio")  # loaded whenever an asyncio loop runs
    if asyncio is None:
        return
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop in this thread: trio
        return
    while task is not None and task.cancelling():
        task.uncancel()


def is_cancellation(exc: BaseException) -> bool:
    """Whether `exc` is the running backend's cancellation (or a group holding one)."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(cancelled) is not None
    return isinstance(exc, cancelled)


def must_propagate(exc: BaseException) -> bool:
    """`KeyboardInterrupt`, `SystemExit` or `GeneratorExit`, alone or inside a group."""
    kinds = (KeyboardInterrupt, SystemExit, GeneratorExit)
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(kinds) is not None
    return isinstance(exc, kinds)

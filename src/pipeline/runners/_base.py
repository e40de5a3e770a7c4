"""The `Runner` protocol and the two runners every executor has: inline and worker threads.

What an attempt *is* (events, timeout, converting errors into failures) lives in
`pipeline._attempt`; a runner is only the last step, the call of the stage's body.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Protocol, final

import anyio
import anyio.lowlevel
import anyio.to_thread
import sniffio

from pipeline.functions import FunctionStage
from pipeline.result import StageResult

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pipeline.context import PipelineContext
    from pipeline.protocol import PipelineStage

INLINE: Final = "inline"
"""The name of the event-loop runner, the default for stages with an async `execute`."""
THREADS: Final = "threads"
"""The name of the worker-thread runner, the default for sync function stages."""
REMOTE_TRACEBACK_ATTR: Final = "__pipeline_remote_traceback__"
"""Where a runner that pickles keeps a remote exception's traceback text (on the exception)."""
REMOTE_STOPPED: ContextVar[bool | None] = ContextVar("pipeline_remote_stopped", default=None)
"""Set by a runner in another process at each attempt: whether its work is known to have
stopped (True: it returned, was cancelled before it started, or its worker was killed;
False: given up on while it may still run). The attempt's task reads it into the attempt record; local work leaves it
None (each stage runs in its own copy of the context, so it never leaks between stages)."""


class Runner(Protocol):
    """Runs one attempt of a stage somewhere: on the event loop, in a thread, elsewhere.

    `run` returns what the stage's `execute` returns (normally a `StageResult`) or raises what
    it raised; the executor turns both into the attempt's outcome. Cancelling the awaiting task
    must stop waiting for the work (stopping the work itself is best effort).
    """

    async def run(
        self, stage: PipelineStage[Any, Any], input: Any, context: PipelineContext[Any]
    ) -> Any:
        """Run `stage` once on `input`."""
        ...


def sync_body(stage: object) -> Callable[[Any, PipelineContext[Any]], Any] | None:
    """The blocking function of a sync function stage (`FunctionStage.fn`), else None."""
    if isinstance(stage, FunctionStage) and not stage.is_async:
        return stage.fn
    return None


def default_runner_name(stage: object) -> str:
    """`"threads"` for a sync function stage, `"inline"` for everything else."""
    return THREADS if isinstance(stage, FunctionStage) and not stage.is_async else INLINE


@final
class InlineRunner:
    """Awaits `stage.execute` on the event loop: no hop, no copy (the default for async stages).

    A sync function stage cannot run inline (it would block the loop); validation says so.
    """

    async def run(
        self, stage: PipelineStage[Any, Any], input: Any, context: PipelineContext[Any]
    ) -> Any:
        """`await stage.execute(input, context)`."""
        return await stage.execute(input, context)

    def __repr__(self) -> str:
        return "InlineRunner()"


@final
class ThreadRunner:
    """Runs a sync function stage's function in an anyio worker thread.

    A thread cannot be interrupted: on a timeout or cancellation the run waits for the function
    to return, then discards its result (the stage's `abandon_on_cancel=True` stops waiting at
    once and leaves the thread running in the background). An async stage sent here runs under
    its own event loop (`anyio.run`) in the worker thread; it then must not await the run's
    clock or objects bound to the run's event loop.

    Args:
        limiter: The `anyio.CapacityLimiter` bounding the threads in use (default: anyio's
            default limiter, 40 threads).
    """

    def __init__(self, *, limiter: anyio.CapacityLimiter | None = None) -> None:
        self.limiter = limiter

    async def run(
        self, stage: PipelineStage[Any, Any], input: Any, context: PipelineContext[Any]
    ) -> Any:
        """Call the stage's blocking body (or `anyio.run` its `execute`) in a worker thread."""
        body = sync_body(stage)
        if body is not None:
            abandon = bool(getattr(stage, "abandon_on_cancel", False))
            returned = await anyio.to_thread.run_sync(
                body, input, context, abandon_on_cancel=abandon, limiter=self.limiter
            )
            # A cancel (timeout) that arrived while the thread ran is delivered now, so a late
            # result is reported as the timeout it was rather than as a success.
            await anyio.lowlevel.checkpoint_if_cancelled()
            if inspect.isawaitable(returned):  # a sync callable that hands back a coroutine
                returned = await returned
            return returned if isinstance(returned, StageResult) else StageResult.success(returned)
        return await anyio.to_thread.run_sync(
            _run_on_own_loop, stage, input, context, current_backend(), limiter=self.limiter
        )

    def __repr__(self) -> str:
        return "ThreadRunner()"


def _run_on_own_loop(stage: PipelineStage[Any, Any], input: Any, context: Any, backend: str) -> Any:
    async def main() -> Any:
        return await stage.execute(input, context)

    return run_async(main, backend)


def current_backend() -> str:
    """The running anyio backend's name (`"asyncio"` or `"trio"`), for a loop of its own."""
    return sniffio.current_async_library()


def run_async(fn: Callable[..., Awaitable[Any]], backend: str, *args: Any) -> Any:
    """`anyio.run(fn, *args)` under `backend` (the run's), so a trio run's stage gets trio.

    Falls back to asyncio where that backend is not installed (a Dask worker without trio).
    """
    if backend != "asyncio" and not _installed(backend):
        backend = "asyncio"
    return anyio.run(fn, *args, backend=backend)


@functools.cache
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None

"""Function stages: `@stage` and `FunctionStage` turn a function into a `PipelineStage`.

Where a function runs (event loop, worker thread, elsewhere) is the executor's runner's choice
(`pipeline.runners`); retries, timeouts and fan-out are the executor's job too. This module
only adapts a function's call and return value.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, final, overload

import anyio.lowlevel
import anyio.to_thread

from pipeline.result import StageResult

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine

    from pipeline.context import PipelineContext

InT = TypeVar("InT")
OutT = TypeVar("OutT")

# The overloads below say `Coroutine`, not `Awaitable`: an async function then matches the
# async and the sync overloads with the *same* inferred parameter type, so mypy picks the first
# instead of giving up with `Any` when the function's annotations contain `Any`
# (`ctx: PipelineContext[Any]`).


@final
class FunctionStage(Generic[InT, OutT]):
    """A `PipelineStage[InT, OutT]` made from a function `(input, context) -> output`.

    The function may be async or sync and may return a plain value (wrapped in
    `StageResult.success`) or a `StageResult[OutT]` (returned as is). Where it runs is the
    executor's choice, not the stage's: a sync function goes to the `"threads"` runner (an
    anyio worker thread) unless `StageDefinition(runner=...)` says otherwise, so it never
    blocks the event loop; calling `execute` directly (in a unit test) also runs a sync
    function in a worker thread. Its calls to `context.set_state` / `add_metric` /
    `increment_metric` are thread-safe.

    A thread cannot be interrupted. When a timeout or a cancellation hits a sync stage, by
    default the run waits for the function to return, then discards its result and reports the
    timeout (late, but nothing outlives the run). With `abandon_on_cancel=True` the run stops
    waiting at once and reports the timeout on time, while the thread keeps running in the
    background until the function returns; its result and side effects still happen, unseen.
    A long sync function can poll `context.is_cancelled()` to stop early on a cancel.

    Args:
        fn: The stage body, `fn(input, context)`.
        name: The stage's name (default: the function's `__name__`).
        abandon_on_cancel: For a sync `fn`: stop waiting for the thread when cancelled.

    Example:
        ```python
        async def double(x: int, ctx: PipelineContext[Any]) -> int:
            return 2 * x

        StageDefinition("double", FunctionStage(double))
        ```
    """

    @overload
    def __init__(
        self: FunctionStage[InT, list[OutT]],
        fn: Callable[[InT, PipelineContext[Any]], AsyncIterator[OutT]],
        /,
        *,
        name: str | None = None,
        abandon_on_cancel: bool = False,
    ) -> None: ...
    @overload
    def __init__(
        self: FunctionStage[InT, OutT],
        fn: Callable[[InT, PipelineContext[Any]], Coroutine[Any, Any, StageResult[OutT]]],
        /,
        *,
        name: str | None = None,
        abandon_on_cancel: bool = False,
    ) -> None: ...
    @overload
    def __init__(
        self: FunctionStage[InT, OutT],
        fn: Callable[[InT, PipelineContext[Any]], Coroutine[Any, Any, OutT]],
        /,
        *,
        name: str | None = None,
        abandon_on_cancel: bool = False,
    ) -> None: ...
    @overload
    def __init__(
        self: FunctionStage[InT, OutT],
        fn: Callable[[InT, PipelineContext[Any]], StageResult[OutT]],
        /,
        *,
        name: str | None = None,
        abandon_on_cancel: bool = False,
    ) -> None: ...
    @overload
    def __init__(
        self: FunctionStage[InT, OutT],
        fn: Callable[[InT, PipelineContext[Any]], OutT],
        /,
        *,
        name: str | None = None,
        abandon_on_cancel: bool = False,
    ) -> None: ...
    def __init__(
        self,
        fn: Callable[[Any, PipelineContext[Any]], Any],
        /,
        *,
        name: str | None = None,
        abandon_on_cancel: bool = False,
    ) -> None:
        checked: object = fn  # runtime check for callers without a type checker
        if not callable(checked):
            msg = f"FunctionStage needs a callable (input, context) -> output, got {fn!r}"
            raise TypeError(msg)
        self.fn = fn
        """The wrapped function, unchanged (call it directly in unit tests if you like)."""
        self.abandon_on_cancel = abandon_on_cancel
        """Whether a cancelled run stops waiting for a sync function's thread."""
        self.is_producer = _is_async_generator(fn)
        """True when `fn` is an async generator function: a streaming producer whose items
        flow to consumers while it runs (SPEC 11; `execute` called directly collects them)."""
        self.is_async = self.is_producer or _is_async_callable(fn)
        """True when `fn` is an async function (run on the event loop, not in a thread)."""
        self._name = name if name is not None else _callable_name(fn)
        functools.update_wrapper(self, fn, updated=())  # type: ignore[arg-type]  # callable instances lack __name__ in typeshed; update_wrapper copes

    @property
    def name(self) -> str:
        """The stage's name: `name=` if given, else the function's `__name__`."""
        return self._name

    async def execute(self, input: InT, context: PipelineContext[Any], /) -> StageResult[OutT]:
        """Call the function (in a worker thread if it is sync) and wrap its return value.

        For an async generator function (a producer) this collects its items into a list; a
        `PipelineExecutor` streams them instead.
        """
        if self.is_producer:
            items = [item async for item in self.fn(input, context)]
            return StageResult.success(cast("OutT", items))
        if self.is_async:
            returned = await self.fn(input, context)
        else:
            returned = await anyio.to_thread.run_sync(
                self.fn, input, context, abandon_on_cancel=self.abandon_on_cancel
            )
            # A cancel (timeout) that arrived while the thread ran is delivered now, so a late
            # result is reported as the timeout it was rather than as a success.
            await anyio.lowlevel.checkpoint_if_cancelled()
            if inspect.isawaitable(returned):  # a sync callable that hands back a coroutine
                returned = await returned
        if isinstance(returned, StageResult):
            return returned
        return StageResult.success(returned)

    def __repr__(self) -> str:
        return f"FunctionStage({self._name!r})"


class StageDecorator(Protocol):
    """What `stage(name=...)` returns: a decorator turning a function into a `FunctionStage`."""

    @overload
    def __call__(
        self, fn: Callable[[InT, PipelineContext[Any]], AsyncIterator[OutT]], /
    ) -> FunctionStage[InT, list[OutT]]: ...
    @overload
    def __call__(
        self, fn: Callable[[InT, PipelineContext[Any]], Coroutine[Any, Any, StageResult[OutT]]], /
    ) -> FunctionStage[InT, OutT]: ...
    @overload
    def __call__(
        self, fn: Callable[[InT, PipelineContext[Any]], Coroutine[Any, Any, OutT]], /
    ) -> FunctionStage[InT, OutT]: ...
    @overload
    def __call__(
        self, fn: Callable[[InT, PipelineContext[Any]], StageResult[OutT]], /
    ) -> FunctionStage[InT, OutT]: ...
    @overload
    def __call__(
        self, fn: Callable[[InT, PipelineContext[Any]], OutT], /
    ) -> FunctionStage[InT, OutT]: ...


@overload
def stage(
    fn: Callable[[InT, PipelineContext[Any]], AsyncIterator[OutT]], /
) -> FunctionStage[InT, list[OutT]]: ...
@overload
def stage(
    fn: Callable[[InT, PipelineContext[Any]], Coroutine[Any, Any, StageResult[OutT]]], /
) -> FunctionStage[InT, OutT]: ...
@overload
def stage(
    fn: Callable[[InT, PipelineContext[Any]], Coroutine[Any, Any, OutT]], /
) -> FunctionStage[InT, OutT]: ...
@overload
def stage(
    fn: Callable[[InT, PipelineContext[Any]], StageResult[OutT]], /
) -> FunctionStage[InT, OutT]: ...
@overload
def stage(fn: Callable[[InT, PipelineContext[Any]], OutT], /) -> FunctionStage[InT, OutT]: ...
@overload
def stage(*, name: str | None = None, abandon_on_cancel: bool = False) -> StageDecorator: ...
def stage(
    fn: Callable[[Any, PipelineContext[Any]], Any] | None = None,
    /,
    *,
    name: str | None = None,
    abandon_on_cancel: bool = False,
) -> Any:
    """Turn a function `(input, context) -> output` into a `FunctionStage`.

    Works bare (`@stage`) and with arguments (`@stage(name="load")`). The decorated name is
    then the stage object; the original function stays reachable as `.fn`. Types carry over:
    `async def f(x: int, ctx: PipelineContext[Any]) -> str` gives a `FunctionStage[int, str]`,
    and a function returning `StageResult[T]` gives output type `T`. See `FunctionStage` for
    sync functions, threads and timeouts.

    Args:
        fn: The function (when used bare).
        name: The stage's name (default: the function's `__name__`).
        abandon_on_cancel: For a sync function: stop waiting for its thread when cancelled.

    Returns:
        A `FunctionStage`, or a decorator making one when called with keyword arguments only.

    Example:
        ```python
        @stage
        async def tokenize(text: str, ctx: PipelineContext[Any]) -> list[str]:
            return text.split()
        ```
    """
    if fn is not None:
        return FunctionStage(fn, name=name, abandon_on_cancel=abandon_on_cancel)

    def decorate(func: Callable[[Any, PipelineContext[Any]], Any], /) -> FunctionStage[Any, Any]:
        return FunctionStage(func, name=name, abandon_on_cancel=abandon_on_cancel)

    return decorate


def _is_async_callable(fn: object) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004  # an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _is_async_generator(fn: object) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isasyncgenfunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004  # an object with an async-generator __call__
    return call is not None and inspect.isasyncgenfunction(call)


def _callable_name(fn: object) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__

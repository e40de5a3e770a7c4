"""`PipelineExecutor.stream`: a run whose events the caller reads as they happen.

The run is an ordinary `execute` in a task of the caller's own task group, with one more
observer (for this run only) that forwards every event into a memory object stream the caller
iterates. Events and their delivery are `pipeline.events` / `pipeline._dispatch`.
"""

from __future__ import annotations

import contextlib
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import anyio

from pipeline._dispatch import run_observers
from pipeline.errors import RunNotFinishedError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from pipeline.context import PipelineContext
    from pipeline.definition import PipelineDefinition
    from pipeline.events import PipelineEvent
    from pipeline.executor import PipelineExecutor
    from pipeline.result import PipelineResult


@final
class StreamingRun:
    """A run in progress, from `async with executor.stream(pipeline, ...) as run:`.

    `async for event in run` yields the same `pipeline.events` objects observers get, in
    order, ending after `RunFinished`; each stage's `StageFinished` carries its `output` when
    the run keeps it. `run.result` is the run's `PipelineResult` once it ended
    (`RunNotFinishedError` before that, or when the block was left early). Leaving the block
    before the run ended cancels the run cleanly: producers' `finally` blocks run and no task
    is left. Events wait in an unbounded buffer until read, so a reader much slower than the
    run holds them in memory.

    Example:
        ```python
        async with executor.stream(pipeline, items) as run:
            async for event in run:
                if event.kind == "stage_finished":
                    print(event.stage_id, event.output)
        print(run.result.success)
        ```
    """

    __slots__ = ("_cancelled", "_pipeline", "_receive", "_result")

    def __init__(self, pipeline: str, receive: MemoryObjectReceiveStream[PipelineEvent]) -> None:
        self._pipeline = pipeline
        self._receive = receive
        self._result: PipelineResult | None = None
        self._cancelled = False

    def __aiter__(self) -> StreamingRun:
        return self

    async def __anext__(self) -> PipelineEvent:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    @property
    def result(self) -> PipelineResult:
        """The run's result, once it has ended."""
        if self._result is None:
            raise RunNotFinishedError(self._pipeline, cancelled=self._cancelled)
        return self._result

    def __repr__(self) -> str:
        state = "finished" if self._result is not None else "running"
        return f"<StreamingRun {self._pipeline!r} {state}>"


@final
class _Forward:
    """The run's extra observer: each event into the caller's stream, never blocking."""

    __slots__ = ("_send",)

    def __init__(self, send: MemoryObjectSendStream[PipelineEvent]) -> None:
        self._send = send

    def on_event(self, event: PipelineEvent, /) -> None:
        # Closed: the caller left the block, and the run is being cancelled.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._send.send_nowait(event)


@asynccontextmanager
async def open_stream(
    executor: PipelineExecutor,
    pipeline: PipelineDefinition,
    initial_input: Any,
    context: PipelineContext[Any] | None,
) -> AsyncIterator[StreamingRun]:
    """Start the run in a task; yield its `StreamingRun`; cancel it if it has not ended."""
    send, receive = anyio.create_memory_object_stream[Any](math.inf)
    run = StreamingRun(pipeline.name, receive)

    async def drive() -> None:
        run_observers.set((_Forward(send),))  # this task's own context: this run only
        with send:
            run._result = await executor.execute(pipeline, initial_input, context)

    error: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(drive)
            try:
                yield run
            except Exception as exc:  # noqa: BLE001  # re-raised below, outside the task group
                error = exc  # raised inside, it would reach the caller wrapped in a group
            finally:
                if run._result is None:
                    run._cancelled = True
                    tg.cancel_scope.cancel()
    finally:
        send.close()
        receive.close()
    if error is not None:
        raise error

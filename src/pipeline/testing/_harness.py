"""Calling one stage in a test: `make_context` and `run_stage`.

`run_stage` calls the stage directly, like a unit test would; retries, conditions and
fan-out are the executor's and are tested through `PipelineExecutor` (see `record_run`).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, overload

from pipeline.clock import SystemClock
from pipeline.context import PipelineContext
from pipeline.errors import StageOutputError, StageTimeoutError
from pipeline.result import UNKNOWN_STAGE, StageResult

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pipeline.clock import Clock
    from pipeline.context import CancelToken
    from pipeline.protocol import PipelineStage

InT = TypeVar("InT")
OutT = TypeVar("OutT")
DepsT = TypeVar("DepsT")


@overload
def make_context(
    *,
    deps: None = None,
    state: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    cancel_token: CancelToken | None = None,
    **services: Any,
) -> PipelineContext[None]: ...
@overload
def make_context(
    *,
    deps: DepsT,
    state: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    cancel_token: CancelToken | None = None,
    **services: Any,
) -> PipelineContext[DepsT]: ...
def make_context(
    *,
    deps: Any = None,
    state: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    cancel_token: CancelToken | None = None,
    **services: Any,
) -> PipelineContext[Any]:
    """A fresh `PipelineContext` for a test, typed by its `deps`.

    Args:
        deps: The typed dependency object (`context.deps`).
        state: Initial state (copied).
        metrics: Initial metrics (copied).
        cancel_token: A cancel token, such as an `anyio.Event`.
        **services: Services reachable as attributes (`provider=...`, `session=...`).

    Returns:
        `PipelineContext[type of deps]` (`PipelineContext[None]` without deps).
    """
    return PipelineContext(
        deps=deps, state=state, metrics=metrics, cancel_token=cancel_token, **services
    )


class StageCall(NamedTuple, Generic[OutT]):
    """What `run_stage` returns: the stage's result and the context after the call.

    Unpacks as `result, context = await run_stage(...)`.
    """

    result: StageResult[OutT]
    """The `StageResult` the stage returned (`stage_name` filled in like the executor does)."""
    context: PipelineContext[Any]
    """The context the stage ran with, after the call: inspect its state and metrics."""

    @property
    def output(self) -> OutT | None:
        """Shortcut for `result.output`."""
        return self.result.output


async def run_stage(
    stage: PipelineStage[InT, OutT],
    input: InT,
    *,
    state: Mapping[str, Any] | None = None,
    deps: Any = None,
    metrics: Mapping[str, Any] | None = None,
    context: PipelineContext[Any] | None = None,
    stage_id: str | None = None,
    timeout_ms: float | None = None,
    clock: Clock | None = None,
    **services: Any,
) -> StageCall[OutT]:
    """Call `stage.execute(input, context)` once and return its result and the context.

    The stage is called directly: an exception it raises propagates (so `pytest.raises` and
    tracebacks work), where the executor would turn it into a failed result. Like the
    executor, a result whose `stage_name` is `"unknown"` gets `stage_id` filled in.

    Args:
        stage: Any `PipelineStage`, e.g. a `FunctionStage` or a `ScriptedStage`.
        input: The stage's input.
        state: Initial state of the context built for the call.
        deps: `deps` of the context built for the call.
        metrics: Initial metrics of the context built for the call.
        context: Use this context instead of building one (then pass no state, deps, metrics
            or services).
        stage_id: The id filled into an `"unknown"` `stage_name` (default: `stage.name`).
        timeout_ms: Bound the call like `StageDefinition.timeout_ms`; exceeding it raises
            `StageTimeoutError`.
        clock: The clock enforcing `timeout_ms` (default: real time; pass a `FakeClock`).
        **services: Services of the context built for the call.

    Returns:
        A `StageCall`: `result, context = await run_stage(...)`.

    Raises:
        StageOutputError: The stage returned something that is not a `StageResult`.
        StageTimeoutError: The call exceeded `timeout_ms`.
        TypeError: Both `context` and context ingredients were given.
    """
    if context is None:
        context = make_context(deps=deps, state=state, metrics=metrics, **services)
    elif state is not None or deps is not None or metrics is not None or services:
        msg = "run_stage: pass either context= or state/deps/metrics/services, not both"
        raise TypeError(msg)
    sid = stage_id if stage_id is not None else stage.name
    returned: object
    if timeout_ms is None:
        returned = await stage.execute(input, context)
    else:
        clock = clock if clock is not None else SystemClock()
        if isinstance(clock, AbstractAsyncContextManager):  # a FakeClock drives its time
            async with clock:
                returned, timed_out = await _bounded(stage, input, context, clock, timeout_ms)
        else:
            returned, timed_out = await _bounded(stage, input, context, clock, timeout_ms)
        if timed_out:
            raise StageTimeoutError(sid, 1, timeout_ms)
    if not isinstance(returned, StageResult):
        raise StageOutputError(sid, 1, returned)
    result: StageResult[OutT] = returned
    if result.stage_name == UNKNOWN_STAGE:
        result = result.model_copy(update={"stage_name": sid})
    return StageCall(result, context)


async def _bounded(
    stage: PipelineStage[Any, Any],
    input: Any,
    context: PipelineContext[Any],
    clock: Clock,
    timeout_ms: float,
) -> tuple[object, bool]:
    returned: object = None
    with clock.deadline_scope(timeout_ms / 1000) as scope:
        returned = await stage.execute(input, context)
    return returned, scope.cancelled_caught

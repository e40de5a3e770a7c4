"""`SubPipeline`: a whole `PipelineDefinition` used as one stage of another pipeline.

It adapts a child run to the `PipelineStage` protocol: input in, one stage's output out, the
child's result kept in the stage's metadata. Running the child is `PipelineExecutor`'s job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, final

from pipeline._env import current_stage
from pipeline.clock import current_clock
from pipeline.context import PipelineContext
from pipeline.errors import DefinitionError
from pipeline.executor import PipelineExecutor
from pipeline.result import StageResult, StageStatus
from pipeline.runners import INLINE, THREADS

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.definition import PipelineDefinition
    from pipeline.result import PipelineResult

ContextMode = Literal["shared", "isolated"]
"""`shared`: the child uses the parent's context. `isolated`: a fresh child context."""

CHILD_RESULT = "child_result"
"""Metadata key of the child's `PipelineResult` on the parent stage's `StageResult`."""

CHILD_FAILED_STAGE = "child_failed_stage"
"""Metadata key naming the child stage whose failure failed the parent stage."""


@final
class SubPipeline:
    """Runs a child `PipelineDefinition` as one stage; its output is one child stage's output.

    The stage's input becomes the child's initial input. On success the stage's output is the
    output of the child stage `output`; either way the child's `PipelineResult` is in the
    stage result's `metadata["child_result"]` (its `stage_runs`, outputs and errors stay
    inspectable from the parent result).

    Failure crosses the boundary upwards: a failed child run fails this stage, with the
    child's failed stage named in the error (`sub-pipeline 'etl' failed at stage 'load': ...`)
    and in `metadata["child_failed_stage"]`, so the parent's `fail_fast` and retry apply.
    Cancellation crosses it downwards: when the parent cancels this stage (fail-fast, timeout,
    cancel), the child run is cancelled with it, because the child runs inside this stage's
    call. A child run that was cancelled while the parent was not fails this stage.

    Time and flow control: the child runs on `executor` when one is given (its `timeout_ms`, if
    any, then also bounds the child run). Without `executor`, the child runs on a plain
    `PipelineExecutor` with the clock, runners, resources and middleware of the parent run that
    calls this stage, so a `FakeClock` in a test drives the child's retry waits and timeouts
    too, and the child's `uses=` share the parent's limits; outside any run, real time. `timeout_ms` on this stage's `StageDefinition` bounds the child as seen
    from the parent.

    Args:
        definition: The child pipeline.
        output: The id of the child stage whose output is this stage's output. Default: the
            child's single sink (the one stage no other stage takes as input).
        name: The stage's name (default: the child definition's name).
        context: `"shared"` (default): the child uses the parent's context (state, metrics,
            deps, services, cancellation are shared). `"isolated"`: a fresh context with the
            parent's `deps`, services and `cancel_token` but its own empty state and metrics.
            Or a callable `parent_context -> child_context` for anything else.
        executor: The executor running the child (see "Time" above).

    Raises:
        DefinitionError: `output` names no stage of the child, or it was not given and the
            child has several sinks (the message names them) or none.
    """

    def __init__(
        self,
        definition: PipelineDefinition,
        *,
        output: str | None = None,
        name: str | None = None,
        context: ContextMode | Callable[[PipelineContext[Any]], PipelineContext[Any]] = "shared",
        executor: PipelineExecutor | None = None,
    ) -> None:
        owner = f"SubPipeline {definition.name!r}"
        ids = [s.id for s in definition.stages]
        if output is None:
            output = _single_sink(definition, owner)
        elif output not in ids:
            known = ", ".join(repr(i) for i in ids) or "none"
            raise DefinitionError(
                owner, "output", f"is {output!r}, not a stage of the child", f"use one of {known}"
            )
        if not (callable(context) or context in ("shared", "isolated")):
            raise DefinitionError(
                owner,
                "context",
                f"is {context!r}",
                'use "shared", "isolated" or a function parent_context -> child_context',
            )
        self.definition = definition
        """The child pipeline."""
        self.output = output
        """The id of the child stage whose output this stage returns."""
        self.context_mode = context
        """How the child's context is made (`"shared"`, `"isolated"` or a factory)."""
        self.executor = executor
        """The executor running the child, or None for one on the parent run's clock."""
        self._name = name if name is not None else definition.name

    @property
    def name(self) -> str:
        """The stage's name (default: the child definition's name)."""
        return self._name

    async def execute(self, input: Any, context: PipelineContext[Any], /) -> StageResult[Any]:
        """Run the child on `input` and return the output of its `output` stage."""
        child_context = self._child_context(context)
        executor = self.executor
        if executor is None:
            scope = current_stage.get()
            if scope is None:
                executor = PipelineExecutor(clock=current_clock.get())
            else:  # the parent run's clock, runners, resources and middleware
                env = scope[0]
                extra = {k: v for k, v in env.runners.items() if k not in (INLINE, THREADS)}
                executor = PipelineExecutor(
                    clock=env.clock,
                    runners=extra,
                    resources=env.resources,
                    middleware=env.middleware,
                )
        child = await executor.execute(self.definition, input, child_context)
        metadata: dict[str, Any] = {CHILD_RESULT: child}
        if child.success:
            return StageResult.success(child.outputs.get(self.output), metadata=metadata)
        failed = _failed_child_stage(child, self.definition)
        where = f"sub-pipeline {self.definition.name!r}"
        if failed is not None:
            metadata[CHILD_FAILED_STAGE] = failed
            error = child.stage_results[failed].error
            return StageResult.failure(
                f"{where} failed at stage {failed!r}: {error}", metadata=metadata
            )
        if child.cancelled_stages and context.is_cancelled():
            return StageResult.cancelled(f"{where} cancelled: {child.error}", metadata=metadata)
        return StageResult.failure(f"{where} failed: {child.error}", metadata=metadata)

    def _child_context(self, parent: PipelineContext[Any]) -> PipelineContext[Any]:
        mode = self.context_mode
        if mode == "shared":
            return parent
        if mode == "isolated":
            return PipelineContext(
                deps=parent.deps, cancel_token=parent.cancel_token, **parent._services
            )
        assert callable(mode)  # checked in __init__
        return mode(parent)

    def __repr__(self) -> str:
        return f"SubPipeline({self.definition.name!r}, output={self.output!r})"


def _single_sink(definition: PipelineDefinition, owner: str) -> str:
    used = {dep for s in definition.stages for dep in s.inputs}
    sinks = list(dict.fromkeys(s.id for s in definition.stages if s.id not in used))
    if len(sinks) == 1:
        return sinks[0]
    if not sinks:
        problem = "was not given and the child has no sink stage"
        raise DefinitionError(owner, "output", problem, "pass output='<stage id>'")
    names = ", ".join(repr(s) for s in sinks)
    raise DefinitionError(
        owner,
        "output",
        f"was not given and the child has several sink stages ({names})",
        f"pass output= one of {names}",
    )


def _failed_child_stage(child: PipelineResult, definition: PipelineDefinition) -> str | None:
    """The child stage to blame: the first critical failed one, else the first failed one."""
    failed = [
        sid
        for sid in child.failed_stages
        if sid in child.stage_results and child.stage_results[sid].status is StageStatus.FAILED
    ]
    ids = {s.id for s in definition.stages}
    critical = [sid for sid in failed if sid in ids and definition.get_stage(sid).critical]
    blamed = critical or failed
    return blamed[0] if blamed else None

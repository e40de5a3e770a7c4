"""The `PipelineStage` protocol a stage object satisfies; no base class is needed.

How the executor calls a stage (retries, timeouts, fan-out) lives in `pipeline._invoke`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from pipeline.context import PipelineContext
    from pipeline.result import StageResult

InT_contra = TypeVar("InT_contra", contravariant=True)
OutT = TypeVar("OutT")


@runtime_checkable
class PipelineStage(Protocol[InT_contra, OutT]):
    """A stage: a `name` and `async execute(input, context) -> StageResult[OutT]`.

    The parameters of `execute` are positional-only here, so stages may name them freely.
    """

    @property
    def name(self) -> str:
        """A human-readable name (the stage id in the definition is what identifies it)."""
        ...

    async def execute(
        self, input: InT_contra, context: PipelineContext[Any], /
    ) -> StageResult[OutT]:
        """Run the stage once on `input`."""
        ...

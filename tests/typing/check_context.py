"""Typing checks: contexts, and stage classes written as the original README writes them."""

from __future__ import annotations

from typing import Any, assert_type

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineStage,
    StageDefinition,
    StageResult,
)


class Plain:
    """A stage annotated with a bare `PipelineContext`, as the seed README does."""

    name = "plain"

    async def execute(self, input: int, context: PipelineContext) -> StageResult[str]:
        return StageResult.success(str(input))


class Deps:
    token: str = "t"


def check_contexts() -> None:
    assert_type(PipelineContext(), PipelineContext[None])
    assert_type(PipelineContext(deps=Deps()), PipelineContext[Deps])
    bare: PipelineContext = PipelineContext(deps=Deps())
    assert_type(bare, PipelineContext[Any])
    stage: PipelineStage[int, str] = Plain()
    PipelineDefinition("p", [StageDefinition("plain", stage)])

"""A stage's returned result gets its stage's name; a result anyone else holds never changes.

The executor names an unnamed result in place when only it holds the result (a speed trick in
`pipeline._attempt.named`) and copies it otherwise: these tests pin both sides.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)
from pipeline.result import UNKNOWN_STAGE

pytestmark = pytest.mark.anyio


class Fresh:
    name = "fresh"

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(input + 1)


class Keeps:
    """Keeps every result it returns (a user's memo, say)."""

    name = "keeps"

    def __init__(self) -> None:
        self.kept: list[StageResult[int]] = []

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
        result = StageResult.success(input + 1)
        self.kept.append(result)
        return result


SHARED = StageResult.success(7)


class ReturnsShared:
    name = "shared"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[int]:
        return SHARED


async def test_every_returned_result_carries_its_stage_name() -> None:
    keeps = Keeps()
    pipeline = PipelineDefinition(
        "names",
        [
            StageDefinition("a", Fresh()),
            StageDefinition("b", keeps, inputs=["a"]),
            StageDefinition("c", ReturnsShared(), inputs=["b"]),
            StageDefinition("d", ReturnsShared(), inputs=["b"]),
        ],
    )
    result = await PipelineExecutor().execute(pipeline, 1)
    assert {sid: r.stage_name for sid, r in result.stage_results.items()} == {
        "a": "a",
        "b": "b",
        "c": "c",
        "d": "d",
    }
    assert result.outputs == {"a": 2, "b": 3, "c": 7, "d": 7}
    # What the stages hold is untouched: the executor named copies of those.
    assert keeps.kept[0].stage_name == UNKNOWN_STAGE
    assert SHARED.stage_name == UNKNOWN_STAGE
    assert result.stage_results["b"] is not keeps.kept[0]

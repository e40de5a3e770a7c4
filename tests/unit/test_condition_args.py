"""Conditions that ask for their stage's input and the outputs so far (`when:` files use it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pipeline import PipelineContext, PipelineDefinition, PipelineExecutor, StageDefinition
from pipeline._env import CONDITION_ARGS_ATTR
from pipeline.functions import stage

if TYPE_CHECKING:
    from collections.abc import Mapping

pytestmark = pytest.mark.anyio


@stage
async def double(x: int, context: PipelineContext[Any]) -> int:
    return x * 2


@stage
async def plus_one(x: int, context: PipelineContext[Any]) -> int:
    return x + 1


class _Seen:
    def __init__(self, verdict: bool) -> None:
        self.verdict = verdict
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        setattr(self, CONDITION_ARGS_ATTR, True)

    def __call__(
        self,
        context: PipelineContext[Any],
        value: Any = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> bool:
        assert outputs is not None
        self.calls.append((value, dict(outputs)))
        with pytest.raises(TypeError):
            outputs["x"] = 1  # type: ignore[index]  # read-only
        return self.verdict


@pytest.mark.parametrize("verdict", [True, False])
async def test_a_condition_marked_for_arguments_gets_input_and_finished_outputs(
    verdict: bool,
) -> None:
    seen = _Seen(verdict)
    definition = PipelineDefinition(
        "p",
        [
            StageDefinition("a", double),
            StageDefinition("b", plus_one, inputs=["a"], condition=seen),
        ],
    )
    result = await PipelineExecutor().execute(definition, 5)
    assert seen.calls == [(10, {"a": 10})]
    assert result.outputs.get("b") == (11 if verdict else None)
    assert result.stage_results["b"].status == ("succeeded" if verdict else "skipped")

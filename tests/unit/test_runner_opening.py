"""Runners the executor opens for a run: never for an invalid definition, and a runner that
cannot open is a failed result naming it, never an exception out of `execute` (SPEC 4, 9)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
)
from pipeline.events import RunFinished

pytestmark = pytest.mark.anyio


class Counting:
    """A runner that is an async context manager, counting how often it was opened."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.opened = 0
        self.closed = 0

    async def __aenter__(self) -> Counting:
        if self.fail:
            raise ConnectionError("scheduler unreachable")
        self.opened += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed += 1

    async def run(self, stage: Any, input: Any, context: PipelineContext[Any]) -> Any:
        return await stage.execute(input, context)


async def double(x: int, ctx: PipelineContext[Any]) -> int:
    return x * 2


async def test_a_runner_is_opened_and_closed_around_each_run() -> None:
    runner = Counting()
    executor = PipelineExecutor(runners={"pool": runner})
    pipeline = PipelineDefinition("p", [StageDefinition("a", FunctionStage(double), runner="pool")])
    first = await executor.execute(pipeline, 2)
    second = await executor.execute(pipeline, 3)
    assert (first.outputs, second.outputs) == ({"a": 4}, {"a": 6})
    assert (runner.opened, runner.closed) == (2, 2)


async def test_an_invalid_definition_opens_no_runner() -> None:
    runner = Counting()
    executor = PipelineExecutor(runners={"pool": runner})
    pipeline = PipelineDefinition(
        "p", [StageDefinition("a", FunctionStage(double), runner="pool", inputs=["missing"])]
    )
    result = await executor.execute(pipeline, 2)
    assert result.failed_stages == ["validation"]
    assert runner.opened == 0


class Seen:
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_event(self, event: object) -> None:
        self.events.append(event)


async def test_a_runner_that_cannot_open_is_a_failed_result_naming_it() -> None:
    seen = Seen()
    executor = PipelineExecutor(runners={"cluster": Counting(fail=True)}, observers=[seen])
    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("a", FunctionStage(double), runner="cluster"),
            StageDefinition("b", FunctionStage(double)),
        ],
    )
    result = await executor.execute(pipeline, 2)
    assert not result.success
    assert result.failed_stages == ["runners"]
    assert result.error is not None
    assert "runner 'cluster' could not start: ConnectionError: scheduler unreachable" in (
        result.error
    )
    assert "'a'" in result.error
    assert result.metadata["runner_errors"] == {
        "cluster": "runner 'cluster' could not start: ConnectionError: scheduler unreachable"
    }
    assert isinstance(seen.events[-1], RunFinished)  # observers still see the run end

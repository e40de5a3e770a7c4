"""Helpers shared by the executor tests: a function-backed stage and a two-backend runner."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import pytest

from pipeline import PipelineContext, StageResult

Body = Callable[[Any, PipelineContext[Any]], Awaitable[StageResult[Any]]]
Backend = Literal["asyncio", "trio"]
BACKENDS: list[Backend] = ["asyncio", "trio"]
Scenario = Callable[[], Awaitable[None]]


def on_both_backends(scenario: Scenario) -> Callable[[str], None]:
    """Turn an async scenario into a sync test parametrised over the anyio backends."""

    @pytest.mark.parametrize("backend", BACKENDS)
    def test(backend: str) -> None:
        anyio.run(scenario, backend=backend)

    test.__doc__ = scenario.__doc__
    return test


class Fn:
    """A stage running `body`, counting calls and recording inputs."""

    def __init__(self, body: Body, name: str = "fn") -> None:
        self.body = body
        self.name = name
        self.calls = 0
        self.inputs: list[Any] = []

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        self.calls += 1
        self.inputs.append(input)
        return await self.body(input, context)


def const(value: Any) -> Fn:
    """A stage returning `value`."""

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(value)

    return Fn(body)


def echo() -> Fn:
    """A stage returning its input."""

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)

    return Fn(body)


def fail(error: str) -> Fn:
    """A stage returning a failure with `error`."""

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.failure(error)

    return Fn(body)


def raising(exc: Exception) -> Fn:
    """A stage raising `exc`."""

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        raise exc

    return Fn(body)

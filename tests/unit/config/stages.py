"""Stages, a context factory and helpers that the config tests reference as `module:attr`."""

from __future__ import annotations

from typing import Any

from pipeline import PipelineContext, PipelineDefinition, StageDefinition, StageResult, stage


class Add:
    """Adds `n` (a class: the file gives `params`)."""

    name = "add"

    def __init__(self, n: int = 1) -> None:
        self.n = n

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(input + self.n)


class Record:
    """Returns the input it got and records it in the state (`seen.<id>`)."""

    name = "record"

    def __init__(self, key: str = "seen") -> None:
        self.key = key

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        context.set_state(self.key, input)
        return StageResult.success(input)


class Pair:
    """Takes a tuple of two inputs (the loader hands it a tuple, as the builder does)."""

    name = "pair"

    async def execute(
        self, input: tuple[int, int], context: PipelineContext[Any]
    ) -> StageResult[list[int]]:
        first, second = input
        return StageResult.success([first, second])


class Facts:
    """Sets the state and metrics the CEL operator table reads, returns a record."""

    name = "facts"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        context.set_state("user", {"email": "ann@trusted-domain.com", "roles": ["admin", "dev"]})
        context.set_state("risk", 0.75)
        context.set_state("nothing", None)
        context.add_metric("amounts", [1000.0, 4000.0, 10000.0])
        context.add_metric("calls", 3)
        return StageResult.success({"confidence": 0.7, "tier": "gold", "scores": [3, 5, 8]})


@stage
async def double(x: int, context: PipelineContext[Any]) -> int:
    """A `@stage` function (an instance: used as is)."""
    return x * 2


async def triple(x: int, context: PipelineContext[Any]) -> int:
    """A plain function (the loader wraps it as a function stage)."""
    return x * 3


ADD_TEN = Add(10)
"""A module-level instance (used as is)."""

NOT_A_STAGE = 42


class Flaky(Exception):
    """An exception class for `retry_on`."""


def retry_always(failure: object) -> bool:
    """A `retry_if` function."""
    return True


class Cranky:
    """A class whose constructor raises."""

    name = "cranky"

    def __init__(self) -> None:
        msg = "no"
        raise RuntimeError(msg)

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)  # pragma: no cover


def make_context() -> PipelineContext[Any]:
    """The `--context` factory: a context with a service."""
    return PipelineContext(config={"greeting": "hello"})


def make_deps() -> dict[str, int]:
    """A `--context` factory returning plain dependencies (they become `deps`)."""
    return {"offset": 100}


class UsesDeps:
    """Adds `context.deps["offset"]`."""

    name = "uses_deps"

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(input + context.deps["offset"])


class Greets:
    """Reads the `config` service."""

    name = "greets"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[str]:
        return StageResult.success(f"{context.config['greeting']} {input}")


DEPS_PIPELINE = PipelineDefinition("deps", [StageDefinition("a", UsesDeps())])
"""A Python definition whose stage needs `deps` (for `run module:attr --context ...`)."""

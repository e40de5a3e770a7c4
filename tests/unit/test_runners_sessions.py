"""Runners that are async context managers are entered for the runs that use them (SPEC 9).

A custom runner with `__aenter__`/`__aexit__` is entered around each run whose stages name
it, and left alone by runs that do not use it; the built-in remote runners count their entries,
so a caller's own `async with runner:` keeps them open across runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from pipeline import PipelineContext, PipelineDefinition, PipelineExecutor, StageDefinition
from pipeline.testing import ScriptedStage
from tests.unit._support import on_both_backends

if TYPE_CHECKING:
    from types import TracebackType

    from pipeline.protocol import PipelineStage


class Session:
    """A custom runner that records when it is entered, left and used."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def __aenter__(self) -> Session:
        self.log.append("enter")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.log.append("exit")

    async def run(
        self, stage: PipelineStage[Any, Any], input: Any, context: PipelineContext[Any]
    ) -> Any:
        self.log.append("run")
        return await stage.execute(input, context)


@on_both_backends
async def test_a_runner_is_entered_around_each_run_that_uses_it() -> None:
    session = Session()
    executor = PipelineExecutor(runners={"s": session})
    uses = PipelineDefinition(
        "uses",
        [
            StageDefinition("a", ScriptedStage(1, repeat_last=True), runner="s"),
            StageDefinition("b", ScriptedStage(2, repeat_last=True), runner="s", inputs=["a"]),
        ],
    )
    ignores = PipelineDefinition("ignores", [StageDefinition("c", ScriptedStage(3))])
    with anyio.fail_after(10):
        first = await executor.execute(uses)
        other = await executor.execute(ignores)
        again = await executor.execute(uses)
    assert [first.success, other.success, again.success] == [True, True, True]
    # Once per run that names it (not once per stage), never for a run that does not.
    assert session.log == ["enter", "run", "run", "exit", "enter", "run", "run", "exit"]

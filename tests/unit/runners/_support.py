"""Helpers shared by the runner tests: stage bodies that run in workers, and waits.

The bodies are pickled by value (this module is registered with cloudpickle), so worker
processes never import the tests. Blocked work waits on a file that the test creates, never on
a sleep in the test; every wait here is bounded.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle  # type: ignore[import-untyped]  # no stubs

from pipeline import ExecutionPattern, FunctionStage, PipelineContext, StageDefinition

if TYPE_CHECKING:
    from pipeline.events import PipelineEvent

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests

GUARD_S = 20
"""Bound on any one run or wait here (a hang fails the test instead of the suite)."""


def works_for(seconds: float) -> Any:
    """A body that works (sleeps, in its worker) for `seconds`, then returns its input."""

    def body(x: Any, ctx: PipelineContext[Any]) -> Any:
        time.sleep(seconds)  # noqa: TID251  # the work itself, in a worker process
        return x

    return body


def blocks_until(release: str, started: str | None = None, fail: Any = None) -> Any:
    """A body marking that it started (a file named after its input in `started`), failing
    for input `fail`, else waiting (at most 10 s) for the release file; returns its input."""

    def body(x: Any, ctx: PipelineContext[Any]) -> Any:
        if started is not None:
            Path(started, f"{x}").touch()
        if fail is not None and x == fail:
            raise RuntimeError(f"item {x} failed")
        deadline = time.monotonic() + 10
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # noqa: TID251  # in a worker process, not a loop
        return x

    return body


class Collect:
    """A sync observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent) -> None:
        self.events.append(event)


def fan(fn: Any, **kw: Any) -> StageDefinition:
    """A FAN_OUT stage `each` of `fn` on the runner named `remote`."""
    return StageDefinition(
        "each", FunctionStage(fn), pattern=ExecutionPattern.FAN_OUT, runner="remote", **kw
    )


async def until(predicate: Any) -> None:
    """Wait (polling, bounded by `GUARD_S`) until `predicate()` holds."""
    with anyio.fail_after(GUARD_S):
        while not predicate():  # noqa: ASYNC110  # counters updated in threads have no event
            await anyio.sleep(0.01)

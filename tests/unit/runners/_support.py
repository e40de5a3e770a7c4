"""Helpers shared by the runner tests: stage bodies that run in workers, and waits.

The bodies are pickled by value (this module is registered with cloudpickle), so worker
processes never import the tests. Blocked work waits on a file that the test creates, never on
a sleep in the test; every wait here is bounded.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
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


def work(x: Any, ctx: PipelineContext[Any]) -> Any:
    """A body driven by `(kind, arg)` inputs: what the worker does for this call or item.

    `quick` (0), `echo` (arg), `sleep` (arg seconds, returns arg), `wait` for file arg (at most
    30 s; 1), `mark_then_wait` (a file in folder arg[0], then wait for file arg[1]; 2), `touch`
    file arg, `len` of arg, `die` after arg seconds, `die_after_reply` (its process exits
    0.2 s after replying).
    """
    kind, arg = x
    if kind == "quick":
        return 0
    if kind == "echo":
        return arg
    if kind == "sleep":
        time.sleep(arg)  # noqa: TID251  # the work itself, in a worker process
        return arg
    if kind == "wait":
        _wait_for(arg)
        return 1
    if kind == "mark_then_wait":
        Path(arg[0], uuid.uuid4().hex).touch()
        _wait_for(arg[1])
        return 2
    if kind == "touch":
        Path(arg).touch()
        return "touched"
    if kind == "len":
        return len(arg)
    if kind == "die":
        time.sleep(arg)  # noqa: TID251
        os._exit(3)
    if kind == "die_after_reply":
        time.sleep(0.3)  # noqa: TID251
        threading.Timer(0.2, os._exit, [7]).start()
        return "replied"
    raise AssertionError(kind)


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + 30
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.001)  # noqa: TID251  # polling a file, in a worker process


WORK = FunctionStage(work)
"""`work` as a stage."""


def pool_args(xs: list[Any], *, streamed: bool = False) -> tuple[Any, ...]:
    """What `ProcessRunner._exchange` passes to `ProcessPool.call` for `WORK` on inputs `xs`."""
    from pipeline.runners._remote import _snapshot, pickle_inputs
    from pipeline.runners._worker import Call

    blob = cloudpickle.dumps(WORK)
    snapshot = _snapshot(PipelineContext(), "s")
    call_blob, _ = pickle_inputs(Call("s", list(xs), snapshot, [None] * len(xs)))
    return (b"k" * 16, blob, call_blob, streamed)


def wait_until(predicate: Any) -> None:
    """Wait (blocking, polling, bounded by `GUARD_S`) until `predicate()` holds."""
    deadline = time.monotonic() + GUARD_S
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.002)  # noqa: TID251  # polling, bounded above

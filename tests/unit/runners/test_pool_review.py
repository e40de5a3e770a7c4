"""Regression tests from the adversarial review of `ProcessPool` and per-item batch timeouts.

Each one failed before its fix. Runs on both anyio backends (the `anyio_backend` fixture of
this package's conftest).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import anyio
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
)
from pipeline.runners import ProcessRunner
from tests.unit.runners._support import WORK, fan

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests

pytestmark = pytest.mark.anyio

PARENT_PID = os.getpid()


async def call(runner: ProcessRunner, x: Any) -> Any:
    replies = await runner.run_inputs(WORK, [x], PipelineContext(), stage_id="s")
    assert replies[0].ok, replies[0].payload
    return replies[0].payload


async def outcome(runner: ProcessRunner, x: Any, bound_s: float = 20) -> tuple[str, Any]:
    """`("ok", value)`, `("hung", None)` past `bound_s`, or `("error", exception)`."""
    try:
        with anyio.fail_after(bound_s):
            return "ok", await call(runner, x)
    except TimeoutError:
        return "hung", None
    except Exception as exc:  # what the call raised is the outcome
        return "error", exc


# -- batches with timeout_ms -------------------------------------------------------------------


def stuck_once(at: int, marker: str, hold_s: float) -> Any:
    """Item `at` blocks `hold_s` seconds on its first run only."""

    def body(x: int, ctx: PipelineContext[Any]) -> int:
        if x == at and not Path(marker).exists():
            Path(marker).touch()
            time.sleep(hold_s)  # noqa: TID251  # stuck, in a worker process
        return x * 10

    return body


async def test_a_batched_item_timeout_does_not_wait_for_the_stuck_worker(tmp_path: Path) -> None:
    stage = fan(
        stuck_once(2, str(tmp_path / "stuck"), 10.0),
        batch_size=6,
        max_concurrent_fan_out=1,
        timeout_ms=500,
        retry_config=RetryConfig(max_attempts=2, initial_delay_ms=0),
    )
    async with ProcessRunner(2, terminate_on_cancel=False) as runner:
        executor = PipelineExecutor(runners={"remote": runner})
        # The stuck item holds its worker 10 s; waiting for it would trip this bound.
        with anyio.fail_after(5):
            result = await executor.execute(PipelineDefinition("p", [stage]), list(range(6)))
    assert result.outputs == {"each": [0, 10, 20, 30, 40, 50]}


# -- scheduling ---------------------------------------------------------------------------------


def sleeps(x: int, ctx: PipelineContext[Any]) -> int:
    """Item 0 takes 1.5 s, item 1 0.05 s, item 2 nothing; each returns its worker's pid."""
    time.sleep({0: 1.5, 1: 0.05, 2: 0.0}[x])  # noqa: TID251  # the work itself
    return os.getpid()


async def test_a_call_does_not_wait_behind_a_long_call_while_another_worker_is_idle() -> None:
    # Item 2 must go to the worker that is free after 0.05 s, not wait behind item 0.
    stage = fan(sleeps)
    async with ProcessRunner(2) as runner:
        executor = PipelineExecutor(runners={"remote": runner})
        with anyio.fail_after(20):
            result = await executor.execute(PipelineDefinition("p", [stage]), [0, 1, 2])
    long_one, short_one, third = result.outputs["each"]
    assert long_one != short_one
    assert third != long_one  # it ran on the free worker


# -- worker deaths ------------------------------------------------------------------------------


async def test_a_queued_call_sent_to_a_worker_that_just_died_is_requeued() -> None:
    results: dict[str, Any] = {}
    async with ProcessRunner(1) as runner:
        pool = runner._pool
        assert pool is not None

        async def one(key: str, x: Any) -> None:
            results[key] = await outcome(runner, x)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "A", ("die_after_reply", None))
            await anyio.sleep(0.01)
            # 100 KB: too big to wait in the busy worker's pipe, so it waits in the queue.
            tg.start_soon(one, "C", ("len", b"x" * 100_000))
            await anyio.sleep(0.05)

            def slow_reader() -> None:  # the reader thread is late (GIL, a busy loop...)
                with pool._lock:
                    time.sleep(1.0)  # noqa: TID251  # A replies, then its worker dies

            await anyio.to_thread.run_sync(slow_reader)
    assert results["A"] == ("ok", "replied")
    assert results["C"] == ("ok", 100_000), results["C"]


async def test_a_call_given_up_in_a_worker_pipe_does_not_run_after_that_worker_dies(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "B-ran"
    results: dict[str, Any] = {}
    async with ProcessRunner(1) as runner:
        async with anyio.create_task_group() as tg:

            async def a() -> None:
                results["A"] = await outcome(runner, ("die", 1.0))

            tg.start_soon(a)
            await anyio.sleep(0.01)
            with anyio.move_on_after(0.2):  # B waits in the worker's pipe behind A
                await call(runner, ("touch", str(marker)))
        await anyio.sleep(1.0)  # the replacement worker is up and idle
    assert results["A"][0] == "error"
    assert isinstance(results["A"][1], BrokenProcessPool)
    assert not marker.exists(), "the call given up on ran after its worker died"


def no_spawn() -> None:
    raise OSError(24, "Too many open files")


async def test_calls_requeued_from_a_dead_worker_go_to_an_idle_one_when_no_replacement_starts() -> (
    None
):
    async with ProcessRunner(2) as runner:
        pool = runner._pool
        assert pool is not None
        pool._spawn = no_spawn  # type: ignore[method-assign,assignment]  # e.g. EMFILE
        results: dict[str, Any] = {}

        async def one(key: str, x: Any, bound_s: float = 20) -> None:
            results[key] = await outcome(runner, x, bound_s)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "A", ("die", 0.5))
            await anyio.sleep(0.01)
            tg.start_soon(one, "X", ("sleep", 0.05))  # the other worker: idle after 0.05 s
            await anyio.sleep(0.01)
            # B waits in the dying worker's pipe, then is requeued.
            tg.start_soon(one, "B", ("sleep", 0.0), 4)
    assert results["X"] == ("ok", 0.05)
    assert results["A"][0] == "error"
    assert isinstance(results["A"][1], BrokenProcessPool)
    assert results["B"] == ("ok", 0.0), results["B"]


async def test_a_pool_left_without_workers_fails_new_calls_instead_of_hanging() -> None:
    async with ProcessRunner(1) as runner:
        pool = runner._pool
        assert pool is not None
        pool._spawn = no_spawn  # type: ignore[method-assign,assignment]  # e.g. EMFILE
        first = await outcome(runner, ("die", 0.1))
        await anyio.sleep(0.5)  # the replacement failed to start
        later = await outcome(runner, ("sleep", 0.0), 4)
    assert first[0] == "error"
    assert isinstance(first[1], BrokenProcessPool)
    assert later[0] == "error", later  # today: ("hung", None)


# -- failures in the worker outside the stage ---------------------------------------------------


def _rebuild(parent: int) -> Any:
    if os.getpid() != parent:
        raise ModuleNotFoundError("No module named 'only_in_parent'")
    return Unloadable()


class Unloadable:
    """Pickles in the parent; fails to unpickle in a worker (a module it cannot import)."""

    def __reduce__(self) -> Any:
        return (_rebuild, (PARENT_PID,))


def echo(x: Any, ctx: PipelineContext[Any]) -> str:
    return "ran"


async def test_an_input_that_cannot_be_unpickled_in_the_worker_fails_with_its_own_error() -> None:
    async with ProcessRunner(1) as runner:
        try:
            with anyio.fail_after(20):
                replies = await runner.run_inputs(
                    FunctionStage(echo), [Unloadable()], PipelineContext(), stage_id="s"
                )
        except Exception as exc:  # raising the worker's error is fine too
            text = f"{type(exc).__name__}: {exc}"
        else:
            assert not replies[0].ok
            text = f"{replies[0].payload.type_name}: {replies[0].payload.text}"
    assert "only_in_parent" in text, text


async def test_closing_while_a_replacement_worker_starts_reaps_it_and_closes_its_pipes() -> None:
    runner = ProcessRunner(1)
    await runner.__aenter__()
    pool = runner._pool
    assert pool is not None
    real_spawn = pool._spawn
    spawned: list[Any] = []

    def slow_spawn() -> Any:
        worker = real_spawn()
        spawned.append(worker)
        time.sleep(0.5)  # noqa: TID251  # the pool closes meanwhile
        return worker

    pool._spawn = slow_spawn  # type: ignore[method-assign]
    pid = pool._workers[0].process.pid
    assert pid is not None
    os.kill(pid, 9)
    with anyio.fail_after(10):
        while not spawned:  # noqa: ASYNC110  # the reader thread is inside slow_spawn
            await anyio.sleep(0.01)
        await runner.__aexit__(None, None, None)
    [worker] = spawned
    with pytest.raises(ValueError, match="closed"):  # `Process.close()` only once reaped
        _ = worker.process.exitcode
    assert worker.outbox.closed, "its pipe ends were left open"
    assert worker.inbox.closed, "its pipe ends were left open"

"""Regression tests from the second adversarial review of `ProcessPool` and `DaskRunner`.

Each one failed before its fix.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest

import pipeline.runners._pool as pool_module
from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
    StageDefinition,
)
from pipeline.errors import UnpicklableError
from pipeline.runners import ProcessRunner
from pipeline.runners._pool import ProcessPool
from pipeline.runners._worker import serve
from tests.unit.runners._support import WORK, pool_args, wait_until

from .conftest import open_dask_cluster

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests


# -- ProcessPool: a kill meant for a call that already returned -------------------------------


def test_cancelling_a_call_that_already_returned_does_not_run_the_pipelined_call_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any call may wait in a busy worker's pipe (no timing involved).
    monkeypatch.setattr(pool_module, "PIPELINE_MAX_S", 3600.0)
    runs = tmp_path / "runs"
    runs.mkdir()
    pool = ProcessPool(multiprocessing.get_context("forkserver"), 2, serve)
    pool.start()
    try:
        warm = threading.Event()
        pool.submit(pool.call(pool_args([("quick", None)]), lambda p, v, last: warm.set()))
        assert warm.wait(20)  # worker 0's last call is known (short)
        w0 = pool._workers[0]
        reader_busy, release_reader = threading.Event(), threading.Event()

        def blocking(position: int, payload: Any, last: bool) -> None:
            reader_busy.set()
            release_reader.wait(30)  # the reader thread lags behind (busy with other replies)

        b_done = threading.Event()
        a = pool.call(pool_args([("wait", str(tmp_path / "goA"))]), lambda p, v, last: None)
        d = pool.call(pool_args([("wait", str(tmp_path / "goD"))]), blocking)
        b = pool.call(
            pool_args([("mark_then_wait", (str(runs), str(tmp_path / "goB")))]),
            lambda p, v, last: b_done.set() if last else None,
        )
        pool.submit(a)  # worker 0
        pool.submit(d)  # worker 1
        pool.submit(b)  # waits in worker 0's pipe, behind a
        assert a.worker is w0
        assert b.worker is w0
        (tmp_path / "goD").touch()
        assert reader_busy.wait(20)  # the reader is inside d's delivery
        (tmp_path / "goA").touch()  # a returns (its reply waits unread); worker 0 starts b
        wait_until(lambda: any(runs.iterdir()))
        pool.cancel(a, terminate=True)  # the caller gave up on a just as it returned
        release_reader.set()
        (tmp_path / "goB").touch()
        assert b_done.wait(30)
        assert len(list(runs.iterdir())) == 1  # b ran once
    finally:
        release_reader.set()
        pool.close(abandoned=True)


@pytest.mark.parametrize("abandoned", [True, False])
def test_closing_a_pool_raises_nothing_in_its_reader_thread(
    monkeypatch: pytest.MonkeyPatch, abandoned: bool
) -> None:
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    context = multiprocessing.get_context("forkserver")
    for _ in range(25):  # the race shows in about one close in four
        pool = ProcessPool(context, 4, serve)
        pool.start()
        pool.close(abandoned=abandoned)
        if errors:
            break
    assert errors == []


def dies_on_die(x: Any, ctx: PipelineContext[Any]) -> Any:
    if x == "die":
        os._exit(3)
    return x


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_worker_death_in_a_batch_with_an_unpicklable_input_fails_the_item(backend: str) -> None:
    stage = StageDefinition(
        "each",
        FunctionStage(dies_on_die),
        pattern=ExecutionPattern.FAN_OUT,
        runner="remote",
        batch_size=2,
        timeout_ms=20_000,
        # item 1 (refused: it does not pickle) waits for its retry while item 0 runs
        retry_config=RetryConfig(
            max_attempts=2,
            initial_delay_ms=3000,
            retry_if=lambda exc: isinstance(exc, UnpicklableError),
        ),
    )

    async def main() -> str:
        async with ProcessRunner(1) as runner:
            executor = PipelineExecutor(runners={"remote": runner})
            with anyio.fail_after(8):
                result = await executor.execute(
                    PipelineDefinition("p", [stage]), ["die", threading.Lock()]
                )
        return result.stage_results["each"].error or ""

    error = anyio.run(main, backend=backend)
    assert "died with exit code 3" in error, error


# -- DaskRunner -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    pytest.importorskip("distributed")
    cluster, client = open_dask_cluster(1)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_dask_calls_made_at_once_from_two_event_loops_all_return(dask_client: Any) -> None:
    # One runner shared by two event loops (asyncio and trio, each in its own thread), each
    # making calls at the same time: each loop's calls are sent by its own flush.
    from pipeline.runners.dask import DaskRunner

    runner = DaskRunner(client=dask_client)
    anyio.run(runner.__aenter__)
    try:
        outcomes: dict[str, list[Any]] = {}
        start = threading.Barrier(2)

        def in_own_loop(name: str, backend: str) -> None:
            async def main() -> None:
                got: list[Any] = []

                async def one(i: int) -> None:
                    replies = await runner.run_inputs(
                        WORK, [("quick", None)], PipelineContext(), stage_id="s"
                    )
                    got.append(replies[0].payload)

                start.wait(timeout=10)
                try:
                    with anyio.fail_after(20):
                        async with anyio.create_task_group() as tg:
                            for i in range(20):
                                tg.start_soon(one, i)
                except TimeoutError:
                    got.append("hung")
                outcomes[name] = got

            anyio.run(main, backend=backend)

        threads = [
            threading.Thread(target=in_own_loop, args=("a", "asyncio")),
            threading.Thread(target=in_own_loop, args=("b", "trio")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert outcomes == {"a": [0] * 20, "b": [0] * 20}
        assert runner.in_flight == 0
    finally:
        anyio.run(runner.__aexit__, None, None, None)


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["before_flush", "in_flight"])
async def test_a_dask_call_pending_when_the_runner_closes_fails_instead_of_hanging(
    dask_client: Any, when: str
) -> None:
    from pipeline.runners.dask import DaskRunner

    runner = DaskRunner(client=dask_client)
    await runner.__aenter__()
    outcome: list[str] = []

    async def call() -> None:
        try:
            with anyio.fail_after(4):
                await runner.run_inputs(WORK, [("sleep", 0.5)], PipelineContext(), stage_id="s")
            outcome.append("returned")
        except TimeoutError:
            outcome.append("hung")
        except Exception:  # failing is the expected outcome
            outcome.append("failed")

    async def close() -> None:
        if when == "before_flush":
            runner._exit()  # what __aexit__ runs in a thread, done before this turn's flush
        else:
            while not runner.in_flight:  # noqa: ASYNC110  # a counter updated in threads
                await anyio.sleep(0.01)
            await runner.__aexit__(None, None, None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        tg.start_soon(close)
    assert outcome == ["failed"]

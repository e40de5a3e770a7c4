"""How remote results reach the run without a thread per call (SPEC section 9, issue 13).

`LoopInbox` wakes the event loop once per burst of finished calls; `DaskRunner`'s gather
thread fetches every finished task in one request. Real time is bounded by `anyio.fail_after`;
blocked work waits on a file, never on a sleep in the test.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    StageDefinition,
)
from pipeline.runners import RemoteRunner
from pipeline.runners._wake import LoopInbox, loop_inbox
from tests.unit.runners._support import GUARD_S, blocks_until, until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pipeline.runners.dask import DaskRunner

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests


# -- LoopInbox ------------------------------------------------------------------------------------
def test_a_burst_of_posts_wakes_the_loop_once_and_runs_them_in_order() -> None:
    wakes: list[Callable[[], object]] = []
    inbox = LoopInbox(wakes.append)  # a loop that runs nothing until told to
    ran: list[int] = []
    for i in range(3):
        inbox.post(lambda i=i: ran.append(i))  # type: ignore[misc]  # default binds i
    assert len(wakes) == 1  # one wake-up for the burst
    wakes[0]()  # the loop gets to it
    assert ran == [0, 1, 2]
    inbox.post(lambda: ran.append(3))  # after a drain, the next post wakes the loop again
    assert len(wakes) == 2
    wakes[1]()
    assert ran == [0, 1, 2, 3]


@pytest.mark.anyio
async def test_posts_from_other_threads_all_run_on_the_loop_thread() -> None:
    inbox = loop_inbox()
    assert loop_inbox() is inbox  # one per loop
    loop_thread = threading.get_ident()
    ran_on: list[int] = []
    done = anyio.Event()
    count = 200

    def record() -> None:
        ran_on.append(threading.get_ident())
        if len(ran_on) == count:
            done.set()

    def poster() -> None:
        for _ in range(count // 4):
            inbox.post(record)

    threads = [threading.Thread(target=poster) for _ in range(4)]
    for thread in threads:
        thread.start()
    with anyio.fail_after(GUARD_S):
        await done.wait()
    for thread in threads:
        thread.join()
    assert ran_on == [loop_thread] * count


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_post_after_its_loop_ended_is_dropped_without_raising(backend: str) -> None:
    async def keep() -> LoopInbox:
        return loop_inbox()

    inbox = anyio.run(keep, backend=backend)
    ran: list[bool] = []
    inbox.post(lambda: ran.append(True))  # the pool's thread after the run: no error
    assert ran == []


# -- the Dask gather thread -----------------------------------------------------------------------
class FakeFuture:
    """A finished, failed or cancelled Dask future, as the gather thread sees one."""

    def __init__(self, status: str, value: Any = None) -> None:
        self.status = status
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class FakeClient:
    def __init__(self, *, fail: bool = False) -> None:
        self.gathered: list[list[FakeFuture]] = []
        self.fail = fail

    def gather(self, futures: list[FakeFuture]) -> list[Any]:
        self.gathered.append(futures)
        if self.fail:
            raise OSError("lost a worker while gathering")
        return [f.value for f in futures]


def fetch(client: FakeClient, futures: list[FakeFuture]) -> dict[int, Any]:
    from pipeline.runners.dask import _Gatherer

    got: dict[int, Any] = {}

    def into(i: int) -> Callable[[Any], None]:
        return lambda value: got.__setitem__(i, value)

    gatherer = _Gatherer(client)
    try:
        gatherer._fetch([(f, into(i)) for i, f in enumerate(futures)])
    finally:
        gatherer.stop()
    return got


def test_finished_tasks_are_gathered_in_one_request_and_failures_come_back_as_errors() -> None:
    client = FakeClient()
    cancelled = FakeFuture("cancelled", KeyError("cancelled"))
    futures = [FakeFuture("finished", b"a"), cancelled, FakeFuture("finished", b"c")]
    got = fetch(client, futures)
    assert client.gathered == [[futures[0], futures[2]]]  # one request for both
    assert got[0] == b"a"
    assert got[2] == b"c"
    assert isinstance(got[1], KeyError)  # the call raises it on the loop


def test_when_a_batch_cannot_be_gathered_each_task_is_taken_on_its_own() -> None:
    client = FakeClient(fail=True)
    lost = FakeFuture("finished", OSError("its worker died"))
    got = fetch(client, [FakeFuture("finished", b"a"), lost])
    assert got[0] == b"a"
    assert isinstance(got[1], OSError)


# -- a Dask call that never started ---------------------------------------------------------------


@pytest.fixture(scope="module")
def one_worker() -> Iterator[DaskRunner]:
    """A Dask runner on a one-worker cluster, kept open across this module's tests."""
    from pipeline.runners.dask import DaskRunner
    from tests.unit.runners.conftest import open_dask_cluster

    cluster, client = open_dask_cluster(n_workers=1)
    try:
        runner = DaskRunner(client=client)
        anyio.run(runner.__aenter__)
        try:
            yield runner
        finally:
            anyio.run(runner.__aexit__, None, None, None)
    finally:
        client.close()
        cluster.close()


async def run_on(runner: Any, stage: StageDefinition, initial: Any = None) -> PipelineResult:
    with anyio.fail_after(GUARD_S):
        definition = PipelineDefinition("p", [stage])
        return await PipelineExecutor(runners={"remote": runner}).execute(definition, initial)


@pytest.mark.anyio
async def test_a_queued_dask_call_that_times_out_is_confirmed_stopped_and_not_left_in_flight(
    one_worker: DaskRunner, tmp_path: Path
) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    started.mkdir()
    blockers = StageDefinition(
        "busy",
        FunctionStage(blocks_until(str(release), str(started))),
        runner="remote",
        pattern=ExecutionPattern.FAN_OUT,
        max_concurrent_fan_out=None,
    )
    queued = StageDefinition(
        "queued", FunctionStage(blocks_until(str(release))), runner="remote", timeout_ms=300
    )
    results: list[PipelineResult] = []
    async with anyio.create_task_group() as tg:

        async def busy() -> None:
            results.append(await run_on(one_worker, blockers, [1, 2, 3]))

        tg.start_soon(busy)
        try:
            # One task runs, the others wait on the scheduler: the next one waits too.
            await until(lambda: one_worker.in_flight == 3 and any(started.iterdir()))
            timed_out = await run_on(one_worker, queued, 0)
        finally:
            release.touch()
    (attempt,) = timed_out.stage_runs["queued"].attempt_runs
    assert "Timeout" in (attempt.error or "")
    assert attempt.remote_stopped is True  # cancelled before the worker took it
    assert results[0].outputs["busy"] == [1, 2, 3]
    await until(lambda: one_worker.in_flight == 0)  # the cancelled task was accounted for


# -- the base's default exchange (a backend without done-callbacks) -------------------------------
class ThreadPoolRunner(RemoteRunner):
    """A backend giving only the five blocking hooks: the base waits in a worker thread."""

    def __init__(self) -> None:
        super().__init__()
        self.pool: ThreadPoolExecutor | None = None

    def _open(self) -> None:
        self.pool = ThreadPoolExecutor(2)

    def _close(self, *, abandoned: bool) -> None:
        assert self.pool is not None
        self.pool.shutdown(wait=not abandoned)

    def _submit(self, fn: Callable[..., bytes], *args: Any) -> Future[bytes]:
        assert self.pool is not None
        return self.pool.submit(fn, *args)

    def _wait(self, handle: Future[bytes]) -> bytes:
        return handle.result()

    def _cancel(self, handle: Future[bytes]) -> bool:
        return handle.cancel()


def counts(x: int, ctx: PipelineContext[Any]) -> int:
    if x < 0:
        raise ValueError(f"negative item {x}")
    ctx.increment_metric("seen")
    return x * 2


@pytest.mark.anyio
async def test_a_backend_with_only_blocking_hooks_runs_through_the_default_exchange() -> None:
    runner = ThreadPoolRunner()
    stage = StageDefinition(
        "double", FunctionStage(counts), runner="remote", pattern=ExecutionPattern.FAN_OUT
    )
    context: PipelineContext[None] = PipelineContext()
    executor = PipelineExecutor(runners={"remote": runner})
    with anyio.fail_after(GUARD_S):
        ok = await executor.execute(PipelineDefinition("p", [stage]), [1, 2, 3], context)
    assert ok.outputs["double"] == [2, 4, 6]
    assert context.metrics["seen"] == 3  # remote writes applied as each item returned
    assert runner.calls_sent == 3
    assert runner.in_flight == 0
    single = StageDefinition("double", FunctionStage(counts), runner="remote")
    failed = await run_on(runner, single, -1)
    assert failed.stage_results["double"].error == "ValueError: negative item -1"
    (attempt,) = failed.stage_runs["double"].attempt_runs
    assert attempt.remote_stopped is True

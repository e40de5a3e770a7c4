"""Regression tests from the third adversarial review (of the "Second review fixes").

Each one failed before its fix.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
from typing import TYPE_CHECKING, Any, cast

import anyio
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest

from pipeline import PipelineContext
from pipeline.errors import RunnerError
from pipeline.runners._pool import ProcessPool
from pipeline.runners._worker import run_call, serve
from tests.unit.runners._support import WORK, pool_args, wait_until

if TYPE_CHECKING:
    from pathlib import Path

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests


def test_terminate_kills_a_hung_streamed_item_whose_earlier_reply_was_unread(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    pool = ProcessPool(multiprocessing.get_context("forkserver"), 2, serve)
    pool.start()
    release_reader = threading.Event()
    try:
        reader_busy = threading.Event()

        def blocking(position: int, payload: Any, last: bool) -> None:
            reader_busy.set()
            release_reader.wait(30)  # the reader thread lags (busy with another reply)

        ended = threading.Event()
        streamed = pool.call(
            pool_args(
                [
                    ("wait", str(tmp_path / "go0")),
                    ("mark_then_wait", (str(runs), str(tmp_path / "x"))),
                ],
                streamed=True,
            ),
            lambda p, v, last: ended.set() if last else None,
        )
        other = pool.call(pool_args([("wait", str(tmp_path / "goD"))], streamed=False), blocking)
        pool.submit(streamed)  # worker 0
        pool.submit(other)  # worker 1
        (tmp_path / "goD").touch()
        assert reader_busy.wait(20)  # the reader is inside `other`'s delivery
        (tmp_path / "go0").touch()  # item 0 returns (its reply waits unread); item 1 hangs
        wait_until(lambda: any(runs.iterdir()))
        pool.cancel(streamed, terminate=True)  # the caller gives up on the call: kill it
        release_reader.set()
        # Item 1 never returns by itself (until file x, 30 s): only a kill ends the call.
        assert ended.wait(10), "the hung item was never killed"
    finally:
        release_reader.set()
        (tmp_path / "x").touch()
        pool.close(abandoned=True)


# -- DaskRunner: a call sent while another loop closes the runner ----------------------------


class _FinishedFuture:
    """A future that has finished by the time it is watched."""

    def __init__(self, value: bytes) -> None:
        self.key = "k"
        self.status = "finished"
        self._value = value

    def add_done_callback(self, callback: Any) -> None:
        callback(self)

    def result(self, timeout: float | None = None) -> bytes:
        return self._value

    def cancel(self) -> None:
        pass


class _SlowSubmitClient:
    """A client whose `submit` is under way while the runner closes (on another loop)."""

    def __init__(self) -> None:
        self.close_now = threading.Event()
        self.closed = threading.Event()

    def run(self, fn: Any) -> None:
        pass

    def submit(self, fn: Any, *args: Any, pure: bool = False) -> _FinishedFuture:
        value = run_call(*args)
        self.close_now.set()
        self.closed.wait(20)  # the runner has closed (its gatherer stopped) meanwhile
        return _FinishedFuture(value)

    def gather(self, futures: list[_FinishedFuture]) -> list[bytes]:
        return [f.result() for f in futures]


def test_dask_call_sent_while_another_loop_closes_the_runner_is_delivered() -> None:
    pytest.importorskip("distributed")
    from pipeline.runners.dask import DaskRunner

    client = _SlowSubmitClient()
    runner = DaskRunner(client=cast("Any", client))
    entered = threading.Event()

    def other_loop() -> None:
        async def hold() -> None:
            async with runner:
                entered.set()
                await anyio.to_thread.run_sync(client.close_now.wait, 20)
            client.closed.set()

        anyio.run(hold)

    thread = threading.Thread(target=other_loop)
    thread.start()
    try:
        assert entered.wait(20)

        async def call() -> None:
            with anyio.fail_after(10):  # delivered: its value, or RunnerError (closed)
                with pytest.raises(RunnerError):
                    await runner.run(WORK, ("echo", 7), PipelineContext())

        with contextlib.suppress(pytest.fail.Exception):  # it returned its value: delivered too
            anyio.run(call)
        assert runner.in_flight == 0
    finally:
        client.close_now.set()
        client.closed.set()
        thread.join(30)

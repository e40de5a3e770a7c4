"""`ProcessRunner`: stages in a pool of local worker processes (`concurrent.futures`).

The pool starts its workers with `forkserver` (Linux) or `spawn`, never `fork`: the parent
runs threads (the event loop's worker threads, maybe a Dask client), and forking a process
with threads can deadlock. Stages, inputs and outputs travel with cloudpickle (extra
`processes`), so stages defined in a script's `__main__` work as long as the script guards
its entry point with `if __name__ == "__main__":` (as every multiprocessing script must).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, final

import anyio

from pipeline.errors import DefinitionError
from pipeline.runners._pickling import cloudpickle_module
from pipeline.runners._remote import RemoteRunner
from pipeline.runners._wake import loop_inbox
from pipeline.runners._worker import replies_from_wire, run_call, warm_up

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.runners._remote import _Job
    from pipeline.runners._worker import Reply


@final
class ProcessRunner(RemoteRunner):
    """Runs stage attempts in a pool of worker processes on this machine.

    A runner runs one attempt (or one batch of fan-out items, `StageDefinition(batch_size=n)`);
    retries, timeouts, the cache and events stay in the executor. On a timeout or cancellation
    a call still queued is cancelled (`remote_stopped=True` on its attempt record); one already
    running cannot be interrupted: its result is dropped (`remote_stopped=False`), and if such
    calls are still running when the runner closes, its worker processes are terminated rather
    than waited for. A worker that dies fails the calls it had; the pool is renewed, and a call
    that finds the pool broken before it was sent goes to the new pool.

    Use it as `PipelineExecutor(runners={"cpu": ProcessRunner()})` and
    `StageDefinition(..., runner="cpu")`. The executor opens the pool for each run; enter it
    yourself (`async with runner:`) to keep one pool across runs.

    Args:
        max_workers: Worker processes (default: the number of CPUs).
        start_method: `"forkserver"` (default on Linux) or `"spawn"` (the default elsewhere).
    """

    def __init__(self, max_workers: int | None = None, *, start_method: str | None = None) -> None:
        cloudpickle_module()  # fail now, naming the extra, rather than at the first run
        workers: object = max_workers
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise DefinitionError(
                "ProcessRunner", "max_workers", f"is {max_workers!r}", "use a positive int or None"
            )
        default = "forkserver" if sys.platform.startswith("linux") else "spawn"
        method = start_method if start_method is not None else default
        if method not in ("forkserver", "spawn"):
            raise DefinitionError(
                "ProcessRunner", "start_method", f"is {start_method!r}",
                'use "forkserver" or "spawn" (fork is unsafe in a process running threads)',
            )  # fmt: skip
        super().__init__()
        self.max_workers = max_workers
        self.start_method = method
        self._pool: ProcessPoolExecutor | None = None

    def _open(self) -> None:
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context(self.start_method)
        pool = ProcessPoolExecutor(self.max_workers, mp_context=context)
        # Start every worker now (they import the library once), not during the first run:
        # a first attempt's timeout must not count a process start.
        workers = self.max_workers or os.cpu_count() or 1
        wait([pool.submit(warm_up) for _ in range(workers)])
        return pool

    def _close(self, *, abandoned: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:  # pragma: no cover - closed without being opened
            return
        if abandoned:
            # Calls given up on may still be running: stop their processes rather than wait.
            processes = getattr(pool, "_processes", None) or {}
            for process in list(processes.values()):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, fn: Callable[..., bytes], *args: Any) -> Future[bytes]:
        pool = self._pool
        assert pool is not None  # submitted only while open
        return pool.submit(fn, *args)

    def _wait(self, handle: Future[bytes]) -> bytes:
        return handle.result()

    async def _exchange(self, job: _Job, key: bytes, blob: bytes, call_blob: bytes) -> list[Reply]:
        """Submit from the event loop and wake it from the future's callback: no thread hop.

        The pool's queue thread does the waiting; the loop is woken once for each burst of
        finished calls (`LoopInbox`). The call was pickled on the loop (inputs are usually
        small; pass paths rather than large data).
        """
        done = anyio.Event()
        inbox = loop_inbox()

        def on_done(_: object) -> None:  # in the pool's result thread
            with self._count_lock:
                self.in_flight -= 1
            inbox.post(done.set)

        pool = self._pool
        try:
            try:
                handle = self._send(job, key, blob, call_blob)
            except BrokenProcessPool:
                # The pool broke before this call (a worker killed by work given up on
                # earlier): nothing was sent, so renew the pool and send it there.
                await anyio.to_thread.run_sync(self._renew, pool)
                pool = self._pool
                handle = self._send(job, key, blob, call_blob)
            handle.add_done_callback(on_done)
            await done.wait()
            reply_blob = handle.result()
        except BrokenProcessPool:
            # A worker died while this call was in the pool (killed, out of memory, a crash in
            # C code): this attempt fails, and the next one (a retry, the next run) gets a
            # fresh pool.
            await anyio.to_thread.run_sync(self._renew, pool)
            raise
        return replies_from_wire(reply_blob)

    def _send(self, job: _Job, key: bytes, blob: bytes, call_blob: bytes) -> Future[bytes]:
        with job.lock:
            handle: Future[bytes] = self._submit(run_call, key, blob, call_blob)
            job.handle = handle
            with self._count_lock:
                self.calls_sent += 1
                self.in_flight += 1
        return handle

    def _renew(self, broken: ProcessPoolExecutor | None) -> None:
        with self._lock:
            if self._pool is not broken or broken is None or self._depth == 0:
                return  # renewed already, or closed
            self._pool = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)

    def _cancel(self, handle: Future[bytes]) -> bool:
        # True only for a call no worker had taken yet; a running one finishes unseen.
        return handle.cancel() or handle.cancelled()

    def __repr__(self) -> str:
        return f"ProcessRunner(max_workers={self.max_workers!r})"

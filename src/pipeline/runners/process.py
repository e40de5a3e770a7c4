"""`ProcessRunner`: stages in a pool of local worker processes (`ProcessPool`, `_pool.py`).

The pool starts its workers with `forkserver` (Linux) or `spawn`, never `fork`: the parent
runs threads (the event loop's worker threads, maybe a Dask client), and forking a process
with threads can deadlock. Stages, inputs and outputs travel with cloudpickle (extra
`processes`), so stages defined in a script's `__main__` work as long as the script guards
its entry point with `if __name__ == "__main__":` (as every multiprocessing script must).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
from typing import TYPE_CHECKING, Any, final

import anyio

from pipeline.errors import DefinitionError
from pipeline.runners._pickling import cloudpickle_module
from pipeline.runners._pool import FAILED, SKIPPED, WHOLE, PoolCall, ProcessPool
from pipeline.runners._remote import RemoteRunner
from pipeline.runners._wake import loop_inbox
from pipeline.runners._worker import failure_of, item_reply, replies_from_wire, serve

if TYPE_CHECKING:
    from pipeline.runners._remote import ReplySink, _Job
    from pipeline.runners._worker import Reply


@final
class ProcessRunner(RemoteRunner):
    """Runs stage attempts in a pool of worker processes on this machine.

    A runner runs one attempt (or one batch of fan-out items, `StageDefinition(batch_size=n)`);
    retries, timeouts, the cache and events stay in the executor. On a timeout or cancellation
    (fail-fast, the caller) a call still queued is withdrawn, and the worker running a call is
    killed and replaced, so the work stops for certain (`remote_stopped=True` on its attempt
    record) and a retry never races the attempt it replaces. With
    `terminate_on_cancel=False` a running call finishes in the background instead and its
    result is dropped (`remote_stopped=False`); if such calls still run when the runner
    closes, its workers are terminated rather than waited for. A worker that dies fails the
    call it was running (`BrokenProcessPool`) and is replaced; calls waiting behind it go to
    another worker.

    With `batch_size` and `timeout_ms` together, the workers reply item by item, and each item
    of a batch has its own deadline, counted from the moment its turn in the batch comes (the
    batch is sent, or the item before it returned). When one times out, the worker skips the
    rest of that batch and those items are sent again in another batch.

    Use it as `PipelineExecutor(runners={"cpu": ProcessRunner()})` and
    `StageDefinition(..., runner="cpu")`. The executor opens the pool for each run; enter it
    yourself (`async with runner:`) to keep one pool across runs.

    Args:
        max_workers: Worker processes (default: the number of CPUs).
        start_method: `"forkserver"` (default on Linux) or `"spawn"` (the default elsewhere).
        terminate_on_cancel: Kill the worker running a call the run gave up on (and start
            another), rather than let the call finish unseen.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str | None = None,
        terminate_on_cancel: bool = True,
    ) -> None:
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
        self.terminate_on_cancel = terminate_on_cancel
        self._pool: ProcessPool | None = None

    streams_replies = True
    """Its workers can reply item by item, so a batch keeps each item's `timeout_ms`."""

    def _open(self) -> None:
        context = (
            multiprocessing.get_context("forkserver") if self.start_method == "forkserver"
            else multiprocessing.get_context("spawn")
        )  # fmt: skip
        pool = ProcessPool(context, self.max_workers or os.cpu_count() or 1, serve)
        # Every worker starts now (each imports the library once), not during the first run:
        # a first attempt's timeout must not count a process start.
        pool.start()
        self._pool = pool

    def _close(self, *, abandoned: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # Calls given up on may still be running: their processes are stopped, not awaited.
            pool.close(abandoned=abandoned)

    async def _exchange(
        self, job: _Job, key: bytes, blob: bytes, call_blob: bytes, sink: ReplySink | None = None
    ) -> list[Reply]:
        """Write the call into a worker's pipe from the event loop; be woken with its replies.

        The pool's reader thread hands each reply to the loop (`LoopInbox`: one wake-up for
        each burst of replies); no thread waits per call. With `sink`, the worker replies item
        by item and each reply goes to the sink as it comes (the list returned is empty).
        """
        pool = self._pool
        assert pool is not None  # called only while open
        done = anyio.Event()
        whole: list[Any] = []
        inbox = loop_inbox()
        replied = 0  # streamed items that came back (the next one is the one running)

        def on_loop(position: int, payload: Any, last: bool) -> None:  # on the loop: never raises
            nonlocal replied
            if position == FAILED:
                payload = failure_of(payload)
            if isinstance(payload, BaseException):
                whole.append(payload)
                if sink is not None:  # the items after the one that was running never ran
                    sink.skip_from(replied + 1)
            elif sink is None or position == WHOLE:
                whole.append(payload)
            elif position == SKIPPED:
                sink.skip_from(payload)
            else:
                replied += 1
                sink.reply(position, item_reply(payload))
            if last:
                done.set()

        def deliver(position: int, payload: Any, last: bool) -> None:  # the pool's reader thread
            if last:
                with self._count_lock:
                    self.in_flight -= 1
            inbox.post(functools.partial(on_loop, position, payload, last))

        call = pool.call((key, blob, call_blob, sink is not None), deliver)
        with job.lock:
            job.handle = call
            with self._count_lock:
                self.calls_sent += 1
                self.in_flight += 1
            skip = job.skip
        try:
            pool.submit(call)
        except BaseException:
            with self._count_lock:  # never sent
                self.in_flight -= 1
                self.calls_sent -= 1
            raise
        if skip:
            self.skip_rest(job)
        await done.wait()
        if whole and isinstance(whole[0], BaseException):
            raise whole[0]
        return replies_from_wire(whole[0]) if whole else []

    def _cancel(self, handle: PoolCall) -> bool:
        # A call still queued is withdrawn; a running one's worker is killed when
        # `terminate_on_cancel`, else it finishes unseen (not confirmed: False).
        pool = self._pool
        if pool is None or not pool.cancel(handle, terminate=self.terminate_on_cancel):
            return False
        with self._count_lock:  # withdrawn: nothing will be delivered for it
            self.in_flight -= 1
        return True

    def skip_rest(self, job: _Job) -> bool:
        """Stop what `job`'s call has not finished.

        Its worker is killed (`terminate_on_cancel`), or asked to skip the items it has not
        started. The call then ends with `sink.skip_from(...)` (at once when it was withdrawn from the
        pool's queue or its worker killed: True, nothing of it runs any more).
        """
        with job.lock:
            call: PoolCall | None = job.handle
            if call is None:
                job.skip = True  # `_exchange` asks again once it has sent the call
                return True
        pool = self._pool
        if pool is not None and pool.cancel(call, terminate=self.terminate_on_cancel):
            call.deliver(SKIPPED, 0, True)  # withdrawn or its worker killed: it ends here
            return True
        return False

    def __repr__(self) -> str:
        return f"ProcessRunner(max_workers={self.max_workers!r})"

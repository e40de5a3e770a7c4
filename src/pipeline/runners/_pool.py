"""`ProcessPool`: worker processes the event loop writes to directly, one reader thread.

Why not `concurrent.futures.ProcessPoolExecutor` (what `ProcessRunner` used first): for each
call it writes to a pipe to wake its manager thread, hands the call to a queue whose feeder
thread pickles it again, and completes a `Future` from the manager thread. Three threads then
take turns at the GIL of the process that also runs the event loop: on 2 cores that was
~30 us of the parent's time a call, and unbatched 20 us items ran at 1.37x of a bare
`pool.map` (`benchmarks/runners.py`). Here the caller writes each call straight into a
worker's pipe, and one reader thread waits on every worker's reply pipe
(`multiprocessing.connection.wait`) and hands each reply to its caller's callback.

It also does what a `Future` cannot: a worker may reply item by item for a batch (so each item
of a batch can keep its own timeout), and may be told to skip the items of a call it has not
started yet (`cancel`).

Scheduling is first in, first out, as in `concurrent.futures`: a call goes to an idle worker,
or waits in the pool's queue. One more small call may wait in a busy worker's pipe, so a worker
goes straight on to its next call without a round trip through the parent (the stdlib pool
keeps one extra call queued for the same reason). A call waiting in a worker's pipe counts as
taken by that worker: it can be skipped, not withdrawn.

    caller --submit--> idle worker's pipe (or the queue)        worker: run, reply per call
    reader thread <--replies-- every worker's reply pipe          (or per item when streamed)
      -> call.deliver(position, payload, last); on `last` the worker's next queued call goes

A worker that dies fails the call it was running (`BrokenProcessPool`) and is replaced; a call
waiting behind it in its pipe goes back to the queue. Worker processes are not daemons (a stage
may start processes of its own); they exit when the pool closes, or when their pipe from the
parent closes (the parent exited).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import math
import os
import pickle
import threading
import time
import weakref
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, Final

from pipeline.errors import RunnerError

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkServerContext, SpawnContext
    from multiprocessing.process import BaseProcess

WHOLE: Final = -1
"""Reply position: the payload holds the replies of every item of the call (not streamed)."""
SKIPPED: Final = -2
"""Reply position: the worker skipped the call's items from the position in the payload on."""
FAILED: Final = -3
"""Reply position: the worker could not load the call; the payload is the pickled error."""
READY: Final = -1
"""Call id of a worker's first message, sent once it has imported what it needs."""

PIPELINED: Final = 1
"""How many calls may wait in a busy worker's pipe (besides the one it runs)."""
PIPELINE_MAX_BYTES: Final = 32 * 1024
"""Only a call smaller than this waits in a busy worker's pipe: a pipe holds 64 KiB, and a
bigger call would block its sender until the worker reads it."""
PIPELINE_MAX_S: Final = 0.001
"""A call waits in a busy worker's pipe only behind short work: that worker's last call took
less than this, and its current one started less than this ago. Behind a long call it waits
in the pool's queue for whichever worker frees first (no call is stuck behind a slow one)."""
CLOSE_GRACE_S: Final = 10.0
"""How long closing waits for idle workers to exit before terminating them."""
READY_TIMEOUT_S: Final = 120.0
"""How long a new worker may take to import its code before it counts as failed to start."""

CALL: Final = b"c"
"""First byte of a message to a worker: a call, `(call_id, args)` pickled."""
SKIP: Final = b"s"
"""First byte of a message to a worker: skip the items not started of the call whose id
follows (as decimal digits)."""
QUIT: Final = b"q"
"""A message to a worker: exit."""


class PoolCall:
    """One call: its message and where its replies go.

    `deliver(position, payload, last)` is called in the pool's reader thread (or in the thread
    that closes the pool) for each reply: `position` is an item's index in the call with its
    pickled reply, `WHOLE` with every item's, `SKIPPED` with the first skipped index, or any
    position with an exception (the call failed: its worker died, the pool closed, the worker
    could not load it). `last` is True on the call's final delivery.
    """

    __slots__ = ("deliver", "id", "message", "skip", "worker")

    def __init__(
        self, call_id: int, message: bytes, deliver: Callable[[int, Any, bool], None]
    ) -> None:
        self.id = call_id
        self.message = message
        self.deliver = deliver
        self.worker: _Worker | None = None
        self.skip = False
        """Given up on while in a worker's pipe: never to be run (even if requeued)."""


class _Worker:
    """A worker process, its two pipe ends in this process, and the calls sent to it."""

    __slots__ = (
        "calls",
        "inbox",
        "kill_for",
        "killed",
        "last_s",
        "outbox",
        "process",
        "reading",
        "started",
    )

    def __init__(self, process: BaseProcess, outbox: Connection, inbox: Connection) -> None:
        self.process = process
        self.outbox = outbox  # calls, to the worker
        self.inbox = inbox  # replies, from the worker
        self.calls: deque[PoolCall] = deque()  # sent, in order; the first is running
        self.killed = False  # by `cancel`: the calls left on it go back to the queue
        self.started = 0.0  # when its current call began (`time.perf_counter`)
        self.last_s = math.inf  # how long its last call took (unknown: long)
        self.reading = False  # the reader thread is taking a reply out of its pipe
        self.kill_for: PoolCall | None = None  # kill it once a reply shows this call runs on

    def can_take(self, call: PoolCall, now: float) -> bool:
        """Idle, or busy with short work and room for a small call in its pipe."""
        n = len(self.calls)
        return n == 0 or (
            n <= PIPELINED
            and len(call.message) < PIPELINE_MAX_BYTES
            and self.last_s < PIPELINE_MAX_S
            and now - self.started < PIPELINE_MAX_S
        )

    def close(self) -> None:
        """Reap the (exited) process and close this side's pipe ends."""
        self.process.join(CLOSE_GRACE_S)
        if self.process.exitcode is None:  # pragma: no cover - a worker that hangs
            self.process.kill()
            self.process.join()
        self.outbox.close()
        self.inbox.close()
        with contextlib.suppress(ValueError):
            self.process.close()


_live_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


@atexit.register  # registered after multiprocessing's own exit hook, so it runs before it
def _close_live_pools() -> None:  # pragma: no cover - runs at interpreter exit
    for pool in list(_live_pools):
        pool.close(abandoned=True)


class ProcessPool:
    """Worker processes that each run one call at a time, fed first in, first out.

    Blocking methods (`start`, `close`) belong in a worker thread; `submit` and `cancel` are
    quick and thread-safe (they may be called from the event loop).

    Args:
        context: The multiprocessing context whose processes to start (forkserver or spawn).
        workers: How many worker processes.
        serve: The function each worker runs: `serve(inbox, outbox)` (see
            `pipeline.runners._worker.serve`).
    """

    def __init__(
        self,
        context: ForkServerContext | SpawnContext,
        workers: int,
        serve: Callable[..., None],
    ) -> None:
        self._context = context
        self._size = workers
        self._serve = serve
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._queue: deque[PoolCall] = deque()
        self._ids = itertools.count()
        self._wake_r, self._wake_w = os.pipe()
        self._closing = False
        self._reader: threading.Thread | None = None
        self._spawners: set[threading.Thread] = set()
        self._broken: str | None = None
        """Why no call can run any more (no worker left, and none could be started)."""

    # -- life -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers and wait until each has imported its code (blocking)."""
        workers = [self._spawn() for _ in range(self._size)]
        self._workers = workers
        try:
            for worker in workers:
                self._await_ready(worker)
        except BaseException:
            self.close(abandoned=True)
            raise
        self._reader = threading.Thread(target=self._read, name="pipeline-pool-reader", daemon=True)
        self._reader.start()
        _live_pools.add(self)

    def _spawn(self) -> _Worker:
        calls_r, calls_w = self._context.Pipe(duplex=False)
        replies_r, replies_w = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=self._serve, args=(calls_r, replies_w), name="pipeline-worker"
        )
        process.start()
        calls_r.close()  # the worker's ends: closed here so a dead worker reads as end of file
        replies_w.close()
        return _Worker(process, calls_w, replies_r)

    def _await_ready(self, worker: _Worker) -> None:
        try:
            if not worker.inbox.poll(READY_TIMEOUT_S):
                worker.process.kill()
                raise EOFError
            call_id, _, _, _ = pickle.loads(worker.inbox.recv_bytes())  # our worker's bytes
        except (EOFError, OSError):
            worker.process.join(5)
            raise RunnerError(
                f"a worker process failed to start (exit code {worker.process.exitcode}); "
                "if its output shows an import error, make the script's entry point "
                "'if __name__ == \"__main__\":'"
            ) from None
        assert call_id == READY

    def close(self, *, abandoned: bool) -> None:
        """Stop the workers (blocking): let idle ones exit, or terminate them when `abandoned`.

        Calls still queued or running fail with `RunnerError`.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            workers, self._workers = self._workers, []
            orphans = list(self._queue)
            self._queue.clear()
            for worker in workers:
                orphans.extend(worker.calls)
                worker.calls.clear()
            spawners = list(self._spawners)
        _live_pools.discard(self)
        for worker in workers:
            if abandoned:
                worker.process.terminate()
            else:
                with contextlib.suppress(OSError):
                    worker.outbox.send_bytes(QUIT)
        self._wake()
        for thread in spawners:  # each reaps the worker it was starting
            thread.join()
        # The reader first: it may be replacing a worker that died (joining its process).
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join()
        for worker in workers:
            worker.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for call in orphans:
            call.deliver(0, RunnerError("the process pool closed before this call returned"), True)

    def _is_closing(self) -> bool:
        """True once `close` has begun (a call, so that type checkers do not narrow it)."""
        return self._closing

    def _wake(self) -> None:
        """Make the reader thread look again (a worker was added, or the pool closes)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # -- calls ----------------------------------------------------------------------------------
    def call(self, args: tuple[Any, ...], deliver: Callable[[int, Any, bool], None]) -> PoolCall:
        """A new call of the workers' `serve` with `args` (plain values, bytes); `submit` it."""
        call_id = next(self._ids)
        return PoolCall(call_id, CALL + pickle.dumps((call_id, args), protocol=5), deliver)

    def submit(self, call: PoolCall) -> None:
        """Send `call` to an idle worker, or queue it (thread-safe, never blocks for long).

        Raises:
            RunnerError: the pool is closed, or has no worker left and could start none.
        """
        with self._lock:
            if self._closing:
                raise RunnerError("the process pool is closed")
            if self._broken is not None:
                raise RunnerError(self._broken)
            if not self._queue:
                for worker in self._workers:
                    if not worker.calls and self._send(worker, call):
                        return
                now = time.perf_counter()
                for worker in self._workers:
                    if worker.can_take(call, now) and self._send(worker, call):
                        return
            self._queue.append(call)

    def cancel(self, call: PoolCall, *, terminate: bool = False) -> bool:
        """Stop `call`: True when it surely is not running (nothing more is delivered for it).

        A call still queued is withdrawn. One a worker is running is stopped by killing that
        worker when `terminate` (a new one takes its place; calls waiting in its pipe go back
        to the queue). Otherwise the worker is told to skip the call's items it has not
        started (it delivers `SKIPPED` with the first one, unless it finished first), and
        False returns; such a call never runs elsewhere, even if its worker dies.
        """
        with self._lock:
            worker = call.worker
            if worker is None:
                with contextlib.suppress(ValueError):
                    self._queue.remove(call)
                    return True
                return False  # delivered already (the pool closed)
            if call not in worker.calls:
                return False  # it returned meanwhile
            if terminate and worker.calls[0] is call and not self._closing:
                if not worker.reading and not worker.inbox.poll():
                    self._kill(worker)
                    return True
                # A reply on its way: the call may have ended, the worker moved on to the next
                # one in its pipe, and killing it now would stop (and rerun) that one. The
                # reader decides once it has read the reply (`_receive`): an item's reply of a
                # call still running means kill, the call's last one means it ended.
                worker.kill_for = call
            call.skip = True
            with contextlib.suppress(OSError):  # the worker died: the reader ends the call
                worker.outbox.send_bytes(SKIP + str(call.id).encode())
            return False

    @staticmethod
    def _kill(worker: _Worker) -> None:
        """Under the lock: kill `worker` for the call it runs (the reader replaces it)."""
        call = worker.calls.popleft()
        call.worker = None
        worker.killed = True
        worker.kill_for = None
        worker.process.kill()

    def _send(self, worker: _Worker, call: PoolCall) -> bool:
        """Under the lock: write `call` into `worker`'s pipe; False if the worker is gone."""
        try:
            worker.outbox.send_bytes(call.message)
        except OSError:  # it died: the reader replaces it; the call stays to be sent
            return False
        if not worker.calls:
            worker.started = time.perf_counter()
        call.worker = worker
        worker.calls.append(call)
        return True

    def _dispatch(self, worker: _Worker) -> None:
        """Under the lock: queued calls to `worker` while it can take them."""
        queue = self._queue
        now = time.perf_counter()
        while queue and worker.can_take(queue[0], now):
            if not self._send(worker, queue[0]):
                return
            queue.popleft()

    # -- the reader thread ----------------------------------------------------------------------
    def _read(self) -> None:
        wake = self._wake_r
        while True:
            with self._lock:
                if self._closing:
                    return
                by_pipe: dict[Any, _Worker] = {w.inbox: w for w in self._workers}
                by_sentinel: dict[Any, _Worker] = {w.process.sentinel: w for w in self._workers}
            ready = wait([*by_pipe, *by_sentinel, wake])
            for item in ready:
                worker = by_pipe.get(item)
                if worker is not None:
                    self._receive(worker)
            for item in ready:
                dead = by_sentinel.get(item)
                if dead is not None:
                    self._replace(dead)
            if wake in ready:
                with contextlib.suppress(OSError):
                    os.read(wake, 512)

    def _receive(self, worker: _Worker) -> None:
        """Read every reply waiting in `worker`'s pipe and deliver it."""
        inbox = worker.inbox
        try:
            while True:
                with self._lock:
                    worker.reading = True  # `cancel` must not kill it meanwhile
                try:
                    data = inbox.recv_bytes()
                except BaseException:
                    with self._lock:
                        worker.reading = False
                    raise
                call_id, position, payload, last = pickle.loads(data)  # our worker's bytes
                call = None
                killed = False
                with self._lock:
                    worker.reading = False
                    calls = worker.calls
                    if calls and calls[0].id == call_id:  # else a call killed or given up on
                        call = calls[0]
                        if worker.kill_for is call and not last and not self._closing:
                            self._kill(worker)  # given up on, and still running: stop it
                            killed = True
                        elif last:
                            worker.kill_for = None
                            calls.popleft()
                            call.worker = None
                            now = time.perf_counter()
                            worker.last_s = now - worker.started
                            worker.started = now
                            if not self._closing:
                                self._dispatch(worker)
                if call is not None:
                    call.deliver(position, payload, last)
                    if killed:  # nothing more comes from it: the rest of its items never ran
                        call.deliver(SKIPPED, position + 1, True)
                        return
                if not inbox.poll():
                    return
        except (EOFError, OSError):
            return  # the worker died: its sentinel says so (`_replace`)

    def _replace(self, dead: _Worker) -> None:
        """`dead` exited: fail the call it ran, requeue the ones behind it, start another."""
        if self._is_closing():
            return  # `close` reaps it
        with contextlib.suppress(EOFError, OSError):
            if dead.inbox.poll():  # replies it sent before it died
                self._receive(dead)
        dead.process.join()
        code = dead.process.exitcode
        ended: list[PoolCall] = []
        with self._lock:
            if self._is_closing() or dead not in self._workers:
                return
            self._workers.remove(dead)
            calls = list(dead.calls)
            dead.calls.clear()
            # Killed on purpose (`cancel`), nothing it had was running; else the first was.
            running = None if dead.killed or not calls else calls[0]
            for waiting in reversed(calls[1:] if running is not None else calls):
                waiting.worker = None
                if waiting.skip:  # given up on: it must not run anywhere
                    ended.append(waiting)
                else:  # never started: back to the queue's front
                    self._queue.appendleft(waiting)
            for other in self._workers:  # the others may take what was requeued
                if not other.calls:
                    self._dispatch(other)
            spawner = threading.Thread(target=self._respawn, name="pipeline-pool-spawn")
            self._spawners.add(spawner)
            spawner.start()  # under the lock: `close` joins only started spawners
        pid = dead.process.pid
        dead.outbox.close()
        dead.inbox.close()
        with contextlib.suppress(ValueError):
            dead.process.close()
        for call in ended:
            call.deliver(SKIPPED, 0, True)
        if running is not None:
            running.worker = None
            running.deliver(0, BrokenProcessPool(
                f"a worker process (pid {pid}) died with exit code {code} while "
                "running this call; the pool starts another in its place"
            ), True)  # fmt: skip

    def _respawn(self) -> None:
        """In its own thread: start a worker in place of a dead one, then give it work.

        Not in the reader thread, so replies keep flowing while the new worker imports its
        code; it joins the pool once ready (a call is never written to a worker not yet
        reading). If none can be started and no worker is left, the queued calls fail and so
        do later ones (`submit`).
        """
        me = threading.current_thread()
        worker: _Worker | None = None
        failure: str | None = None
        try:
            worker = self._spawn()
            self._await_ready(worker)
        except Exception as exc:  # noqa: BLE001  # any failure to start: said to the callers
            failure = f"the process pool has no worker left: a new one could not start ({exc})"
            if worker is not None:
                worker.process.kill()
                worker.close()
                worker = None
        stranded: list[PoolCall] = []
        with self._lock:
            self._spawners.discard(me)
            if self._closing:
                pass
            elif worker is not None:
                self._workers.append(worker)
                self._dispatch(worker)
            elif not self._workers and not self._spawners:
                self._broken = failure
                stranded = list(self._queue)
                self._queue.clear()
            closing = self._closing
        if closing and worker is not None:
            worker.process.kill()
            worker.close()
        elif worker is not None:
            self._wake()  # the reader waits on the new worker's pipe too
        for call in stranded:
            call.deliver(0, RunnerError(failure or "the process pool has no worker left"), True)

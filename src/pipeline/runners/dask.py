"""`DaskRunner`: stages on a Dask cluster (`pip install 'wavepipe[dask]'`).

Importing this module imports `distributed`; `import pipeline` never does. The runner drives
a *synchronous* `distributed.Client`: Dask's asyncio client API would tie the run to asyncio,
and runs must also work on trio. Dask schedules; a worker that dies has its tasks rescheduled by
Dask on the others.

    loop: client.submit (non-blocking) --> task --> done callback (Dask's callback thread)
      --> queue --> one gather thread: client.gather(every task finished meanwhile)
      --> LoopInbox.post(event.set) --> loop: the call's replies

No thread waits per call: one thread fetches the results of all finished tasks in one request
(as `client.gather` does for a hand-written `client.map`), and the loop is woken once a burst.
"""

from __future__ import annotations

import asyncio  # noqa: TID251  # only on the cluster's own (asyncio) loop thread, never the run's
import contextlib
import functools
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, final

import anyio

try:
    import distributed
except ImportError as exc:  # pragma: no cover - the dev environment has it
    msg = "DaskRunner needs the dask extra: pip install 'wavepipe[dask]'"
    raise ImportError(msg) from exc

from pipeline.errors import DefinitionError, RunnerError
from pipeline.runners._remote import RemoteRunner
from pipeline.runners._wake import loop_inbox
from pipeline.runners._worker import replies_from_wire, run_call, warm_up

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.runners._remote import ReplySink, _Job
    from pipeline.runners._wake import LoopInbox
    from pipeline.runners._worker import Reply

    _Unsent = tuple[_Job, tuple[bytes, bytes, bytes], Callable[[Any], None]]

CONNECT_TIMEOUT_S = 30
"""How long connecting to a scheduler at `address` may take."""
STOP_GRACE_S = 5.0
"""How long closing the runner waits for its gather thread to end."""
GATHER_WINDOW_S = 0.005
"""While more tasks are out, how long the gather thread lets finished ones gather before one
`client.gather` fetches them all (each request costs this process ~1 ms of client and, for a
`LocalCluster`, scheduler work; Dask batches its own messages the same way). A lone task is
fetched at once."""
KILL_AFTER_S = 0.25
"""Closing a cluster the runner owns while tasks given up on may still run: how long (times
0.8) each worker process may take to stop before it is killed."""

_NOT_RUNNING = frozenset(
    {"released", "waiting", "queued", "no-worker", "forgotten", "memory", "erred"}
)
"""Scheduler task states in which no worker runs the task (not yet, or no more)."""

__all__ = ["DaskRunner"]


@final
class DaskRunner(RemoteRunner):
    """Runs stage attempts as tasks on a Dask cluster.

    A runner runs one attempt (or one batch of fan-out items, `StageDefinition(batch_size=n)`);
    retries, timeouts, the cache and events stay in the executor. On a timeout or cancellation
    the task is cancelled; its attempt record says `remote_stopped=True` only when no worker
    had started it (Dask cannot interrupt a running task; its result is dropped).

    Args:
        address: A scheduler address (`"tcp://host:8786"`): the runner connects a client on
            open and closes it on close.
        client: A `distributed.Client` you own (not closed by the runner).
        **cluster_options: With neither: options of the `distributed.LocalCluster` the runner
            starts on open and closes on close (default: worker processes, one thread each, the
            dashboard on a port of its own).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        client: distributed.Client | None = None,
        **cluster_options: Any,
    ) -> None:
        if address is not None and client is not None:
            raise DefinitionError(
                "DaskRunner", "address", "and client are both given", "pass one of them"
            )
        if cluster_options and (address is not None or client is not None):
            raise DefinitionError(
                "DaskRunner", "cluster_options", "are given with an address or a client",
                "cluster options only apply to the LocalCluster started without either",
            )  # fmt: skip
        super().__init__()
        self.address = address
        self._given = client
        self._options = {"processes": True, "threads_per_worker": 1, "dashboard_address": ":0"}
        self._options.update(cluster_options)
        # distributed is untyped where it matters (Client, LocalCluster): Any keeps mypy honest
        self._client: Any = None
        self._cluster: Any = None
        self._gatherer: _Gatherer | None = None
        self._unsent: dict[LoopInbox, list[_Unsent]] = {}
        """Each event loop's calls of its current turn, sent together by `_flush` (one graph
        update); per loop, as runs on several loops may share the runner."""
        self._unsent_lock = threading.Lock()

    @property
    def client(self) -> distributed.Client | None:
        """The client in use while open (None while closed, unless one was given)."""
        client: distributed.Client | None = self._client
        return client if client is not None else self._given

    def _open(self) -> None:
        self._connect()
        # Every worker imports the library now, not during the first attempt (whose timeout
        # must not count it); workers that join later import it on their first task.
        with contextlib.suppress(Exception):
            self._client.run(warm_up)
        self._gatherer = _Gatherer(self._client)

    def _connect(self) -> None:
        if self._given is not None:
            self._client = self._given
            return
        connect: Any = distributed.Client
        if self.address is not None:
            try:
                self._client = connect(
                    self.address, set_as_default=False, timeout=CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                msg = f"DaskRunner cannot reach the scheduler at {self.address!r}: {exc}"
                raise RunnerError(msg) from exc
            return
        start: Any = distributed.LocalCluster
        self._cluster = start(**self._options)
        self._client = connect(self._cluster, set_as_default=False)

    def _close(self, *, abandoned: bool) -> None:
        gatherer, self._gatherer = self._gatherer, None
        if gatherer is not None:
            gatherer.stop()
        client: Any = self._client
        cluster: Any = self._cluster
        self._client = self._cluster = None
        if client is not None and client is not self._given:
            client.close()
        if cluster is not None:
            if abandoned:  # tasks given up on may still run: stop their workers, do not wait
                with contextlib.suppress(Exception):
                    cluster.sync(_stop_worker_processes, list(cluster.workers.values()))
            cluster.close()

    async def _exchange(
        self, job: _Job, key: bytes, blob: bytes, call_blob: bytes, sink: ReplySink | None = None
    ) -> list[Reply]:
        """Submit from the event loop (a non-blocking call); the gather thread sends the result.

        Cancelling it stops the wait at once; `_stop` then cancels the task.
        """
        assert self._gatherer is not None  # called only while open
        done = anyio.Event()
        inbox = loop_inbox()
        outcome: list[bytes | BaseException] = []

        def deliver(value: bytes | BaseException) -> None:  # in the gather thread
            with self._count_lock:
                self.in_flight -= 1
            outcome.append(value)
            inbox.post(done.set)

        # Sent at the end of this turn of the event loop, with the calls made meanwhile: each
        # `client.submit` is a graph update of its own on the scheduler (~0.15 ms of this
        # process's time, which also runs a LocalCluster's scheduler), `client.map` is one.
        with self._unsent_lock:
            unsent = self._unsent.setdefault(inbox, [])
            unsent.append((job, (key, blob, call_blob), deliver))
            first = len(unsent) == 1
        if first:
            inbox.post(functools.partial(self._flush, inbox))
        await done.wait()
        value = outcome[0]
        if isinstance(value, BaseException):
            raise value
        return replies_from_wire(value)

    def _flush(self, inbox: LoopInbox) -> None:
        """On the event loop: submit the calls of this turn not given up on meanwhile."""
        with self._unsent_lock:
            unsent = self._unsent.pop(inbox, [])
        client: Any = self._client
        gatherer = self._gatherer
        # On the calls' own loop, like `_stop` for each of them: none is given up on between
        # this check and its send.
        calls = [entry for entry in unsent if not entry[0].abandoned]
        if not calls:
            return
        if client is None or gatherer is None:  # the runner closed meanwhile
            closed = RunnerError(f"{self!r} closed before this call was sent")
            for _, _, deliver in calls:
                with self._count_lock:
                    self.in_flight += 1  # `deliver` counts it back
                deliver(closed)
            return
        try:
            if len(calls) == 1:
                futures = [client.submit(run_call, *calls[0][1], pure=False)]
            else:
                keys, blobs, call_blobs = zip(*(args for _, args, _ in calls), strict=True)
                futures = client.map(run_call, keys, blobs, call_blobs, pure=False)
        except Exception as exc:  # noqa: BLE001  # e.g. the cluster is gone: each call fails
            for _, _, deliver in calls:
                with self._count_lock:
                    self.in_flight += 1  # `deliver` counts it back
                deliver(exc)
            return
        for (job, _, deliver), future in zip(calls, futures, strict=True):
            with job.lock:
                job.handle = future
                with self._count_lock:
                    self.calls_sent += 1
                    self.in_flight += 1
            gatherer.watch(future, deliver)

    def _cancel(self, handle: Any) -> bool:
        client: Any = self._client
        if client is None:  # pragma: no cover - closed meanwhile
            return False
        try:
            state = client.run_on_scheduler(_task_state, handle.key)
        except Exception:  # noqa: BLE001  # unknown: not confirmed
            state = "unknown"
        handle.cancel()
        return state is None or state in _NOT_RUNNING

    def __repr__(self) -> str:
        where = self.address or ("client" if self._given is not None else "LocalCluster")
        return f"DaskRunner({where})"


class _Gatherer:
    """One thread per open runner fetching the results of finished tasks, many per request.

    Dask's callback thread queues each finished future; this thread takes everything queued,
    gathers the finished ones in one `client.gather` and hands each value (or the exception
    of a failed, lost or cancelled task) to its `deliver` callback. While other tasks are
    still out it first lets finished ones gather for `GATHER_WINDOW_S`.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._stopped = False
        self._out: dict[int, Callable[[Any], None]] = {}
        """The `deliver` of each future watched and not delivered yet, by id: what is out."""
        self._queue: queue.SimpleQueue[tuple[Any, Callable[[Any], None]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="pipeline-dask-gather", daemon=True)
        self._thread.start()

    def watch(self, future: Any, deliver: Callable[[bytes | BaseException], None]) -> None:
        """Call `deliver` (in this thread) with `future`'s result once it has finished.

        Once `stop` has run, `deliver` gets a `RunnerError` at once instead (a call another
        event loop sent while this runner closed).
        """
        put = self._queue.put
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._out[id(future)] = deliver
        if stopped:
            deliver(RunnerError("the Dask runner closed before this call returned"))
            return
        future.add_done_callback(lambda finished: put((finished, deliver)))

    def stop(self) -> None:
        """Finish the batch in hand and end the thread; calls still out fail with RunnerError.

        Waits at most `STOP_GRACE_S`: a gather stuck on a lost cluster must not hold up the
        close (the thread is a daemon; closing the client ends its requests).
        """
        self._queue.put(None)
        self._thread.join(timeout=STOP_GRACE_S)
        if self._thread.is_alive():  # pragma: no cover - stuck: it may still deliver them
            return
        with self._lock:
            self._stopped = True
            out, self._out = list(self._out.values()), {}
        closed = RunnerError("the Dask runner closed before this call returned")
        for deliver in out:
            deliver(closed)

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is not None and len(self._out) > 1:
                time.sleep(GATHER_WINDOW_S)  # noqa: TID251  # this thread only: a batching window
            batch = []
            while entry is not None:
                batch.append(entry)
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                with self._lock:
                    for future, _ in batch:
                        self._out.pop(id(future), None)
                self._fetch(batch)
            if entry is None:
                return

    def _fetch(self, batch: list[tuple[Any, Callable[[Any], None]]]) -> None:
        finished = [(f, deliver) for f, deliver in batch if f.status == "finished"]
        others = [(f, deliver) for f, deliver in batch if f.status != "finished"]
        if finished:
            try:
                values = self._client.gather([f for f, _ in finished])
            except Exception:  # noqa: BLE001  # one of them is lost: take each on its own
                others = batch
            else:
                for (_, deliver), value in zip(finished, values, strict=True):
                    deliver(value)
        for f, deliver in others:
            deliver(_result(f))


def _result(future: Any) -> bytes | BaseException:
    """`future`'s result, or the exception it raises (a failed, lost or cancelled task)."""
    try:
        value: bytes = future.result(timeout=CONNECT_TIMEOUT_S)
    except BaseException as exc:  # noqa: BLE001  # the call's outcome, raised on the loop
        return exc
    return value


async def _stop_worker_processes(workers: list[Any]) -> None:
    """On the cluster's loop: close each worker process, killing it after `KILL_AFTER_S`.

    A `LocalCluster` closing on its own asks each worker to finish its running task and kills
    it only after 4 s; a task given up on (a timeout) may run far longer.
    """
    nannies = [w for w in workers if isinstance(w, distributed.Nanny)]
    await asyncio.gather(
        *(n.close(timeout=KILL_AFTER_S, reason="pipeline-abandoned-work") for n in nannies),
        return_exceptions=True,
    )


def _task_state(key: Any, dask_scheduler: Any = None) -> str | None:
    """On the scheduler: the state of task `key` (None when the scheduler has none)."""
    task = dask_scheduler.tasks.get(key) if dask_scheduler is not None else None
    return None if task is None else str(task.state)

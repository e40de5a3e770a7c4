"""`RemoteRunner`: the shared half of every runner that sends work to another process.

A subclass only says how to open and close its pool, submit a call, wait for it and cancel it
(`_open`, `_close`, `_cancel`, and `_submit` and `_wait` unless it brings its own `_exchange`:
blocking, thread-safe); this base does the rest, identically for every backend:

    stage --cloudpickle, once per open session--> (digest, bytes)
    inputs + context snapshot --cloudpickle--> submit(run_call, digest, bytes, call)
      (an input that does not pickle is left out and fails alone, naming its item)
    wait, inside the run clock's `busy()` (a `FakeClock` does not jump while a worker runs;
      abandoned at once on timeout/cancel; then `_cancel`, reported as remote_stopped)
    replies --> context writes applied in order --> value returned / exception re-raised

By default `_exchange` pickles, submits and waits in an anyio worker thread, so nothing here
touches a backend's own async API and the same code serves asyncio and trio. A backend whose
futures take done-callbacks overrides `_exchange` to submit from the loop and be woken by the
callback through `pipeline.runners._wake.LoopInbox` (one wake-up of the loop per burst of
finished calls), with no thread waiting per call: `ProcessRunner` (writing straight into its
pool's worker pipes, `_pool.py`) and `DaskRunner` (one `client.map` per loop turn) both do.
The pool or cluster does all the scheduling.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread

from pipeline._deadline import Within
from pipeline.clock import SystemClock, current_clock
from pipeline.errors import RunnerError, StageTimeoutError, UnpicklableError
from pipeline.result import StageResult
from pipeline.runners._base import REMOTE_STOPPED, current_backend
from pipeline.runners._batch import ItemTimedOut, batches_on, current_batcher
from pipeline.runners._pickling import dumps, explain
from pipeline.runners._worker import (
    Call,
    ErrorInfo,
    Reply,
    Snapshot,
    rebuild,
    replies_from_wire,
    run_call,
    wire_call,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from types import TracebackType
    from typing import Self

    from pipeline._attempt import AttemptCall
    from pipeline.context import PipelineContext
    from pipeline.definition import StageDefinition
    from pipeline.protocol import PipelineStage

CANCEL_GRACE_S: Final = 5.0
"""How long cancelling remote work may take before it is reported as not confirmed."""


class _Job:
    """One call in flight: its handle once submitted, and whether the caller gave up on it."""

    __slots__ = ("abandoned", "handle", "lock", "skip")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handle: Any = None
        self.abandoned = False
        self.skip = False
        """The rest of the call's items were asked to be skipped before it was sent."""


class ReplySink(Protocol):
    """Where a streamed call's replies go, item by item, on the event loop (`run_inputs`)."""

    def reply(self, position: int, reply: Reply) -> None:
        """The input at `position` of the call returned `reply`."""

    def skip_from(self, position: int) -> None:
        """The inputs from `position` on were not run (`skip_rest`); nothing else comes."""


class _Remap:
    """A `ReplySink` for the inputs that were sent, passing on their positions in the call."""

    __slots__ = ("positions", "sink")

    def __init__(self, sink: ReplySink, positions: list[int]) -> None:
        self.sink = sink
        self.positions = positions

    def reply(self, position: int, reply: Reply) -> None:
        self.sink.reply(self.positions[position], reply)

    def skip_from(self, position: int) -> None:
        positions = self.positions
        # Past the last input sent (the call failed on its last one): nothing more of it.
        first = positions[position] if position < len(positions) else positions[-1] + 1
        self.sink.skip_from(first)


class RemoteRunner:
    """Base of the runners that run stages in other processes (`ProcessRunner`, `DaskRunner`).

    It is an async context manager that may be entered again while open (the pool opens on the
    first entry and closes on the last exit), so a caller can keep it open across runs while
    each run's executor enters it too. Stage objects are pickled once per open session.
    """

    streams_replies: ClassVar[bool] = False
    """True when the backend's workers can reply item by item (`run_inputs(sink=...)`) and be
    told to skip the rest of a call (`skip_rest`): then a batch keeps each item's
    `timeout_ms`. Without it a stage with `timeout_ms` is sent one item a call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # opening and closing
        self._count_lock = threading.Lock()  # the counters below
        self._depth = 0
        self._blobs: dict[int, tuple[object, bytes, bytes]] = {}
        self._abandoned = 0
        """Calls given up on (timeout, cancel) that may still run: closing must not wait."""
        self.calls_sent = 0
        """Runner calls sent so far (one per attempt, or per batch of fan-out items)."""
        self.in_flight = 0
        """Calls submitted whose work has not come back yet (given-up ones included)."""

    # -- what a backend provides (blocking, called from worker threads) -----------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _close(self, *, abandoned: bool) -> None:
        raise NotImplementedError

    def _submit(self, fn: Callable[..., bytes], *args: Any) -> Any:
        raise NotImplementedError

    def _wait(self, handle: Any) -> bytes:
        raise NotImplementedError

    def _cancel(self, handle: Any) -> bool:
        raise NotImplementedError

    # -- session ------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """True between the first `__aenter__` and the matching last `__aexit__`."""
        return self._depth > 0

    async def __aenter__(self) -> Self:
        """Open the pool (or cluster) unless it is open already; count the entry."""
        await anyio.to_thread.run_sync(self._enter)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the pool on the last exit (without waiting for abandoned work)."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._exit)

    def _enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._open()
                self._abandoned = 0
            self._depth += 1

    def _exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._blobs.clear()
                self._close(abandoned=self._abandoned > 0)

    # -- pickling -----------------------------------------------------------------------------
    def stage_blob(self, stage: object) -> tuple[bytes, bytes]:
        """`(digest, bytes)` of `stage` pickled with cloudpickle, once per session.

        Raises whatever pickling raised; `unpicklable_reason` says why in words.
        """
        kept = self._blobs.get(id(stage))
        if kept is not None and kept[0] is stage:
            return kept[1], kept[2]
        blob = dumps(stage)
        key = hashlib.blake2b(blob, digest_size=16).digest()
        self._blobs[id(stage)] = (stage, key, blob)
        return key, blob

    def unpicklable_reason(self, value: object, what: str) -> str | None:
        """None when `value` pickles (a stage is kept for the run), else what failed and why."""
        try:
            self.stage_blob(value)
        except Exception:  # noqa: BLE001  # any failure: say which part failed
            return explain(value, what)
        return None

    # -- running ------------------------------------------------------------------------------
    def attempt_caller(self, sdef: StageDefinition) -> Callable[[AttemptCall], Awaitable[Any]]:
        """How the executor's attempt chain calls this runner for `sdef` (built once per stage).

        A fan-out item of a stage with `batch_size > 1` joins its fan-out's current batch;
        anything else is one call. Each attempt sets `REMOTE_STOPPED` for its record.
        """
        sid, stage = sdef.id, sdef.stage
        size = sdef.batch_size
        batched = size is not None and size > 1 and batches_on(sdef, self)
        # With per-item replies the runner keeps each batched item's `timeout_ms` itself (the
        # chain has no timeout link then: `owns_item_timeouts`).
        timeout_ms = sdef.timeout_ms if batched else None
        limit_s = timeout_ms / 1000 if timeout_ms is not None else None

        async def call_remote(call: AttemptCall) -> Any:
            REMOTE_STOPPED.set(False)
            if batched and call.item is not None:
                batcher = current_batcher.get()
                if batcher is not None and batcher.stage_id == sid:
                    try:
                        reply = await batcher.submit(call.input, call.item, limit_s)
                    except anyio.get_cancelled_exc_class():
                        raise  # given up on: the batch may still run it
                    except BaseException:
                        REMOTE_STOPPED.set(True)  # the batch's call failed: nothing runs
                        raise
                    if isinstance(reply, ItemTimedOut):
                        REMOTE_STOPPED.set(reply.stopped)
                        assert timeout_ms is not None  # only with a limit
                        raise StageTimeoutError(sid, call.attempt, timeout_ms, call.item)
                    REMOTE_STOPPED.set(True)  # the batch came back: this item's work ended
                    return self.settle(reply, call.context)
            if timeout_ms is not None:  # an item outside a batch (a streamed fan-out)
                return await self._within(call, sid, stage, timeout_ms)
            return await self._one(call, sid, stage)

        return call_remote

    async def _one(self, call: AttemptCall, sid: str, stage: PipelineStage[Any, Any]) -> Any:
        """One runner call for one attempt; `REMOTE_STOPPED` says whether its work ended."""
        stopped: list[bool] = []
        try:
            replies = await self.run_inputs(
                stage, [call.input], call.context, stage_id=sid, items=[call.item],
                stopped=stopped,
            )  # fmt: skip
        finally:
            if stopped:
                REMOTE_STOPPED.set(stopped[0])
        return self.settle(replies[0], call.context)

    async def _within(
        self, call: AttemptCall, sid: str, stage: PipelineStage[Any, Any], timeout_ms: float
    ) -> Any:
        """`_one` bounded by the stage's `timeout_ms` (what the chain's timeout link does)."""
        returned: Any = None
        with Within(current_clock.get() or SystemClock(), timeout_ms / 1000) as bound:
            returned = await self._one(call, sid, stage)
        if bound.passed:
            raise StageTimeoutError(sid, call.attempt, timeout_ms, call.item)
        return returned

    async def run(
        self, stage: PipelineStage[Any, Any], input: Any, context: PipelineContext[Any]
    ) -> Any:
        """Run `stage` once on `input` in another process; its context writes are applied."""
        replies = await self.run_inputs(stage, [input], context, stage_id=stage.name)
        return self.settle(replies[0], context)

    async def run_inputs(
        self,
        stage: PipelineStage[Any, Any],
        inputs: Sequence[Any],
        context: PipelineContext[Any],
        *,
        stage_id: str,
        items: Sequence[int | None] | None = None,
        stopped: list[bool] | None = None,
        sink: ReplySink | None = None,
        job: _Job | None = None,
    ) -> list[Reply]:
        """One runner call for `inputs` (one input, or a batch of fan-out items).

        When cancelled (a timeout, fail-fast, the caller) it stops waiting at once, cancels
        the remote work best effort and appends to `stopped` whether that was confirmed.
        `items` are the inputs' fan-out indices, for messages. With `sink` (only when
        `streams_replies`), each input's reply goes to the sink as it comes back and the list
        returned is empty; `job` (from `new_job`) lets the caller `skip_rest` of the call.
        """
        if self._depth == 0:
            raise RunnerError(
                f"{self!r} is not open: enter it with 'async with runner:' or run it through "
                "a PipelineExecutor (which enters the runners its stages use)"
            )
        try:
            key, blob = self.stage_blob(stage)
        except Exception:  # noqa: BLE001  # validation reports this before a run; by hand, here
            reason = explain(stage, "stage object")
            raise UnpicklableError(stage_id, "the stage object", reason) from None
        snapshot = _snapshot(context, stage_id)
        labels: list[int | None] = list(items) if items is not None else [None] * len(inputs)
        call = Call(stage_id, list(inputs), snapshot, labels, current_backend())
        try:
            call_blob, refused = pickle_inputs(call)
        except BaseException:
            if stopped is not None:  # nothing was sent
                stopped.append(True)
            raise
        if sink is not None:
            for position, reply in refused.items():
                sink.reply(position, reply)
            if refused:
                sent_positions = [i for i in range(len(labels)) if i not in refused]
                sink = _Remap(sink, sent_positions)
        if len(refused) == len(labels):  # no input pickles: nothing to send
            if stopped is not None:
                stopped.append(True)
            return [] if sink is not None else [refused[i] for i in range(len(labels))]
        job = job if job is not None else _Job()
        # Work the event loop cannot see: a `FakeClock` must not jump time while it runs (its
        # real duration is not the run's time), as for a worker thread.
        busy = getattr(current_clock.get(), "busy", None)
        try:
            with busy() if callable(busy) else contextlib.nullcontext():
                if sink is not None:
                    await self._exchange(job, key, blob, call_blob, sink)
                    replies = []
                else:
                    replies = await self._exchange(job, key, blob, call_blob)
        except Exception:
            if stopped is not None:  # the call failed: nothing of it is left running
                stopped.append(True)
            raise
        except BaseException:  # cancelled, or an interrupt (KeyboardInterrupt) while waiting
            with anyio.CancelScope(shield=True):
                confirmed = await self._stop(job)
            if stopped is not None:
                stopped.append(confirmed)
            raise
        if stopped is not None:
            stopped.append(True)
        if refused and sink is None:  # the replies of the inputs sent, the refusals in their places
            sent = iter(replies)
            return [refused[i] if i in refused else next(sent) for i in range(len(labels))]
        return replies

    def settle(self, reply: Reply, context: PipelineContext[Any]) -> Any:
        """Apply `reply`'s context writes to `context` in order; return its value or raise."""
        for op, key, value in reply.writes:
            getattr(context, op)(key, value)
        if reply.ok:
            return StageResult.success(reply.payload) if reply.plain else reply.payload
        raise rebuild(reply.payload)

    def new_job(self) -> _Job:
        """A handle for one `run_inputs` call, for `skip_rest`."""
        return _Job()

    def skip_rest(self, job: _Job) -> bool:
        """Ask the worker to skip the items of `job`'s call it has not started.

        A backend that `streams_replies` then ends the call with `sink.skip_from`; the others
        ignore it. True when the item running is stopped too (its worker was killed).
        """
        return False

    async def _exchange(
        self, job: _Job, key: bytes, blob: bytes, call_blob: bytes, sink: ReplySink | None = None
    ) -> list[Reply]:
        """Send the pickled call and wait for its replies (by default in a worker thread).

        Cancelling it stops the wait at once (the thread is abandoned); `_stop` then cancels
        the remote work. Only a backend that `streams_replies` is given a `sink`.
        """
        replies: list[Reply] = await anyio.to_thread.run_sync(
            self._round_trip, job, key, blob, call_blob, abandon_on_cancel=True
        )
        return replies

    def _round_trip(self, job: _Job, key: bytes, blob: bytes, call_blob: bytes) -> list[Reply]:
        """In a worker thread: submit the call, wait, unpickle the replies."""
        with job.lock:
            if job.abandoned:
                return []
            job.handle = self._submit(run_call, key, blob, call_blob)
            with self._count_lock:
                self.calls_sent += 1
                self.in_flight += 1
        try:
            reply_blob = self._wait(job.handle)
        finally:
            with self._count_lock:
                self.in_flight -= 1
        return replies_from_wire(reply_blob)

    async def _stop(self, job: _Job) -> bool:
        """Give up on `job`: cancel it if submitted; True when it surely is not running."""
        with job.lock:
            job.abandoned = True
            handle = job.handle
        if handle is None:
            return True
        confirmed = False
        with anyio.move_on_after(CANCEL_GRACE_S):
            confirmed = await anyio.to_thread.run_sync(
                self._cancel, handle, limiter=anyio.CapacityLimiter(1)
            )
        if not confirmed:
            with self._count_lock:
                self._abandoned += 1
        return confirmed


def pickle_call(call: Call) -> bytes:
    """`call` pickled for `run_call`, or an `UnpicklableError` naming what does not pickle."""
    try:
        return dumps(wire_call(call))
    except Exception:  # noqa: BLE001  # name the part of the call that does not pickle
        raise _unpicklable_call(call) from None


def pickle_inputs(call: Call) -> tuple[bytes, dict[int, Reply]]:
    """`call` pickled without the inputs that do not pickle, and a failed reply for each of them.

    One unpicklable input fails only its own item (naming it); the others are sent. Returns
    `(call_blob, {position: reply})`; when nothing pickles the blob is empty. Raises the
    `UnpicklableError` of the context snapshot when that is what does not pickle (every input
    of the call needs it).
    """
    try:
        return dumps(wire_call(call)), {}
    except Exception:  # noqa: BLE001  # find the inputs that do not pickle
        pass
    refused: dict[int, Reply] = {}
    for position, (index, value) in enumerate(zip(call.items, call.inputs, strict=True)):
        try:
            dumps(value)
        except Exception:  # noqa: BLE001  # this one fails alone
            what = "input" if index is None else f"input of item {index}"
            problem = UnpicklableError(call.stage_id, what, explain(value, "input"))
            refused[position] = Reply(ok=False, payload=_info(problem), writes=[])
    if not refused:  # the inputs pickle one by one: the snapshot does not
        raise _unpicklable_call(call) from None
    if len(refused) == len(call.inputs):
        return b"", refused
    kept = [i for i in range(len(call.inputs)) if i not in refused]
    rest = call._replace(inputs=[call.inputs[i] for i in kept], items=[call.items[i] for i in kept])
    return pickle_call(rest), refused


def _info(problem: UnpicklableError) -> ErrorInfo:
    """`problem` as a worker would have sent it back (no remote traceback: it never left)."""
    return ErrorInfo(problem, type(problem).__name__, str(problem), "")


def _snapshot(context: PipelineContext[Any], stage_id: str) -> Snapshot:
    """Copies of what a remote stage may read (services that do not pickle are left out)."""
    with context._lock:  # a consistent copy, as metrics_snapshot takes
        state = dict(context.state)
        metrics = dict(context.metrics)
    services = {}
    for name, value in context._services.items():  # read-only
        try:
            dumps(value)
        except Exception:  # noqa: BLE001  # a client or session stays behind
            continue
        services[name] = value
    return Snapshot(state, metrics, context.deps, services)


def _unpicklable_call(call: Call) -> UnpicklableError:
    sid = call.stage_id
    for index, value in zip(call.items, call.inputs, strict=True):
        try:
            dumps(value)
        except Exception:  # noqa: BLE001  # this one
            what = "input" if index is None else f"input of item {index}"
            return UnpicklableError(sid, what, explain(value, "input"))
    snapshot = call.snapshot
    for key, value in snapshot.state.items():
        try:
            dumps(value)
        except Exception:  # noqa: BLE001  # this one
            return UnpicklableError(sid, f"context state {key!r}", explain(value, "value"))
    for key, value in snapshot.metrics.items():
        try:
            dumps(value)
        except Exception:  # noqa: BLE001  # this one
            return UnpicklableError(sid, f"context metric {key!r}", explain(value, "value"))
    return UnpicklableError(sid, "context deps", explain(snapshot.deps, "deps"))

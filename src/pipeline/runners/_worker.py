"""What runs in the worker process: unpickle one call, run the stage on each input, reply.

The executor's side (`pipeline.runners._remote`) sends `run_call(stage_key, stage_blob,
call_blob)` (a Dask task), or the same three through a `ProcessPool` worker's pipe to `serve`:
the stage pickled once (cloudpickle) and kept here by its digest, then the
inputs (one, or a batch of fan-out items) with a snapshot of the context. Each input runs
against its own `RemoteContext`, whose writes are recorded; the reply is one
`(ok, payload, writes)` tuple per input, pickled. Nothing raised by a stage escapes: it is
sent back (or, if it cannot be pickled, its type name, text and traceback are).

On the wire the call and the replies are plain tuples (`wire_call`, `replies_from_wire`), not
the NamedTuples below: cloudpickle calls back into Python for every object that is not a
builtin container, and for a small call those callbacks cost several times the pickling
itself (about 13 us against 2 us per call, on each side of the pipe).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import traceback
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from pipeline.context import PipelineContext
from pipeline.errors import RemoteError, RunnerError, UnpicklableError
from pipeline.result import StageResult
from pipeline.runners._base import REMOTE_TRACEBACK_ATTR, run_async, sync_body
from pipeline.runners._pickling import dumps, explain, try_dumps
from pipeline.runners._pool import CALL, FAILED, READY, SKIP, SKIPPED, WHOLE

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from pipeline.protocol import PipelineStage

KEPT_STAGES: Final = 64
"""How many unpickled stage objects a worker keeps (by digest) for the next calls."""

_stages: OrderedDict[bytes, Any] = OrderedDict()

Write = tuple[str, str, Any]
"""One context write made remotely: `("set_state" | "add_metric" | "increment_metric", key,
value)`."""


class Snapshot(NamedTuple):
    """What a remote stage sees of the run's context (copies, taken when the work is sent)."""

    state: dict[str, Any]
    metrics: dict[str, Any]
    deps: Any
    services: dict[str, Any]


class Call(NamedTuple):
    """One runner call: a stage id (for messages), its inputs and the context snapshot."""

    stage_id: str
    inputs: list[Any]
    snapshot: Snapshot
    items: list[int | None]
    """The fan-out item index of each input (for messages), None for a whole stage's input."""
    backend: str = "asyncio"
    """The caller's anyio backend: an async stage body runs under it (`run_async`)."""


class ErrorInfo(NamedTuple):
    """A remote exception: the exception itself when it pickles, and always its texts."""

    exception: BaseException | None
    type_name: str
    text: str
    traceback: str


class Reply(NamedTuple):
    """What one input produced: `ok` with the returned value, or not with an `ErrorInfo`."""

    ok: bool
    payload: Any
    writes: list[Write]
    plain: bool = False
    """The payload is a sync function's plain return value, to be wrapped in a `StageResult`
    by the receiver (a plain value pickles several times faster than a pydantic model)."""


class RemoteContext(PipelineContext[Any]):
    """The context a stage gets in another process: snapshots of state, metrics and deps.

    `set_state`, `add_metric` and `increment_metric` work on the snapshot and are recorded, in
    order; the executor applies them to the run's real context when the attempt returns.
    Cancelling it, `acquire` and `step` have no run to reach here.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__(
            deps=snapshot.deps,
            state=snapshot.state,
            metrics=snapshot.metrics,
            **snapshot.services,
        )
        self.writes: list[Write] = []

    def set_state(self, key: str, value: Any) -> None:
        """Store `value` under `key` here; the run's context gets it when the attempt returns."""
        super().set_state(key, value)
        self.writes.append(("set_state", key, value))

    def add_metric(self, name: str, value: Any) -> None:
        """Set metric `name` here; the run's context gets it when the attempt returns."""
        super().add_metric(name, value)
        self.writes.append(("add_metric", name, value))

    def increment_metric(self, name: str, amount: float = 1) -> None:
        """Add `amount` to metric `name`; the run's context gets it when the attempt returns."""
        super().increment_metric(name, amount)
        self.writes.append(("increment_metric", name, amount))


def warm_up() -> int:
    """Nothing: called once per worker when a pool opens, so it has imported this module."""
    return 0


def run_call(stage_key: bytes, stage_blob: bytes, call_blob: bytes) -> bytes:
    """Run one call in this process and return the pickled list of `Reply`s (one per input)."""
    stage, sid, inputs, snapshot, items, backend = _load(stage_key, stage_blob, call_blob)
    replies = [_run_one(stage, value, snapshot, backend) for value in inputs]
    return _replies_blob(sid, items, replies)


def _load(stage_key: bytes, stage_blob: bytes, call_blob: bytes) -> tuple[Any, ...]:
    """`(stage, stage_id, inputs, snapshot, items, backend)` of a call (the stage kept by key)."""
    stage = _stages.get(stage_key)
    if stage is None:
        stage = pickle.loads(stage_blob)  # our own bytes, from the executor
        _stages[stage_key] = stage
        while len(_stages) > KEPT_STAGES:
            _stages.popitem(last=False)
    sid, inputs, snap, items, backend = pickle.loads(call_blob)  # our bytes: `wire_call`'s
    return stage, sid, inputs, Snapshot(*snap), items, backend


def _replies_blob(sid: str, items: list[int | None], replies: list[Reply]) -> bytes:
    try:
        return dumps([tuple(reply) for reply in replies])
    except Exception:  # noqa: BLE001  # find the reply that does not pickle, replace it
        checked = [_picklable(sid, i, r) for i, r in zip(items, replies, strict=True)]
        return dumps([tuple(reply) for reply in checked])


def serve(calls: Connection, replies: Connection) -> None:
    """A `ProcessPool` worker: run the calls read from `calls`, in order, until told to quit.

    Each call is `(call_id, (stage_key, stage_blob, call_blob, streamed))`. The replies go to
    `replies` as `(call_id, position, payload, last)`: one message with every item's replies
    (`WHOLE`), or, for a streamed call, one per item as it finishes. Before each item of a
    streamed call after the first, and before each call, a request to skip it is honoured:
    the reply is then `SKIPPED` with the first item not run.
    """
    send = replies.send_bytes
    send(pickle.dumps((READY, os.getpid(), None, True)))
    queued: deque[tuple[int, tuple[Any, ...]]] = deque()
    skipped: set[int] = set()
    current = -1

    def take(block: bool) -> bool:
        """Read the messages waiting (one at least when `block`); False when told to quit."""
        while block or calls.poll():
            block = False
            try:
                data = calls.recv_bytes()
            except (EOFError, OSError):  # the parent is gone
                return False
            kind = data[:1]
            if kind == CALL:
                queued.append(pickle.loads(memoryview(data)[1:]))  # our parent's bytes
            elif kind == SKIP:
                target = int(data[1:])
                if target == current or any(queued_id == target for queued_id, _ in queued):
                    skipped.add(target)
            else:
                return False
        return True

    while take(block=not queued):
        if not queued:
            continue
        current, (key, blob, call_blob, streamed) = queued.popleft()
        if current in skipped:
            skipped.discard(current)
            send(pickle.dumps((current, SKIPPED, 0, True)))
            continue
        try:
            stage, sid, inputs, snapshot, items, backend = _load(key, blob, call_blob)
        except Exception as exc:  # noqa: BLE001  # e.g. an input whose module is not here
            send(_failed_call(current, exc))
            continue
        if not streamed or not inputs:
            replies_ = [_run_one(stage, value, snapshot, backend) for value in inputs]
            send(pickle.dumps((current, WHOLE, _replies_blob(sid, items, replies_), True)))
            skipped.discard(current)
            continue
        last = len(inputs) - 1
        for position, value in enumerate(inputs):
            if position:
                if not take(block=False):
                    return
                if current in skipped:
                    skipped.discard(current)
                    send(pickle.dumps((current, SKIPPED, position, True)))
                    break
            reply = _run_one(stage, value, snapshot, backend)
            blob_ = _replies_blob(sid, items[position : position + 1], [reply])
            send(pickle.dumps((current, position, blob_, position == last)))
        skipped.discard(current)


def _failed_call(call_id: int, exc: Exception) -> bytes:
    """The reply ending a call that could not be loaded here: its error, pickled on its own.

    The envelope stays plain (ints and bytes), so the pool's reader thread never unpickles
    anything that could fail; the event loop does (`failure_of`).
    """
    return pickle.dumps((call_id, FAILED, dumps(tuple(error_info(exc))), True))


def failure_of(blob: bytes) -> BaseException:
    """The exception a worker sent for a call it could not load (`_failed_call`)."""
    try:
        info = ErrorInfo(*pickle.loads(blob))  # our worker's bytes
    except Exception as exc:  # noqa: BLE001  # its exception's class is not importable here
        return RunnerError(f"a worker could not load the call, and its error cannot be read: {exc}")
    return rebuild(info)


def item_reply(blob: bytes) -> Reply:
    """The one `Reply` of a streamed item (a failed one if it cannot be unpickled here)."""
    try:
        return replies_from_wire(blob)[0]
    except Exception as exc:  # noqa: BLE001  # e.g. an output whose class is not importable here
        problem = RunnerError(f"the reply of a worker cannot be unpickled here: {exc}")
        return Reply(
            ok=False, payload=ErrorInfo(problem, "RunnerError", str(problem), ""), writes=[]
        )


def wire_call(call: Call) -> tuple[Any, ...]:
    """`call` as the plain tuples `run_call` unpickles (cheaper to pickle than NamedTuples)."""
    return (call.stage_id, call.inputs, tuple(call.snapshot), call.items, call.backend)


def replies_from_wire(reply_blob: bytes) -> list[Reply]:
    """The `Reply`s in what `run_call` returned."""
    return [Reply(*reply) for reply in pickle.loads(reply_blob)]  # our worker's bytes


def _run_one(stage: PipelineStage[Any, Any], value: Any, snapshot: Snapshot, backend: str) -> Reply:
    # PipelineContext copies state, metrics and services: one item's writes are not another's
    # reads.
    context = RemoteContext(snapshot)
    try:
        body = sync_body(stage)
        if body is None:  # an async stage: its own event loop in this worker
            returned = run_async(_execute, backend, stage, value, context)
        else:
            returned = body(value, context)
            if inspect.isawaitable(returned):  # a sync callable that hands back a coroutine
                returned = run_async(_await, backend, returned)
            if not isinstance(returned, StageResult):
                return Reply(ok=True, payload=returned, writes=context.writes, plain=True)
    except BaseException as exc:  # noqa: BLE001  # everything goes back to the executor
        return Reply(ok=False, payload=error_info(exc), writes=context.writes)
    return Reply(ok=True, payload=returned, writes=context.writes)


async def _execute(stage: PipelineStage[Any, Any], value: Any, context: RemoteContext) -> Any:
    return await stage.execute(value, context)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def error_info(exc: BaseException) -> ErrorInfo:
    """`exc` with its texts; the exception is dropped when it cannot be pickled back.

    An interrupt (`KeyboardInterrupt`, `SystemExit`) in a worker is the stage's failure, not
    the caller's interrupt: it is sent as texts only.
    """
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001  # a broken __str__ must not lose the failure
        text = "<str() of the exception raised>"
    tb = "".join(traceback.format_exception(exc))
    keep: BaseException | None = exc if isinstance(exc, Exception) else None
    if keep is not None:
        blob = try_dumps(keep)
        if blob is None:
            keep = None
        else:
            try:
                pickle.loads(blob)  # our own bytes; some exceptions fail to load
            except Exception:  # noqa: BLE001
                keep = None
    return ErrorInfo(keep, name, text, tb)


def _picklable(stage_id: str, index: int | None, reply: Reply) -> Reply:
    """`reply` if it pickles; else a failure naming what did not (output, error or write)."""
    if try_dumps(reply) is not None:
        return reply
    where = "" if index is None else f" of item {index}"
    if try_dumps(reply.writes) is None:
        for op, key, value in reply.writes:
            if try_dumps(value) is None:
                what = f"context write {op}({key!r}){where}"
                problem = UnpicklableError(stage_id, what, explain(value, "value"))
                return Reply(ok=False, payload=error_info(problem), writes=[])
    if reply.ok:
        problem = UnpicklableError(stage_id, f"output{where}", explain(reply.payload, "output"))
        return Reply(ok=False, payload=error_info(problem), writes=reply.writes)
    info: ErrorInfo = reply.payload  # its exception was checked already: drop it to be sure
    return Reply(ok=False, payload=info._replace(exception=None), writes=reply.writes)


_stand_ins: dict[str, type[RemoteError]] = {}


def rebuild(info: ErrorInfo) -> BaseException:
    """The exception a worker sent back, with the remote traceback kept on it.

    One that did not pickle comes back as a `RemoteError` subclass named after its type, so
    its failure still reads `"OriginalType: message"`.
    """
    exc = info.exception
    if exc is None:
        cls = _stand_ins.get(info.type_name)
        if cls is None:
            name = info.type_name if info.type_name.isidentifier() else "RemoteException"
            cls = type(name, (RemoteError,), {"__module__": RemoteError.__module__})
            _stand_ins[info.type_name] = cls
        exc = cls(info.type_name, info.text, info.traceback)
    if info.traceback:
        exc.add_note(f"Traceback in the worker process:\n{info.traceback.rstrip()}")
        with contextlib.suppress(AttributeError, TypeError):  # an exotic exception type
            setattr(exc, REMOTE_TRACEBACK_ATTR, info.traceback)
    return exc

"""Durable steps: `context.step(name, fn, *args)`, one paid call inside a stage, kept once done.

A step is one call with its own retry policy and resources; with the executor's cache its
successful result is stored under the pipeline, the stage id, the step name and a fingerprint of
the arguments, so a rerun (after a failure or a crash) replays it instead of paying again. The
cache rules are those of section 6 (`pipeline.cache._step`); retry is `pipeline._retry`, the
resources are `pipeline._flow.acquire_in_run`, and the step records go on the stage's run record
in `pipeline._run`.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import weakref
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from pipeline._attempt import raise_if_not_a_failure
from pipeline._cancel import raise_unless_stray
from pipeline._env import current_item, current_stage
from pipeline._flow import acquire_in_run
from pipeline._invoke import CACHE_WRITE_GRACE_S
from pipeline._outcome import Outcome
from pipeline._retry import with_retry
from pipeline._text import exception_text
from pipeline.cache._key import (
    KEY_SCHEMA,
    CacheKey,
)
from pipeline.cache._serialize import UncacheableOutputError, return_type_of, seal, unseal
from pipeline.cache._step import fingerprint_off_loop
from pipeline.clock import SystemClock
from pipeline.definition import RetryConfig
from pipeline.errors import DefinitionError, ResourceError, UnfingerprintableError
from pipeline.functions import _is_async_callable
from pipeline.result import StageResult, StageStatus, StepRun

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline._env import RunEnv
    from pipeline.clock import Clock
    from pipeline.context import PipelineContext

logger = logging.getLogger("pipeline")

STEP_KIND: Final = "step"
"""The kind slot of a step's key; stage and item entries use `"stage"` and `"item"`."""

_OUTSIDE_CLOCK: Final = SystemClock()
"""The clock of a step made outside a run (`pipeline.testing.run_stage`)."""


def step_key(
    pipeline: str, stage_id: str, name: str, args_fingerprint: str, version: str | int = 0
) -> CacheKey:
    """The cache key of step `name` of stage `stage_id` called with arguments of that fingerprint.

    Its own kind in the key layout, so a step's entry never shares a key with a stage or item
    entry (whatever their `cache_version`), with another step, stage or pipeline. It includes
    the stage's `cache_version`, so bumping it after fixing a prompt pays the steps again. The
    key keeps `stage_id`, so `CacheStore.invalidate(stage_id)` drops the stage's steps too.
    """
    parts = [KEY_SCHEMA, STEP_KIND, pipeline, stage_id, version, name, args_fingerprint]
    text = json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    return CacheKey(stage_id, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())


_return_types: weakref.WeakKeyDictionary[object, Any] = weakref.WeakKeyDictionary()


def step_output_type(fn: Callable[..., Any]) -> Any:
    """The type a stored result of `fn` is restored to: its return annotation, else `Any`.

    `async def f() -> T` gives `T`; partials resolve as the function they wrap; a missing,
    unresolvable or generic (`TypeVar`) annotation gives `typing.Any` (plain JSON values, so
    a model returned by such a function is not stored; annotate the function to store it).
    """
    fn = getattr(fn, "__func__", fn)  # a bound method is a new object on every access
    try:
        return _return_types[fn]
    except Exception:  # noqa: BLE001  # not yet seen, unhashable or not weakly referenceable
        pass
    found = return_type_of(fn)
    with contextlib.suppress(Exception):  # as above: such a function is resolved on every call
        _return_types[fn] = found
    return found


def _boxed(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any]:
    return (fn(*args),)


async def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """`fn(*args)`: awaited when async, else in a worker thread.

    An awaitable that a sync `fn` returns is then awaited on the event loop, so
    `lambda: client.get(url)` works too.
    """
    if _is_async_callable(fn):
        return await fn(*args)
    # Boxed: trio refuses a thread function whose result is a coroutine.
    (value,) = await anyio.to_thread.run_sync(_boxed, fn, args)
    if inspect.isawaitable(value):
        value = await value
    return value


def _check(
    owner: str,
    name: object,
    fn: object,
    retry: object,
    uses: object,
    cache: object,
) -> tuple[tuple[str, int], ...]:
    """Reject bad arguments with a `DefinitionError`; the resources to hold, in name order."""
    if not isinstance(name, str) or not name:
        raise DefinitionError(
            owner, "name", f"is {name!r}", 'give each step a non-empty str name, e.g. "summarize"'
        )
    if not callable(fn):
        raise DefinitionError(
            owner, "fn", f"is {fn!r}, not callable", "pass the function to call, then its arguments"
        )
    if retry is not None and not isinstance(retry, RetryConfig):
        raise DefinitionError(
            owner, "retry", f"is {retry!r}", "pass RetryConfig(max_attempts=..., ...) or None"
        )
    if not isinstance(cache, bool):
        raise DefinitionError(owner, "cache", f"is {cache!r}", "use True or False")
    if uses is None:
        return ()
    if not isinstance(uses, Mapping):
        raise DefinitionError(
            owner, "uses", f"is {uses!r}", 'pass a mapping of resource name to weight: {"llm": 1}'
        )
    held: list[tuple[str, int]] = []
    for resource, weight in uses.items():
        if not isinstance(resource, str) or type(weight) is not int or weight < 1:
            raise DefinitionError(
                owner, "uses", f"has {resource!r}: {weight!r}",
                "map each resource name (str) to an int weight >= 1",
            )  # fmt: skip
        held.append((resource, weight))
    return tuple(sorted(held))


def _failed(sid: str, exc: BaseException, attempt: int) -> Outcome:
    return Outcome(StageResult.failure(exception_text(exc), stage_name=sid), attempt, exc)


async def _attempts(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    retry: RetryConfig | None,
    clock: Clock,
    held: tuple[tuple[str, int], ...],
    sid: str,
    jitter_key: str = "",
) -> Outcome:
    """Every call of the step, retried per `retry` on `clock`, each holding the resources."""

    async def attempt(n: int) -> Outcome:
        async with AsyncExitStack() as stack:
            leases: list[Any] = []
            try:
                for resource, weight in held:
                    cm = acquire_in_run(resource, weight, attempt=n)
                    leases.append(await stack.enter_async_context(cm))
            except (ResourceError, DefinitionError):
                raise  # outside a run, an unknown name, a weight above capacity: no retry helps
            except Exception as exc:  # noqa: BLE001  # an open circuit fails this call
                return _failed(sid, exc, n)
            try:
                value = await _call(fn, args)
            except Exception as exc:  # noqa: BLE001  # the step's failure, retried by policy
                outcome = _failed(sid, exc, n)
            except BaseException as exc:  # noqa: BLE001  # re-raised unless it is a failure
                await raise_if_not_a_failure(exc)
                outcome = _failed(sid, exc, n)
            else:
                return Outcome(StageResult.success(value, stage_name=sid), n)
            for lease in leases:
                lease.mark_failed()  # counts against the resource's circuit breaker
            return outcome

    return await with_retry(attempt, retry, clock, jitter_key=jitter_key)


async def run_step(
    context: PipelineContext[Any],
    name: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    retry: RetryConfig | None,
    uses: Mapping[str, int] | None,
    cache: bool,
) -> Any:
    """`context.step(name, fn, *args, ...)`: one durable call inside the running stage.

    Replays a stored result when there is one; otherwise calls `fn(*args)` (a sync `fn` in a
    worker thread), retried per `retry` on the run's clock, each call holding `uses` (acquired
    in name order through the run's resources), and stores a successful result (the write is
    shielded, so a step that finished is kept even while its stage is being cancelled). A
    step's key is the pipeline name, the stage id, `name` and a fingerprint of `args`; args
    that cannot be fingerprinted, or a result that would not restore as an equal value of the
    same type, just run uncached, with a logged warning. Every step that ends goes on the
    stage's run record as a `StepRun` and out as a `StepFinished` event (one cut short by its
    stage's cancellation did not end, and leaves neither).

    Outside a run (a stage called directly, e.g. by `pipeline.testing.run_stage`) the call is
    made with its retry on the real clock and no cache, and `uses` raises `ResourceError`.

    Returns:
        `fn`'s result (or the stored one).

    Raises:
        DefinitionError: a bad argument (`name`, `fn`, `retry`, `uses`, `cache`), or a `uses`
            weight above the resource's capacity (never retried).
        ResourceError: `uses` names a resource the executor does not have, or outside a run.
        Exception: `fn`'s last exception once the step's retries are spent.
    """
    scope = current_stage.get()
    where = "" if scope is None else f" in stage {scope[1]!r}"
    held = _check(f"context.step({name!r}){where}", name, fn, retry, uses, cache)
    if scope is None:
        outcome = await _attempts(fn, args, retry, _OUTSIDE_CLOCK, held, "")
        if outcome.result.success:
            return outcome.result.output
        assert outcome.exception is not None  # a step's failure is always an exception
        raise outcome.exception
    env, sid = scope
    return await _Step(env, sid, name, current_item.get()).run(fn, args, retry, held, cache)


class _Step:
    """One durable step of a stage in a run: its cache lookup, calls, write and record."""

    __slots__ = ("env", "item", "name", "sid", "started")

    def __init__(self, env: RunEnv, sid: str, name: str, item: int | None) -> None:
        self.env = env
        self.sid = sid
        self.name = name
        self.item = item
        self.started = env.clock.now()

    def _warn(self, text: str) -> None:
        at = "" if self.item is None else f" item {self.item}"
        logger.warning("cache: stage %r%s step %r %s", self.sid, at, self.name, text)

    def _record(
        self, status: StageStatus, *, cached: bool, attempts: int, error: str | None
    ) -> None:
        env = self.env
        record = StepRun(
            name=self.name,
            item=self.item,
            status=status,
            cached=cached,
            attempts=attempts,
            duration_ms=(env.clock.now() - self.started) * 1000,
            error=error,
        )
        env.steps.setdefault(self.sid, []).append(record)
        env.reporter.step_finished(self.sid, record)

    async def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        retry: RetryConfig | None,
        held: tuple[tuple[str, int], ...],
        cache: bool,
    ) -> Any:
        key: CacheKey | None = None
        output_type: Any = Any
        if cache and self.env.store is not None:
            output_type = step_output_type(fn)
            key = await self._key(args)
            if key is not None:
                hit, value = await self._lookup(key, output_type)
                if hit:
                    self._record(StageStatus.SUCCEEDED, cached=True, attempts=0, error=None)
                    return value
        try:
            where = f"{self.sid}/{self.name}" + ("" if self.item is None else f"[{self.item}]")
            outcome = await _attempts(fn, args, retry, self.env.clock, held, self.sid, where)
        except (ResourceError, DefinitionError) as exc:
            self._record(StageStatus.FAILED, cached=False, attempts=0, error=exception_text(exc))
            raise
        result = outcome.result
        if not result.success:
            self._record(
                StageStatus.FAILED, cached=False, attempts=outcome.attempts, error=result.error
            )
            assert outcome.exception is not None  # a step's failure is always an exception
            raise outcome.exception
        if key is not None:
            with anyio.move_on_after(CACHE_WRITE_GRACE_S, shield=True):
                await self._store(key, result.output, output_type)
        self._record(StageStatus.SUCCEEDED, cached=False, attempts=outcome.attempts, error=None)
        return result.output

    async def _key(self, args: tuple[Any, ...]) -> CacheKey | None:
        """The step's key, or None (counted as uncacheable, with a warning) without a fingerprint."""
        try:
            digest = await fingerprint_off_loop(args)
        except Exception as exc:  # noqa: BLE001  # any fingerprint error: run uncached
            self._tally("uncacheable")
            if isinstance(exc, UnfingerprintableError):  # its path names the argument: args[i]
                path = exc.path.replace("input", "args", 1)
                text = f"cannot fingerprint {path}: {exc.reason}"
            else:
                text = f"cannot fingerprint args: {exception_text(exc)}"
            self._warn(f"not cached: {text}")
            return None
        definition = self.env.definition
        version = 0 if definition is None else definition.get_stage(self.sid).cache_version
        return step_key(self.env.pipeline_name, self.sid, self.name, digest, version)

    def _tally(self, counter: str) -> None:
        tally = self.env.tally
        if tally is not None:
            setattr(tally, counter, getattr(tally, counter) + 1)

    async def _lookup(self, key: CacheKey, output_type: Any) -> tuple[bool, Any]:
        store, serializer = self.env.store, self.env.serializer
        assert store is not None  # checked by the caller
        assert serializer is not None  # set together with the store
        try:
            blob = await store.get(key)
            if blob is None:
                self._tally("misses")
                return False, None
            value = serializer.loads(unseal(serializer, blob), output_type)
        except (Exception, anyio.get_cancelled_exc_class()) as exc:  # noqa: BLE001  # a miss
            if not isinstance(exc, Exception):
                await raise_unless_stray(exc)  # a stray one from the store is just a miss
            self._tally("misses")
            self._tally("errors")
            self._warn(f"read failed, calling again: {exception_text(exc)}")
            return False, None
        self._tally("hits")
        return True, value

    async def _store(self, key: CacheKey, value: Any, output_type: Any) -> None:
        store, serializer = self.env.store, self.env.serializer
        assert store is not None  # a key is only made with a store
        assert serializer is not None
        try:
            payload = serializer.dumps(value, output_type)
        except Exception as exc:  # noqa: BLE001  # an unstorable result is just not cached
            self._tally("uncacheable")
            text = str(exc) if isinstance(exc, UncacheableOutputError) else exception_text(exc)
            self._warn(f"result not cached: {text}")
            return
        try:
            await store.put(key, seal(serializer, payload))
        except (Exception, anyio.get_cancelled_exc_class()) as exc:  # noqa: BLE001  # a note only
            if not isinstance(exc, Exception):
                await raise_unless_stray(exc)  # a stray one from the store is a failed write
            self._tally("errors")
            self._warn(f"write failed: {exception_text(exc)}")
            return
        self._tally("writes")

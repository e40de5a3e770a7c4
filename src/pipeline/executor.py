"""`PipelineExecutor`: one scheduler over a ready set that serves both scheduling policies.

It owns the task group, the stage tasks and their cancel scopes, the pipeline timeout, the
cancel-token watch and the events' lifetime. The run's bookkeeping and scheduling rules live in
`pipeline._run`, one invocation in `pipeline._invoke`, the graph facts in `pipeline.plan`.

The scheduler is completion-driven: when a stage ends, its task records it (`RunState.finish`),
releases what it unblocks (`RunState.launch_ready`), and carries on with one released stage itself
instead of handing it to a new task. A chain therefore runs in one task with no queue between
steps; the host task only waits for "nothing in flight".
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from contextvars import copy_context
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, final

import anyio
import anyio.from_thread
import anyio.lowlevel

from pipeline._cancel import raise_unless_stray
from pipeline._context_run import InContext
from pipeline._dispatch import EventDispatcher, new_run_id, run_observers
from pipeline._env import RunEnv, current_stage
from pipeline._flow import resource_issues
from pipeline._invoke import invoke_stage
from pipeline._outcome import Outcome
from pipeline._reporter import NULL_REPORTER, RunReporter
from pipeline._run import RunState, Scheduling
from pipeline._stream import run_stream_group
from pipeline._stream_graph import stream_groups
from pipeline._stream_run import StreamingRun, open_stream
from pipeline._text import exception_text, format_ms
from pipeline.cache._serialize import JsonSerializer
from pipeline.cache._step import CacheTally
from pipeline.clock import SystemClock, current_clock
from pipeline.context import PipelineContext
from pipeline.definition import ExecutionPattern
from pipeline.errors import DefinitionError, PipelineValidationError
from pipeline.result import (
    PipelineResult,
    StageResult,
)
from pipeline.runners import INLINE, THREADS, InlineRunner, ThreadRunner
from pipeline.runners._rules import runner_issues
from pipeline.runners._session import openable, used_by

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from pipeline._flow import Middleware
    from pipeline._reporter import Reporter
    from pipeline.cache._serialize import Serializer
    from pipeline.cache._store import CacheStore
    from pipeline.clock import Clock
    from pipeline.context import CancelToken
    from pipeline.definition import PipelineDefinition
    from pipeline.errors import ValidationIssue
    from pipeline.events import Observer
    from pipeline.resources import Resource
    from pipeline.runners import Runner

T = TypeVar("T")

TOKEN_POLL_S = 0.02
"""How often a cancel token that cannot be awaited (not an `anyio.Event`) is checked."""


@final
class PipelineExecutor:
    """Runs `PipelineDefinition`s.

    Args:
        scheduling: `"waves"` (default) runs wave k only after wave k-1 finished; `"eager"`
            starts each stage as soon as its inputs are done. Results are identical.
        clock: The time source for retry waits, timeouts and durations (default: real time;
            tests pass `pipeline.testing.FakeClock()`).
        timeout_ms: Bound on a whole run, counted from the start of `execute`; when it passes,
            stages in flight are cancelled and the result fails with an error containing
            "Timeout".
        cache: A `pipeline.cache.CacheStore` (`MemoryCache()`, `SQLiteCache(path)`): successful
            outputs are stored, and a rerun serves a stage (or fan-out item) whose id, cache
            version and input match without executing it. None (default): no caching.
        cache_serializer: How outputs become bytes: `JsonSerializer()` (default; loading never
            executes code) or `PickleSerializer()` (opt-in, for outputs JSON cannot hold).
        observers: Objects with `on_event(event)` (sync or async) receiving every
            `pipeline.events` event of each run; an observer that raises is logged and ignored.
            With none, no event is even built.
        runners: More `pipeline.runners.Runner`s by name, for `StageDefinition(runner=...)`.
            `"inline"` (the event loop) and `"threads"` (worker threads) are always there.
            One that is an async context manager (`ProcessRunner`, `DaskRunner`) is entered
            for each run whose stages use it; enter it yourself to keep it open across runs.
        resources: Shared `Resource`s by name (concurrency and rate limits, circuit breakers)
            for `StageDefinition(uses=...)` and `context.acquire(name)`; one `Resource` may be
            shared by several executors and concurrent runs.
        middleware: Objects with `async def __call__(self, call, call_next) -> StageResult`
            wrapping every attempt (of a stage or one fan-out item) inside the retry loop and
            outside the timeout; the first is the outermost. One that raises fails the attempt.
        validate_outputs: Check every output (each fan-out item's) against the stage's
            declared output type (section 6's order) with a pydantic `TypeAdapter`, strictly:
            the value must already be of that type (`"5"` is not an `int`). A mismatch fails
            the attempt (retried like any failure) with a message naming the type; cache hits
            are never checked, and stages without a declared type are not either. Default
            False: no cost.
    """

    def __init__(
        self,
        *,
        scheduling: Scheduling = "waves",
        clock: Clock | None = None,
        timeout_ms: float | None = None,
        cache: CacheStore | None = None,
        cache_serializer: Serializer | None = None,
        observers: Iterable[Observer] = (),
        runners: Mapping[str, Runner] | None = None,
        resources: Mapping[str, Resource] | None = None,
        middleware: Iterable[Middleware] = (),
        validate_outputs: bool = False,
    ) -> None:
        if scheduling not in ("waves", "eager"):
            raise DefinitionError(
                "PipelineExecutor", "scheduling", f"is {scheduling!r}", 'use "waves" or "eager"'
            )
        if timeout_ms is not None and not (math.isfinite(timeout_ms) and timeout_ms > 0):
            raise DefinitionError(
                "PipelineExecutor", "timeout_ms", f"is {timeout_ms!r}", "use a positive ms value"
            )
        self.scheduling: Scheduling = scheduling
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.timeout_ms = timeout_ms
        self.cache = cache
        self.cache_serializer: Serializer = (
            cache_serializer if cache_serializer is not None else JsonSerializer()
        )
        self.observers: tuple[Observer, ...] = tuple(observers)
        self._chain_key = object()  # this executor's settings, for stages' kept attempt chains
        named: dict[str, Runner] = {INLINE: InlineRunner(), THREADS: ThreadRunner()}
        fix = "map names to runner objects with an async run(stage, input, context)"
        named.update(_named("runners", runners, "run", fix))
        self.runners: Mapping[str, Runner] = MappingProxyType(named)
        """The runners by name, fixed at construction (stages' attempt chains are built once)."""
        self._openable = openable(named)  # runners entered for the runs that use them
        fix = 'map names to pipeline.Resource(...) objects, e.g. {"llm": Resource(rate=10)}'
        shared: dict[str, Resource] = _named("resources", resources, "acquire", fix)
        self.resources: Mapping[str, Resource] = MappingProxyType(shared)
        """The shared resources by name, fixed at construction."""
        flag: object = validate_outputs  # runtime check for callers without a type checker
        if not isinstance(flag, bool):
            raise DefinitionError(
                "PipelineExecutor", "validate_outputs", f"is {validate_outputs!r}",
                "use True or False",
            )  # fmt: skip
        self.validate_outputs = validate_outputs
        """Whether each output is checked against its declared type (see the class docstring)."""
        self.middleware: tuple[Middleware, ...] = tuple(middleware)
        """The middleware around every attempt, outermost first."""
        for mw in self.middleware:
            if not callable(mw):
                raise DefinitionError(
                    "PipelineExecutor", "middleware", f"holds {mw!r}, which is not callable",
                    "pass objects with async def __call__(self, call, call_next)",
                )  # fmt: skip

    def validate(self, pipeline: PipelineDefinition) -> None:
        """Raise `PipelineValidationError` for every problem `execute` would report.

        That is the definition's own problems plus what this executor must provide for it
        (runners named by stages). Nothing runs.
        """
        issues = self._issues(pipeline)
        if issues:
            raise PipelineValidationError(pipeline.name, issues)

    def _issues(self, pipeline: PipelineDefinition) -> tuple[ValidationIssue, ...]:
        own = pipeline.issues
        if own:
            return own
        stages = pipeline.stages
        return runner_issues(stages, self.runners) + resource_issues(stages, self.resources)

    async def execute(
        self,
        pipeline: PipelineDefinition,
        initial_input: Any = None,
        context: PipelineContext[Any] | None = None,
    ) -> PipelineResult:
        """Run `pipeline` and return its result; stage failures never raise.

        An invalid definition gives `success=False`, `failed_stages=["validation"]` and
        `metadata["validation_errors"]`. Cancelling the awaiting task cancels every stage and
        propagates; no task outlives this call.
        """
        ctx: PipelineContext[Any] = context if context is not None else PipelineContext()
        clock = self.clock
        started = clock.now()
        # Created now, so the run's deadline counts from here and not from when a task starts.
        deadline = None if self.timeout_ms is None else clock.deadline_scope(self.timeout_ms / 1000)
        extra = run_observers.get()  # `stream()`'s own observer of this run
        observers = self.observers + extra if extra else self.observers
        bus = EventDispatcher(observers, clock=clock) if observers else None
        # This run only: runs started inside it (a SubPipeline, an execute in a stage) must not
        # see the caller's stream observer (their tasks copy this context).
        observers_token = run_observers.set(()) if extra else None
        clock_token = current_clock.set(clock)
        try:
            if isinstance(clock, AbstractAsyncContextManager):
                # A clock that drives time itself (FakeClock) runs its driver for this run; it
                # is re-entrant, so a test that entered it already keeps control of it.
                async with clock:
                    return await self._observed(
                        pipeline, initial_input, ctx, started, deadline, bus
                    )
            return await self._observed(pipeline, initial_input, ctx, started, deadline, bus)
        except BaseExceptionGroup as group:
            # KeyboardInterrupt or SystemExit raised in a stage reach the caller as themselves,
            # not wrapped in the task groups' BaseExceptionGroup (stage *errors* never get here).
            leaf = _sole_leaf(group)
            if leaf is None:
                raise
            raise leaf from None
        finally:
            current_clock.reset(clock_token)
            if observers_token is not None:
                run_observers.reset(observers_token)

    async def _observed(
        self,
        pipeline: PipelineDefinition,
        initial_input: Any,
        ctx: PipelineContext[Any],
        started: float,
        deadline: anyio.CancelScope | None,
        bus: EventDispatcher | None,
    ) -> PipelineResult:
        if bus is None:
            return await self._execute(
                pipeline, initial_input, ctx, started, deadline, NULL_REPORTER
            )
        async with bus.running():
            reporter = RunReporter(bus, new_run_id(), self.clock, started)
            return await self._execute(pipeline, initial_input, ctx, started, deadline, reporter)

    async def _execute(
        self,
        pipeline: PipelineDefinition,
        initial_input: Any,
        ctx: PipelineContext[Any],
        started: float,
        deadline: anyio.CancelScope | None,
        reporter: Reporter,
        *,
        opened: bool = False,
    ) -> PipelineResult:
        issues = self._issues(pipeline)
        if issues:  # before opening any runner: an invalid run starts no pool or cluster
            messages = [issue.message for issue in issues]
            error = f"invalid pipeline definition: {'; '.join(messages)}"
            details: tuple[str, object] = ("validation_errors", messages)
            return self._not_run(pipeline, ctx, reporter, "validation", error, details)
        used = used_by(self._openable, pipeline.stages) if self._openable and not opened else ()
        if used:  # pools, clusters: open for the run (a caller's own entry keeps them open)
            async with AsyncExitStack() as stack:
                for name, runner in used:
                    try:
                        await stack.enter_async_context(runner)
                    except Exception as exc:  # noqa: BLE001  # a run reports it, never raises
                        users = ", ".join(repr(s.id) for s in pipeline.stages if s.runner == name)
                        message = f"runner {name!r} could not start: {exception_text(exc)}"
                        error = f"{message} (needed by {users}); nothing ran"
                        details = ("runner_errors", {name: message})
                        return self._not_run(pipeline, ctx, reporter, "runners", error, details)
                return await self._execute(
                    pipeline, initial_input, ctx, started, deadline, reporter, opened=True
                )
        outputs: dict[str, Any] = {}
        env = RunEnv(
            clock=self.clock,
            reporter=reporter,
            pipeline_name=pipeline.name,
            chain_key=self._chain_key,
            definition=pipeline,
            runners=self.runners,
            resources=self.resources,
            middleware=self.middleware,
            validate_outputs=self.validate_outputs,
            plain=not reporter.enabled and not self.validate_outputs and not self.middleware,
            store=self.cache,
            serializer=self.cache_serializer,
            tally=None if self.cache is None else CacheTally(),
            outputs=outputs,
        )
        remove_listener: Callable[[], None] | None = None
        run: RunState | None = None
        try:
            async with anyio.create_task_group() as tg:
                run = RunState(
                    definition=pipeline,
                    plan=pipeline.plan,
                    context=ctx,
                    env=env,
                    eager=self.scheduling == "eager",
                    initial_input=initial_input,
                    outputs=outputs,
                    started=started,
                    tg=tg,
                    task=self._worker,
                )
                remove_listener = ctx._add_cancel_listener(self._cancel_listener(run))
                reporter.run_started(pipeline.name, run.plan, self.scheduling)
                if not run.eager:
                    reporter.wave_started(0, run.plan.waves[0])
                if deadline is not None:
                    tg.start_soon(self._pipeline_timeout, run, deadline)
                token = ctx.cancel_token
                if token is not None:
                    tg.start_soon(self._watch_token, run, token)
                run.launch_ready()
                if run.in_flight:
                    run.spawn_worker()
                    await run.idle.wait()
                tg.cancel_scope.cancel()  # the watchdogs, if any
        except BaseException:
            # The caller was cancelled (or a stage raised KeyboardInterrupt): observers still
            # get every stage's end and RunFinished, so no span or progress bar stays open.
            if reporter.enabled and run is not None:
                run.abandon("execute() was cancelled by its caller")
                reporter.run_finished(run.build(self.scheduling))
            raise
        finally:
            if remove_listener is not None:
                remove_listener()
        assert run is not None  # built first thing inside the task group
        run.fail_lost()
        run.settle_unfinished()
        result = run.build(self.scheduling)
        reporter.run_finished(result)
        return result

    def stream(
        self,
        pipeline: PipelineDefinition,
        initial_input: Any = None,
        context: PipelineContext[Any] | None = None,
    ) -> AbstractAsyncContextManager[StreamingRun]:
        """`async with executor.stream(pipeline, ...) as run`: read the run's events as they come.

        See `StreamingRun`; leaving the block before the run ended cancels the run.
        """
        return open_stream(self, pipeline, initial_input, context)

    def run_sync(
        self,
        pipeline: PipelineDefinition,
        initial_input: Any = None,
        context: PipelineContext[Any] | None = None,
        *,
        backend: Literal["asyncio", "trio"] = "asyncio",
    ) -> PipelineResult:
        """`execute` for scripts without an event loop (starts one with `anyio.run`).

        The result travels out through a holder rather than as the main coroutine's return
        value: on Python 3.11/3.12 asyncio's runner formats the return value of its main task
        on the way out, which for a run with large outputs costs seconds and doubles memory.
        """
        holder: list[PipelineResult] = []

        async def main() -> None:
            holder.append(await self.execute(pipeline, initial_input, context))

        anyio.run(main, backend=backend)
        return holder[0]

    # -- tasks -----------------------------------------------------------------------------------
    async def _worker(self, run: RunState) -> None:
        """Run queued stages one after another until none is left for this worker.

        A finishing stage releases its dependents into the queue and this worker carries on
        with them; `RunState.take` spawns a helper while more are queued (see there). The run
        has one cancel scope, its task group's: when the run stops, the stage running here is
        recorded as cancelled on the way out.
        """
        run.helper_pending = False
        # A worker that starts after the caller was cancelled takes nothing: its queued stages
        # stay in flight and end as cancelled with the caller's reason (not "not started").
        await anyio.lowlevel.checkpoint_if_cancelled()
        env, ctx = run.env, run.context
        clock, reporter = env.clock, env.reporter
        sid = run.take()
        streams = stream_groups(run.definition)  # one dict lookup: {} when nothing streams
        while sid is not None:
            if streams and sid in streams:  # a producer: it runs with its streaming consumers
                await run_stream_group(run, streams[sid])
                sid = run.take()
                continue
            t0 = clock.now()
            try:
                sdef = run.stages[sid]
                cache = run.caches.get(sid) if run.caches else None
                value = run.input_of(sdef)
                if reporter.enabled:
                    items = None
                    if sdef.pattern is ExecutionPattern.FAN_OUT and isinstance(value, list | tuple):
                        items = len(value)
                    reporter.stage_started(sid, run.plan.wave_of[sid], items)
                # Each stage runs in a copy of the worker's context: what it sets in a ContextVar
                # (a logging tag, a span) never leaks to the stages this worker runs next, nor
                # to the helpers it spawns (about 0.3 us a stage).
                stage_context = copy_context()
                stage_context.run(current_stage.set, (env, sid))
                try:
                    # The first step runs at once in the stage's context; a stage that finishes
                    # without waiting (a quick one) needs no wrapper (~0.5 us saved a stage).
                    coro = invoke_stage(sdef, value, ctx, env, cache)
                    try:
                        first = stage_context.run(coro.send, None)
                    except StopIteration as done:
                        outcome = done.value
                    else:
                        outcome = await InContext(coro, stage_context, first)
                except anyio.get_cancelled_exc_class() as exc:
                    # Stray cancellations inside the stage are its failure already; one from
                    # elsewhere (a cache store, an observer) must not pass for a clean stop.
                    await raise_unless_stray(exc)
                    outcome = Outcome(
                        StageResult.failure(exception_text(exc), stage_name=sid), 0, exc
                    )
            except BaseException:
                if run.stop_kind is not None:  # the run stopped: this stage was cut short
                    run.in_flight.discard(sid)
                    cancelled = StageResult.cancelled(
                        run.stop_reason or "cancelled", stage_name=sid
                    )
                    run.finish(sid, Outcome(cancelled, 0), t0, clock.now())
                    if not run.in_flight:
                        run.idle.set()
                # Otherwise the caller was cancelled (or an interrupt): `abandon` records it.
                raise
            t1 = clock.now()
            run.in_flight.discard(sid)
            run.finish(sid, outcome, t0, t1)
            run.launch_ready()
            sid = run.take()
        if not run.in_flight:
            run.idle.set()

    async def _pipeline_timeout(self, run: RunState, deadline: anyio.CancelScope) -> None:
        # A deadline scope, not a sleep: a FakeClock fires it only when virtual time gets there.
        with deadline:
            await anyio.sleep_forever()
        if not run.in_flight:
            # Every stage had finished when the deadline fired (the host task has not yet
            # woken to end the run): the timeout cut nothing short, so the run stands.
            return
        name, timeout_ms = run.definition.name, self.timeout_ms
        assert timeout_ms is not None  # this task only runs with a deadline
        run.stop(
            "timeout", f"Timeout: pipeline {name!r} exceeded timeout_ms={format_ms(timeout_ms)}"
        )

    async def _watch_token(self, run: RunState, token: CancelToken) -> None:
        """Stop the run once the context's cancel token is set.

        An `anyio.Event` is awaited. Any other token (`threading.Event`, `asyncio.Event`, ...)
        is polled every `TOKEN_POLL_S` of real time: a poll interval is not a semantic wait, so
        it must not move a `FakeClock`.
        """
        if isinstance(token, anyio.Event):
            await token.wait()
        else:
            while not token.is_set():  # noqa: ASYNC110  # nothing to await on a foreign token
                await anyio.sleep(TOKEN_POLL_S)
        run.stop("cancelled", "cancel_token is set")

    def _cancel_listener(self, run: RunState) -> Callable[[str], None]:
        loop_thread = threading.get_ident()
        token = anyio.lowlevel.current_token()

        def on_cancel(reason: str) -> None:
            if threading.get_ident() == loop_thread:
                run.stop("cancelled", reason)
            else:
                anyio.from_thread.run_sync(run.stop, "cancelled", reason, token=token)

        return on_cancel

    def _not_run(
        self,
        pipeline: PipelineDefinition,
        ctx: PipelineContext[Any],
        reporter: Reporter,
        cause: Literal["validation", "runners"],
        error: str,
        details: tuple[str, object],
    ) -> PipelineResult:
        """The result of a run that started no stage (invalid, or a runner would not open).

        `failed_stages` is `[cause]` and `details` a `(metadata key, value)` pair; observers
        still see the run start and finish.
        """
        metadata = ctx.metrics_snapshot()
        metadata[details[0]] = details[1]
        result = PipelineResult.model_construct(
            pipeline_name=pipeline.name,
            success=False,
            failed_stages=[cause],
            metadata=metadata,
            error=error,
            scheduling=self.scheduling,
            outputs={},
            stage_results={},
            skipped_stages=[],
            cancelled_stages=[],
            total_duration_ms=0.0,
            stage_runs={},
            run_id=reporter.run_id,
        )
        reporter.run_started(pipeline.name, None, self.scheduling)
        reporter.run_finished(result)
        return result


def _named(field: str, given: Mapping[str, T] | None, method: str, fix: str) -> dict[str, T]:
    """`given` as a dict, each name a str and each value with a callable `method`."""
    named: dict[str, T] = {}
    for name, value in (given or {}).items():
        key = cast("object", name)  # runtime check for callers without a type checker
        if not isinstance(key, str) or not callable(getattr(value, method, None)):
            raise DefinitionError("PipelineExecutor", f"{field}[{name!r}]", f"is {value!r}", fix)
        named[name] = value
    return named


def _sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception that every leaf of `group` is, if it is a KeyboardInterrupt/SystemExit.

    Fan-out nests task groups, so the same interrupt can arrive wrapped twice.
    """
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    interrupts = [e for e in leaves if isinstance(e, KeyboardInterrupt | SystemExit)]
    if interrupts and all(isinstance(e, KeyboardInterrupt | SystemExit) for e in leaves):
        return interrupts[0]
    return None

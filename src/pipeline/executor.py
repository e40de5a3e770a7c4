"""`PipelineExecutor`: one scheduler over a ready set that serves both scheduling policies.

It owns the task group, each stage's cancel scope, fail-fast, the pipeline timeout and the
run's bookkeeping, and builds the `PipelineResult`. How one stage is invoked lives in
`pipeline._invoke`; the graph facts in `pipeline.plan`; events in `pipeline._reporter`.

The scheduler is completion-driven: when a stage ends, its task records it (`_Run.finish`),
releases what it unblocks (`_Run.launch_ready`), and carries on with one released stage itself
instead of handing it to a new task. A chain therefore runs in one task with no queue between
steps; the host task only waits for "nothing in flight".
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, final

import anyio
import anyio.from_thread
import anyio.lowlevel

from pipeline._dispatch import EventDispatcher, new_run_id
from pipeline._invoke import Outcome, invoke_stage
from pipeline._model import fast_model, trusted_model
from pipeline._reporter import RunReporter
from pipeline.cache._serialize import JsonSerializer
from pipeline.cache._step import CacheTally, StageCache
from pipeline.clock import SystemClock, current_clock
from pipeline.context import PipelineContext
from pipeline.definition import ExecutionPattern
from pipeline.errors import DefinitionError
from pipeline.result import (
    AttemptRun,
    PipelineResult,
    StageResult,
    StageRun,
    StageStatus,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from anyio.abc import TaskGroup

    from pipeline.cache._serialize import Serializer
    from pipeline.cache._store import CacheStore
    from pipeline.clock import Clock
    from pipeline.context import CancelToken
    from pipeline.definition import PipelineDefinition, StageDefinition
    from pipeline.events import Observer
    from pipeline.plan import ExecutionPlan

Scheduling = Literal["waves", "eager"]
"""`waves`: wave k starts when wave k-1 is done. `eager`: a stage starts when its inputs are."""

StopKind = Literal["fail_fast", "cancelled", "timeout"]

TOKEN_POLL_S = 0.02
"""How often a cancel token that cannot be awaited (not an `anyio.Event`) is checked."""

NOT_STARTED = "not started"
UPSTREAM_FAILED = "upstream failed"


@dataclass(slots=True, eq=False)
class _Run:
    """Mutable bookkeeping of one run; it leaves only as a frozen `PipelineResult`."""

    definition: PipelineDefinition
    plan: ExecutionPlan
    context: PipelineContext[Any]
    clock: Clock
    eager: bool
    initial_input: Any
    started: float
    tg: TaskGroup
    task: Callable[[_Run, str], Any]
    reporter: RunReporter | None = None
    store: CacheStore | None = None
    serializer: Serializer | None = None
    cache_tally: CacheTally | None = None
    stages: dict[str, StageDefinition] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    wave_left: list[int] = field(default_factory=list)
    held: list[list[str]] = field(default_factory=list)
    current_wave: int = 0
    ready: deque[str] = field(default_factory=deque)
    ready_at: dict[str, float] = field(default_factory=dict)
    in_flight: dict[str, anyio.CancelScope] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    results: dict[str, StageResult[Any]] = field(default_factory=dict)
    records: dict[str, StageRun] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    caches: dict[str, StageCache] = field(default_factory=dict)
    critical_failure: bool = False
    stop_kind: StopKind | None = None
    stop_reason: str | None = None
    idle: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        plan = self.plan
        self.stages = {s.id: s for s in self.definition.stages}
        self.pending = {sid: len(set(plan.predecessors[sid])) for sid in plan.order}
        self.wave_left = [len(w) for w in plan.waves]
        self.held = [[] for _ in plan.waves]
        self.ready.extend(plan.waves[0])
        self.ready_at = dict.fromkeys(plan.waves[0], self.started)

    # -- stopping ------------------------------------------------------------------------------
    def stop(self, kind: StopKind, reason: str) -> None:
        """Start nothing new and cancel every stage in flight (first stop wins)."""
        if self.stop_kind is not None:
            return
        self.stop_kind, self.stop_reason = kind, reason
        for scope in self.in_flight.values():
            scope.cancel()

    # -- launching -----------------------------------------------------------------------------
    def launch_ready(self, *, keep_scope: anyio.CancelScope | None = None) -> str | None:
        """Start the ready stages in new tasks.

        With `keep_scope` (the calling stage task's scope), one ready stage is returned for the
        caller to run itself under that scope instead of in a new task.
        """
        ctx = self.context
        if self.stop_kind is None and ctx.is_cancelled():
            self.stop("cancelled", ctx.cancel_reason or "cancelled")
        kept = None
        while self.ready and self.stop_kind is None:
            sid = self.ready.popleft()
            if sid in self.blocked:
                skipped = StageResult.skipped(UPSTREAM_FAILED, stage_name=sid)
                self.finish(sid, Outcome(skipped, attempts=0), None, None)
                continue
            if self.store is not None and self.stages[sid].cache:
                assert self.serializer is not None
                assert self.cache_tally is not None
                self.caches[sid] = StageCache(
                    self.stages[sid], self.store, self.serializer, self.cache_tally
                )
            if keep_scope is not None and kept is None:
                kept = sid
                self.in_flight[sid] = keep_scope
            else:
                self.in_flight[sid] = anyio.CancelScope()
                self.tg.start_soon(self.task, self, sid)
        return kept

    def input_of(self, sdef: StageDefinition) -> Any:
        """No inputs: the initial input; one: its output; several: `{id: output}`."""
        deps = sdef.inputs
        if not deps:
            return self.initial_input
        if len(deps) == 1:
            return self.outputs.get(deps[0])
        return {d: self.outputs.get(d) for d in deps}

    # -- bookkeeping ---------------------------------------------------------------------------
    def finish(self, sid: str, outcome: Outcome, t0: float | None, t1: float | None) -> None:
        """Record a finished stage and release the stages it unblocks."""
        result = outcome.result
        self.results[sid] = result
        record = self._record(sid, outcome, t0, t1)
        self.records[sid] = record
        if self.reporter is not None:
            self.reporter.stage_finished(record)
        status = result.status
        if status is StageStatus.SUCCEEDED:
            self.outputs[sid] = result.output
        elif status is StageStatus.FAILED and self.stages[sid].critical:
            self.critical_failure = True
            if self.definition.fail_fast:
                self.stop("fail_fast", f"stage {sid!r} failed (fail_fast)")
            else:
                self.blocked.update(self.plan.downstream(sid))
        self._release(sid)

    def _record(self, sid: str, outcome: Outcome, t0: float | None, t1: float | None) -> StageRun:
        result = outcome.result
        base = self.started
        cache = self.caches.pop(sid, None) if self.caches else None
        started_ms = None if t0 is None else (t0 - base) * 1000
        duration_ms = 0.0 if t0 is None or t1 is None else (t1 - t0) * 1000
        attempt_runs: tuple[AttemptRun, ...] = ()
        if outcome.attempt_log is not None:
            attempt_runs = tuple(
                fast_model(
                    AttemptRun,
                    {
                        "attempt": n,
                        "backoff_ms": backoff * 1000,
                        "started_ms": (a0 - base) * 1000,
                        "duration_ms": (a1 - a0) * 1000,
                        "error": error,
                    },
                )
                for n, backoff, a0, a1, error in outcome.attempt_log
            )
        elif outcome.attempts == 1 and outcome.items is None and started_ms is not None:
            # The cheap path made exactly one attempt spanning the stage's own run.
            attempt_runs = (
                fast_model(
                    AttemptRun,
                    {
                        "attempt": 1,
                        "backoff_ms": 0.0,
                        "started_ms": started_ms,
                        "duration_ms": duration_ms,
                        "error": None if result.success else result.error,
                    },
                ),
            )
        ready_at = self.ready_at.get(sid)
        return trusted_model(
            StageRun,
            stage_id=sid,
            status=result.status,
            attempts=outcome.attempts,
            cached=outcome.cached,
            cached_items=None if cache is None or not cache.item_level else cache.hits,
            cache_warnings=() if cache is None else tuple(cache.warnings),
            cache_errors=() if cache is None else tuple(cache.errors),
            started_ms=started_ms,
            finished_ms=None if t1 is None else (t1 - base) * 1000,
            duration_ms=duration_ms,
            queue_wait_ms=None if t0 is None or ready_at is None else (t0 - ready_at) * 1000,
            attempt_runs=attempt_runs,
            items=outcome.items,
            error=result.error,
            exception_type=outcome.exception_type,
            traceback=outcome.formatted_traceback(),
        )

    def _release(self, sid: str) -> None:
        plan = self.plan
        now: float | None = None
        for succ in plan.successors[sid]:
            self.pending[succ] -= 1
            if self.pending[succ] == 0:
                if now is None:
                    now = self.clock.now()
                self.ready_at[succ] = now
                wave = plan.wave_of[succ]
                if self.eager or wave <= self.current_wave:
                    self.ready.append(succ)
                else:
                    self.held[wave].append(succ)
        self.wave_left[plan.wave_of[sid]] -= 1
        while (
            not self.eager
            and self.current_wave + 1 < len(self.wave_left)
            and self.wave_left[self.current_wave] == 0
        ):
            self.current_wave += 1
            self.ready.extend(self.held[self.current_wave])
            self.held[self.current_wave].clear()
            if self.reporter is not None and self.stop_kind is None:
                self.reporter.wave_started(self.current_wave, plan.waves[self.current_wave])

    def abandon(self, reason: str) -> None:
        """End every stage still in flight or unstarted as cancelled (the run is torn down)."""
        if self.stop_kind is None:
            self.stop_kind, self.stop_reason = "cancelled", reason
        now = self.clock.now()
        for sid in list(self.in_flight):
            if sid not in self.results:
                cancelled = StageResult.cancelled(reason, stage_name=sid)
                self.finish(sid, Outcome(cancelled, attempts=0), None, now)
        self.in_flight.clear()
        self.settle_unfinished()

    def settle_unfinished(self) -> None:
        """Stages that never ran end as cancelled ("not started")."""
        for sid in self.plan.order:
            if sid not in self.results:
                result = StageResult.cancelled(NOT_STARTED, stage_name=sid)
                self.results[sid] = result
                record = trusted_model(
                    StageRun, stage_id=sid, status=StageStatus.CANCELLED, error=result.error
                )
                self.records[sid] = record
                if self.reporter is not None:
                    self.reporter.stage_finished(record)

    def build(self, scheduling: Scheduling) -> PipelineResult:
        """The frozen result of this run."""
        order = self.plan.order
        by_status: dict[StageStatus, list[str]] = {s: [] for s in StageStatus}
        for sid in order:
            by_status[self.results[sid].status].append(sid)
        metadata = self.context.metrics_snapshot()
        error = None
        if self.stop_kind == "cancelled":
            metadata["cancellation"] = {"reason": self.stop_reason}
            error = f"cancelled: {self.stop_reason}"
        elif self.stop_kind == "timeout":
            error = self.stop_reason
        return PipelineResult.model_construct(
            pipeline_name=self.definition.name,
            success=not self.critical_failure and self.stop_kind is None,
            outputs={sid: self.outputs[sid] for sid in order if sid in self.outputs},
            stage_results={sid: self.results[sid] for sid in order},
            failed_stages=by_status[StageStatus.FAILED],
            skipped_stages=by_status[StageStatus.SKIPPED],
            cancelled_stages=by_status[StageStatus.CANCELLED],
            total_duration_ms=(self.clock.now() - self.started) * 1000,
            metadata=metadata,
            stage_runs={sid: self.records[sid] for sid in order},
            error=error,
            scheduling=scheduling,
            cache_stats=None if self.cache_tally is None else self.cache_tally.snapshot(),
            run_id=None if self.reporter is None else self.reporter.run_id,
            plan=self.plan,
        )


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
        bus = EventDispatcher(self.observers, clock=clock) if self.observers else None
        clock_token = current_clock.set(clock)
        try:
            if bus is None:
                return await self._execute(pipeline, initial_input, ctx, started, deadline, None)
            async with bus.running():
                reporter = RunReporter(bus, new_run_id(), clock, started)
                return await self._execute(
                    pipeline, initial_input, ctx, started, deadline, reporter
                )
        except BaseExceptionGroup as group:
            # KeyboardInterrupt or SystemExit raised in a stage reach the caller as themselves,
            # not wrapped in the task groups' BaseExceptionGroup (stage *errors* never get here).
            leaf = _sole_leaf(group)
            if leaf is None:
                raise
            raise leaf from None
        finally:
            current_clock.reset(clock_token)

    async def _execute(
        self,
        pipeline: PipelineDefinition,
        initial_input: Any,
        ctx: PipelineContext[Any],
        started: float,
        deadline: anyio.CancelScope | None,
        reporter: RunReporter | None,
    ) -> PipelineResult:
        if pipeline.issues:
            result = self._invalid(pipeline, ctx, reporter)
            if reporter is not None:
                reporter.run_started(pipeline.name, None, self.scheduling)
                reporter.run_finished(result)
            return result
        remove_listener: Callable[[], None] | None = None
        run: _Run | None = None
        try:
            async with anyio.create_task_group() as tg:
                run = _Run(
                    definition=pipeline,
                    plan=pipeline.plan,
                    context=ctx,
                    clock=self.clock,
                    eager=self.scheduling == "eager",
                    initial_input=initial_input,
                    started=started,
                    tg=tg,
                    task=self._stage_task,
                    reporter=reporter,
                    store=self.cache,
                    serializer=self.cache_serializer,
                    cache_tally=None if self.cache is None else CacheTally(),
                )
                remove_listener = ctx._add_cancel_listener(self._cancel_listener(run))
                if reporter is not None:
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
                    await run.idle.wait()
                tg.cancel_scope.cancel()  # the watchdogs, if any
        except BaseException:
            # The caller was cancelled (or a stage raised KeyboardInterrupt): observers still
            # get every stage's end and RunFinished, so no span or progress bar stays open.
            if reporter is not None and run is not None:
                run.abandon("execute() was cancelled by its caller")
                reporter.run_finished(run.build(self.scheduling))
            raise
        finally:
            if remove_listener is not None:
                remove_listener()
        assert run is not None  # built first thing inside the task group
        run.settle_unfinished()
        result = run.build(self.scheduling)
        if reporter is not None:
            reporter.run_finished(result)
        return result

    def run_sync(
        self,
        pipeline: PipelineDefinition,
        initial_input: Any = None,
        context: PipelineContext[Any] | None = None,
        *,
        backend: Literal["asyncio", "trio"] = "asyncio",
    ) -> PipelineResult:
        """`execute` for scripts without an event loop (starts one with `anyio.run`)."""
        return anyio.run(self.execute, pipeline, initial_input, context, backend=backend)

    # -- tasks -----------------------------------------------------------------------------------
    async def _stage_task(self, run: _Run, sid: str) -> None:
        """Run `sid`, then keep running one stage it released, until none is left for us.

        The task's cancel scope is each of its stages' scope in turn (one stage at a time), so
        a chain pays for one scope, not one per stage.
        """
        clock, ctx, reporter = run.clock, run.context, run.reporter
        scope = run.in_flight[sid]
        if scope.cancel_called:
            # The run stopped between `start_soon` and now: the stage never started, and
            # `settle_unfinished` records it so (a stage without a checkpoint would else run).
            del run.in_flight[sid]
            if not run.in_flight:
                run.idle.set()
            return
        outcome: Outcome | None = None
        t0 = clock.now()
        with scope:
            while True:
                sdef = run.stages[sid]
                cache = run.caches.get(sid) if run.caches else None
                value = run.input_of(sdef)
                if reporter is not None:
                    items = None
                    if sdef.pattern is ExecutionPattern.FAN_OUT and isinstance(value, list | tuple):
                        items = len(value)
                    reporter.stage_started(sid, run.plan.wave_of[sid], items)
                outcome = await invoke_stage(sdef, value, ctx, clock, cache, reporter)
                t1 = clock.now()
                del run.in_flight[sid]
                run.finish(sid, outcome, t0, t1)
                next_sid = run.launch_ready(keep_scope=scope)
                if next_sid is None:
                    break
                sid, outcome, t0 = next_sid, None, t1
        if outcome is None:  # cancelled while `sid` ran
            del run.in_flight[sid]
            reason = run.stop_reason or "cancelled"
            cancelled = Outcome(StageResult.cancelled(reason, stage_name=sid), 0)
            run.finish(sid, cancelled, t0, clock.now())
        if not run.in_flight:
            run.idle.set()

    async def _pipeline_timeout(self, run: _Run, deadline: anyio.CancelScope) -> None:
        # A deadline scope, not a sleep: a FakeClock fires it only when virtual time gets there.
        with deadline:
            await anyio.sleep_forever()
        name, timeout_ms = run.definition.name, self.timeout_ms
        run.stop("timeout", f"Timeout: pipeline {name!r} exceeded timeout_ms={timeout_ms:g}")

    async def _watch_token(self, run: _Run, token: CancelToken) -> None:
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

    def _cancel_listener(self, run: _Run) -> Callable[[str], None]:
        loop_thread = threading.get_ident()
        token = anyio.lowlevel.current_token()

        def on_cancel(reason: str) -> None:
            if threading.get_ident() == loop_thread:
                run.stop("cancelled", reason)
            else:
                anyio.from_thread.run_sync(run.stop, "cancelled", reason, token=token)

        return on_cancel

    def _invalid(
        self, pipeline: PipelineDefinition, ctx: PipelineContext[Any], reporter: RunReporter | None
    ) -> PipelineResult:
        messages = pipeline.validate_pipeline()
        metadata = ctx.metrics_snapshot()
        metadata["validation_errors"] = messages
        return PipelineResult.model_construct(
            pipeline_name=pipeline.name,
            success=False,
            failed_stages=["validation"],
            metadata=metadata,
            error=f"invalid pipeline definition: {'; '.join(messages)}",
            scheduling=self.scheduling,
            outputs={},
            stage_results={},
            skipped_stages=[],
            cancelled_stages=[],
            total_duration_ms=0.0,
            stage_runs={},
            run_id=None if reporter is None else reporter.run_id,
        )


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

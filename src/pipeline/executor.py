"""`PipelineExecutor`: one run loop over a ready set that serves both scheduling policies.

It owns the task group, each stage's cancel scope, fail-fast, the pipeline timeout and the run's
bookkeeping, and builds the `PipelineResult`. How one stage is invoked lives in
`pipeline._invoke`; the graph facts in `pipeline.plan`.
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

from pipeline._invoke import Outcome, invoke_stage
from pipeline.cache._serialize import JsonSerializer
from pipeline.cache._step import CacheTally, StageCache
from pipeline.clock import SystemClock
from pipeline.context import PipelineContext
from pipeline.errors import DefinitionError
from pipeline.result import PipelineResult, StageResult, StageRun, StageStatus

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectSendStream

    from pipeline.cache._serialize import Serializer
    from pipeline.cache._store import CacheStore
    from pipeline.clock import Clock
    from pipeline.definition import PipelineDefinition, StageDefinition
    from pipeline.plan import ExecutionPlan

Scheduling = Literal["waves", "eager"]
"""`waves`: wave k starts when wave k-1 is done. `eager`: a stage starts when its inputs are."""

StopKind = Literal["fail_fast", "cancelled", "timeout"]

NOT_STARTED = "not started"
UPSTREAM_FAILED = "upstream failed"

_Finished = tuple[str, Outcome | None, float, float]


@dataclass(slots=True)
class _Run:
    """Mutable bookkeeping of one run; it leaves only as a frozen `PipelineResult`."""

    definition: PipelineDefinition
    plan: ExecutionPlan
    context: PipelineContext[Any]
    clock: Clock
    eager: bool
    initial_input: Any
    started: float
    pending: dict[str, int] = field(default_factory=dict)
    wave_left: list[int] = field(default_factory=list)
    held: list[list[str]] = field(default_factory=list)
    current_wave: int = 0
    ready: deque[str] = field(default_factory=deque)
    in_flight: dict[str, anyio.CancelScope] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    results: dict[str, StageResult[Any]] = field(default_factory=dict)
    records: dict[str, StageRun] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    caches: dict[str, StageCache] = field(default_factory=dict)
    cache_tally: CacheTally | None = None
    critical_failure: bool = False
    stop_kind: StopKind | None = None
    stop_reason: str | None = None

    def __post_init__(self) -> None:
        plan = self.plan
        self.pending = {sid: len(set(plan.predecessors[sid])) for sid in plan.order}
        self.wave_left = [len(w) for w in plan.waves]
        self.held = [[] for _ in plan.waves]
        self.ready.extend(plan.waves[0])

    # -- stopping ------------------------------------------------------------------------------
    def stop(self, kind: StopKind, reason: str) -> None:
        """Start nothing new and cancel every stage in flight (first stop wins)."""
        if self.stop_kind is not None:
            return
        self.stop_kind, self.stop_reason = kind, reason
        for scope in self.in_flight.values():
            scope.cancel()

    # -- inputs --------------------------------------------------------------------------------
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
        started_ms = None if t0 is None else (t0 - self.started) * 1000
        finished_ms = None if t1 is None else (t1 - self.started) * 1000
        cache = self.caches.pop(sid, None) if self.caches else None
        self.records[sid] = StageRun.model_construct(
            stage_id=sid,
            status=result.status,
            attempts=outcome.attempts,
            cached=outcome.cached,
            cached_items=None if cache is None or not cache.item_level else cache.hits,
            cache_warnings=() if cache is None else tuple(cache.warnings),
            cache_errors=() if cache is None else tuple(cache.errors),
            started_ms=started_ms,
            finished_ms=finished_ms,
            duration_ms=0.0 if t0 is None or t1 is None else (t1 - t0) * 1000,
            items=outcome.items,
            error=result.error,
            exception_type=outcome.exception_type,
            traceback=outcome.formatted_traceback(),
        )
        status = result.status
        if status is StageStatus.SUCCEEDED:
            self.outputs[sid] = result.output
        elif status is StageStatus.FAILED and self.definition.get_stage(sid).critical:
            self.critical_failure = True
            if self.definition.fail_fast:
                self.stop("fail_fast", f"stage {sid!r} failed (fail_fast)")
            else:
                self.blocked.update(self.plan.downstream(sid))
        self._release(sid)

    def _release(self, sid: str) -> None:
        plan = self.plan
        for succ in plan.successors[sid]:
            self.pending[succ] -= 1
            if self.pending[succ] == 0:
                wave = plan.wave_of[succ]
                if self.eager or wave <= self.current_wave:
                    self.ready.append(succ)
                else:
                    self.held[wave].append(succ)
        wave = plan.wave_of[sid]
        self.wave_left[wave] -= 1
        while (
            not self.eager
            and self.current_wave + 1 < len(self.wave_left)
            and self.wave_left[self.current_wave] == 0
        ):
            self.current_wave += 1
            self.ready.extend(self.held[self.current_wave])
            self.held[self.current_wave].clear()

    def settle_unfinished(self) -> None:
        """Stages that never ran end as cancelled ("not started")."""
        for sid in self.plan.order:
            if sid not in self.results:
                result = StageResult.cancelled(NOT_STARTED, stage_name=sid)
                self.results[sid] = result
                self.records[sid] = StageRun.model_construct(
                    stage_id=sid, status=StageStatus.CANCELLED, error=result.error
                )

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
        )


@final
class PipelineExecutor:
    """Runs `PipelineDefinition`s.

    Args:
        scheduling: `"waves"` (default) runs wave k only after wave k-1 finished; `"eager"`
            starts each stage as soon as its inputs are done. Results are identical.
        clock: The time source for retry waits, timeouts and durations (default: real time;
            tests pass `pipeline.testing.FakeClock()`).
        timeout_ms: Bound on a whole run; when it passes, stages in flight are cancelled and the
            result fails with an error containing "Timeout".
        cache: A `pipeline.cache.CacheStore` (`MemoryCache()`, `SQLiteCache(path)`): successful
            outputs are stored, and a rerun serves a stage (or fan-out item) whose id, cache
            version and input match without executing it. None (default): no caching.
        cache_serializer: How outputs become bytes: `JsonSerializer()` (default; loading never
            executes code) or `PickleSerializer()` (opt-in, for outputs JSON cannot hold).
    """

    def __init__(
        self,
        *,
        scheduling: Scheduling = "waves",
        clock: Clock | None = None,
        timeout_ms: float | None = None,
        cache: CacheStore | None = None,
        cache_serializer: Serializer | None = None,
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
        if pipeline.issues:
            return self._invalid(pipeline, ctx)
        run = _Run(
            definition=pipeline,
            plan=pipeline.plan,
            context=ctx,
            clock=self.clock,
            eager=self.scheduling == "eager",
            initial_input=initial_input,
            started=self.clock.now(),
            cache_tally=None if self.cache is None else CacheTally(),
        )
        send, receive = anyio.create_memory_object_stream[_Finished](math.inf)
        remove_listener = ctx._add_cancel_listener(self._cancel_listener(run))
        try:
            async with anyio.create_task_group() as tg:
                if self.timeout_ms is not None or _awaitable_token(ctx):
                    tg.start_soon(self._watchdog, run)
                self._launch_ready(run, tg, send)
                while run.in_flight:
                    sid, outcome, t0, t1 = await receive.receive()
                    del run.in_flight[sid]
                    if outcome is None:
                        reason = run.stop_reason or "cancelled"
                        outcome = Outcome(StageResult.cancelled(reason, stage_name=sid), 0)
                    run.finish(sid, outcome, t0, t1)
                    self._launch_ready(run, tg, send)
                tg.cancel_scope.cancel()  # the watchdog, if any
        finally:
            remove_listener()
            send.close()
            receive.close()
        run.settle_unfinished()
        return run.build(self.scheduling)

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

    # -- the run loop's helpers ------------------------------------------------------------------
    def _launch_ready(
        self, run: _Run, tg: TaskGroup, send: MemoryObjectSendStream[_Finished]
    ) -> None:
        ctx = run.context
        while run.ready and run.stop_kind is None:
            sid = run.ready.popleft()
            if sid in run.blocked:
                skipped = StageResult.skipped(UPSTREAM_FAILED, stage_name=sid)
                run.finish(sid, Outcome(skipped, attempts=0), None, None)
                continue
            if ctx.is_cancelled():
                run.ready.appendleft(sid)
                run.stop("cancelled", ctx.cancel_reason or "cancelled")
                break
            scope = anyio.CancelScope()
            run.in_flight[sid] = scope
            sdef = run.definition.get_stage(sid)
            cache = None
            if self.cache is not None and sdef.cache:
                assert run.cache_tally is not None  # set whenever self.cache is
                cache = StageCache(sdef, self.cache, self.cache_serializer, run.cache_tally)
                run.caches[sid] = cache
            tg.start_soon(self._stage_task, sdef, run.input_of(sdef), ctx, scope, send, cache)

    async def _stage_task(
        self,
        sdef: StageDefinition,
        value: Any,
        context: PipelineContext[Any],
        scope: anyio.CancelScope,
        send: MemoryObjectSendStream[_Finished],
        cache: StageCache | None,
    ) -> None:
        clock = self.clock
        t0 = clock.now()
        outcome: Outcome | None = None
        with scope:
            outcome = await invoke_stage(sdef, value, context, clock, cache)
        send.send_nowait((sdef.id, outcome, t0, clock.now()))

    async def _watchdog(self, run: _Run) -> None:
        async with anyio.create_task_group() as tg:
            if self.timeout_ms is not None:
                tg.start_soon(self._pipeline_timeout, run, self.timeout_ms)
            if _awaitable_token(run.context):
                tg.start_soon(self._await_token, run)

    async def _pipeline_timeout(self, run: _Run, timeout_ms: float) -> None:
        # A deadline, not a sleep: a FakeClock fires it only when virtual time gets there.
        with self.clock.deadline_scope(timeout_ms / 1000):
            await anyio.sleep_forever()
        name = run.definition.name
        run.stop("timeout", f"Timeout: pipeline {name!r} exceeded timeout_ms={timeout_ms:g}")

    async def _await_token(self, run: _Run) -> None:
        token: Any = run.context.cancel_token
        await token.wait()
        run.stop("cancelled", "cancel_token is set")

    def _cancel_listener(self, run: _Run) -> Any:
        loop_thread = threading.get_ident()
        token = anyio.lowlevel.current_token()

        def on_cancel(reason: str) -> None:
            if threading.get_ident() == loop_thread:
                run.stop("cancelled", reason)
            else:
                anyio.from_thread.run_sync(run.stop, "cancelled", reason, token=token)

        return on_cancel

    def _invalid(self, pipeline: PipelineDefinition, ctx: PipelineContext[Any]) -> PipelineResult:
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
        )


def _awaitable_token(ctx: PipelineContext[Any]) -> bool:
    """A cancel token the executor can await (anyio.Event) is watched, not only polled."""
    return isinstance(ctx.cancel_token, anyio.Event)

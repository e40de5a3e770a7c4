"""`RunState`: the mutable bookkeeping of one pipeline run, and the scheduling rules on it.

Which stage may start (waves or eager), what a finished stage releases, fail-fast and
"upstream failed" propagation, and the frozen `PipelineResult` it becomes. The task group, the
stage tasks and the watchdogs live in `pipeline.executor`; one invocation in `pipeline._invoke`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio

from pipeline._model import fast_model, trusted_model
from pipeline._outcome import Outcome
from pipeline.definition import ExecutionPattern
from pipeline.result import AttemptRun, PipelineResult, StageResult, StageRun, StageStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup

    from pipeline._env import RunEnv
    from pipeline._outcome import AttemptRecord
    from pipeline.cache._step import StageCache
    from pipeline.clock import Clock
    from pipeline.context import PipelineContext
    from pipeline.definition import PipelineDefinition, StageDefinition
    from pipeline.plan import ExecutionPlan

Scheduling = Literal["waves", "eager"]
"""`waves`: wave k starts when wave k-1 is done. `eager`: a stage starts when its inputs are."""

StopKind = Literal["fail_fast", "cancelled", "timeout"]

NOT_STARTED = "not started"
UPSTREAM_FAILED = "upstream failed"


_SUCCEEDED: Final = StageStatus.SUCCEEDED
_SKIPPED: Final = StageStatus.SKIPPED
"""Read for every finished stage: module globals cost 0.03 us, an enum member through its class
0.13 (benchmarks/overhead.py W1/W2)."""


@dataclass(slots=True, eq=False)
class RunState:
    """Mutable bookkeeping of one run; it leaves only as a frozen `PipelineResult`."""

    definition: PipelineDefinition
    plan: ExecutionPlan
    context: PipelineContext[Any]
    env: RunEnv
    eager: bool
    initial_input: Any
    started: float
    tg: TaskGroup
    task: Callable[[RunState], Any]
    """The worker: takes queued stages (`take`) and runs them until none is left for it."""
    clock: Clock = field(init=False)
    stages: dict[str, StageDefinition] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    wave_left: list[int] = field(default_factory=list)
    held: list[list[str]] = field(default_factory=list)
    current_wave: int = 0
    ready: deque[str] = field(default_factory=deque)
    ready_at: dict[str, float] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    """Launched and not finished: queued for a worker, or running."""
    queue: deque[str] = field(default_factory=deque)
    """Launched stages no worker has taken yet."""
    helper_pending: bool = False
    """A worker was spawned and has not started yet (at most one at a time)."""
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
        self.clock = self.env.clock
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
        # Queued stages never start: they end as "not started", not as cancelled work.
        self.in_flight.difference_update(self.queue)
        self.queue.clear()
        # One scope for the whole run instead of one per stage (a scope per stage cost ~3.8 us
        # on W1): every worker is in the task group, so cancelling it cancels every stage in
        # flight, and each worker records its own stage as cancelled on the way out.
        self.tg.cancel_scope.cancel()
        if not self.in_flight:
            self.idle.set()

    # -- launching -----------------------------------------------------------------------------
    def launch_ready(self) -> None:
        """Queue the ready stages for the workers (skipping those an upstream failure blocks)."""
        ctx = self.context
        if self.stop_kind is None and ctx.is_cancelled():
            self.stop("cancelled", ctx.cancel_reason or "cancelled")
        released: list[str] = []
        while self.ready and self.stop_kind is None:
            sid = self.ready.popleft()
            if sid in self.blocked:
                skipped = StageResult.skipped(UPSTREAM_FAILED, stage_name=sid)
                self.finish(sid, Outcome(skipped, attempts=0), None, None)
                continue
            sdef = self.stages[sid]
            if sdef.pattern is ExecutionPattern.FAN_OUT and sdef.inputs:
                source = self.results[sdef.inputs[0]]
                if source.status is StageStatus.SKIPPED:
                    # Nothing to map over: the fan-out is skipped like its input, not failed
                    # on the None a skipped stage leaves for its dependents.
                    reason = f"input stage {sdef.inputs[0]!r} was skipped"
                    skipped = StageResult.skipped(reason, stage_name=sid)
                    self.finish(sid, Outcome(skipped, attempts=0), None, None)
                    continue
            if self.env.store is not None:
                cache = self.env.cache_for(sdef)
                if cache is not None:
                    self.caches[sid] = cache
            self.in_flight.add(sid)
            released.append(sid)
        # Newly released stages go first, in order: the worker that released them runs the
        # first one next (a chain stays in one task, depth first, as the stage that finished
        # last is the freshest input), and helpers take the rest before older queued stages.
        if len(released) == 1:  # a chain: the common case, without the reversed() copy
            self.queue.appendleft(released[0])
        elif released:
            self.queue.extendleft(reversed(released))

    def take(self) -> str | None:
        """The next queued stage for the calling worker; None when none is left or it stopped.

        Batched spawns: the worker that releases stages runs them itself, one after another,
        and a helper worker is spawned only while more are queued. A helper starts when the
        running worker first yields, so stages that never wait run in one task (W1: 2 tasks
        for 202 stages instead of 201, about 10 us a stage), while each stage that does wait
        lets the next helper start the next one, as concurrent as one task per stage.
        """
        if not self.queue or self.stop_kind is not None:
            return None
        sid = self.queue.popleft()
        if self.queue and not self.helper_pending:
            self.spawn_worker()
        return sid

    def spawn_worker(self) -> None:
        """Start one more worker (it takes a queued stage when it starts)."""
        self.helper_pending = True
        self.tg.start_soon(self.task, self)

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
        reporter = self.env.reporter
        if reporter.enabled:  # a run without observers builds no event (NULL_REPORTER)
            reporter.stage_finished(record, result.output)
        status = result.status
        if status is _SUCCEEDED:
            self.outputs[sid] = result.output
        elif status is not _SKIPPED and self.stages[sid].critical:
            # Failed, or cancelled: a critical stage that *returns* cancelled ends the run as a
            # failure would (stages the run itself cancelled arrive here after it stopped).
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
        env = self.env
        log = outcome.attempt_log
        attempts = outcome.attempts
        if log is None and env.cut_short:  # a remote attempt the run cut short
            log = env.cut_short.pop(sid, None)
            attempts = len(log) if log else attempts
        if log is None:
            attempt_runs: tuple[AttemptRun, ...] = ()
        elif len(log) == 1:
            attempt_runs = (_attempt_run(log[0], base),)
        else:
            attempt_runs = tuple([_attempt_run(a, base) for a in log])
        ready_at = self.ready_at.get(sid)
        exc = outcome.exception
        # Every field given, in a dict literal: `fast_model` skips `trusted_model`'s defaults
        # merge (about 0.5 us per stage; the bypass is checked against validation by a test).
        return fast_model(
            StageRun,
            {
                "stage_id": sid,
                "status": result.status,
                "attempts": attempts,
                "started_ms": started_ms,
                "finished_ms": None if t1 is None else (t1 - base) * 1000,
                "duration_ms": duration_ms,
                "queue_wait_ms": (
                    None if t0 is None or ready_at is None else (t0 - ready_at) * 1000
                ),
                "attempt_runs": attempt_runs,
                "items": outcome.items,
                "cached": outcome.cached,
                "cached_items": None if cache is None or not cache.item_level else cache.hits,
                "cache_warnings": () if cache is None else tuple(cache.warnings),
                "cache_errors": () if cache is None else tuple(cache.errors),
                "error": result.error,
                "exception_type": None if exc is None else type(exc).__name__,
                "traceback": None if exc is None else outcome.formatted_traceback(),
                "steps": tuple(steps) if env.steps and (steps := env.steps.pop(sid, None)) else (),
            },
        )

    def _release(self, sid: str) -> None:
        plan = self.plan
        wave_of, pending, eager = plan.wave_of, self.pending, self.eager  # locals: once a stage
        now: float | None = None
        for succ in plan.successors[sid]:
            left = pending[succ] - 1
            pending[succ] = left
            if left == 0:
                if now is None:
                    now = self.clock.now()
                self.ready_at[succ] = now
                wave = wave_of[succ]
                if eager or wave <= self.current_wave:
                    self.ready.append(succ)
                else:
                    self.held[wave].append(succ)
        wave_left = self.wave_left
        wave_left[wave_of[sid]] -= 1
        if eager or wave_left[self.current_wave]:  # the current wave is not done yet
            return
        while self.current_wave + 1 < len(wave_left) and wave_left[self.current_wave] == 0:
            self.current_wave += 1
            self.ready.extend(self.held[self.current_wave])
            self.held[self.current_wave].clear()
            reporter = self.env.reporter
            if self.stop_kind is None and reporter.enabled:
                reporter.wave_started(self.current_wave, plan.waves[self.current_wave])

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
        self.queue.clear()
        self.settle_unfinished()

    def fail_lost(self) -> None:
        """Stages whose task ended without a result fail, and the run stops.

        This happens only when something outside the run cancelled a stage's task in a way the
        stage could not see (a stray cancellation outside `execute`); anyio's task group then
        drops the task silently, and its stage must not pass for "not started".
        """
        self.in_flight.difference_update(self.queue)  # never taken: "not started"
        self.queue.clear()
        lost = [sid for sid in self.in_flight if sid not in self.results]
        if not lost:
            return
        # Stopped first, so the run reports this reason whatever fail-fast would have said.
        self.stop("cancelled", f"stage task(s) {lost} cancelled from outside the run")
        now = self.clock.now()
        for sid in lost:
            error = f"stage {sid!r}: its task was cancelled by something outside the run"
            failed = StageResult.failure(error, stage_name=sid)
            self.finish(sid, Outcome(failed, attempts=0), None, now)
        self.in_flight.clear()

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
                self.env.reporter.stage_finished(record)

    def build(self, scheduling: Scheduling) -> PipelineResult:
        """The frozen result of this run."""
        order = self.plan.order
        by_status: dict[StageStatus, list[str]] = {s: [] for s in StageStatus}
        for sid in order:
            by_status[self.results[sid].status].append(sid)
        metadata = self.context.metrics_snapshot()
        error = None
        if self.stop_kind == "timeout" and not by_status[StageStatus.CANCELLED]:
            # The deadline fired as the last stage was finishing: its task was already woken
            # and returned without a checkpoint. Nothing was cut short, so nothing timed out.
            self.stop_kind = self.stop_reason = None
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
            cache_stats=None if self.env.tally is None else self.env.tally.snapshot(),
            run_id=self.env.reporter.run_id,
            plan=self.plan,
        )


def _attempt_run(a: AttemptRecord, base: float) -> AttemptRun:
    return fast_model(
        AttemptRun,
        {
            "attempt": a.attempt,
            "backoff_ms": a.backoff_s * 1000,
            "started_ms": (a.started - base) * 1000,
            "duration_ms": (a.ended - a.started) * 1000,
            "error": a.error,
            "resource_wait_ms": a.resource_wait_s * 1000,
            "remote_stopped": a.remote_stopped,
            "remote_traceback": a.remote_traceback,
        },
    )

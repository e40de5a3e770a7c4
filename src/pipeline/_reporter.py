"""`RunReporter`: builds one run's events and hands them to the `EventDispatcher`.

A run without observers gets `NULL_REPORTER`, whose methods do nothing, so it builds no event
at all and callers need no `None` checks; the attempt chain leaves its events link out
entirely when `reporter.enabled` is false. What the events are lives in `pipeline.events`; how
they reach observers in `pipeline._dispatch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

from pipeline._env import current_lineage
from pipeline._model import trusted_model
from pipeline.events import (
    AttemptFailed,
    AttemptStarted,
    FanOutItemFinished,
    ResourceWaited,
    RetryScheduled,
    RunFinished,
    RunStarted,
    StageCacheHit,
    StageFinished,
    StageStarted,
    StepFinished,
    WaveStarted,
)
from pipeline.result import StageStatus

if TYPE_CHECKING:
    from pipeline._dispatch import EventDispatcher
    from pipeline._outcome import Outcome
    from pipeline.clock import Clock
    from pipeline.events import PipelineEvent
    from pipeline.plan import ExecutionPlan
    from pipeline.result import PipelineResult, StageRun, StepRun


@final
class RunReporter:
    """Emits the events of one run, stamping each with the run id and the clock's time."""

    __slots__ = ("_bus", "_clock", "_started", "run_id")

    enabled = True
    """Events are built and delivered."""

    def __init__(self, bus: EventDispatcher, run_id: str, clock: Clock, started: float) -> None:
        self._bus = bus
        self._clock = clock
        self._started = started
        self.run_id = run_id

    def _emit(self, cls: type[PipelineEvent], **fields: Any) -> None:
        # Built from already-typed run state, so not validated again: that would only add cost
        # to each observed state change (measured by benchmarks/overhead.py).
        at_s = self._clock.now() - self._started
        self._bus.emit(trusted_model(cls, run_id=self.run_id, at_s=at_s, **fields))

    def run_started(self, name: str, plan: ExecutionPlan | None, scheduling: str) -> None:
        """Before any stage starts (`plan` is None for an invalid definition)."""
        self._emit(
            RunStarted,
            pipeline_name=name,
            stage_ids=() if plan is None else plan.order,
            waves=() if plan is None else plan.waves,
            scheduling=scheduling,
        )

    def wave_started(self, wave: int, stage_ids: tuple[str, ...]) -> None:
        """A wave's barrier opened (waves scheduling only)."""
        self._emit(WaveStarted, wave=wave, stage_ids=stage_ids)

    def stage_started(self, stage_id: str, wave: int, items: int | None) -> None:
        """A stage's task began (its condition is evaluated next)."""
        self._emit(
            StageStarted,
            stage_id=stage_id,
            wave=wave,
            items=items,
        )

    def attempt_started(self, stage_id: str, item: int | None, attempt: int) -> None:
        """One call of `execute` is about to happen."""
        self._emit(
            AttemptStarted,
            stage_id=stage_id,
            item=item,
            stream_lineage=current_lineage.get(),
            attempt=attempt,
        )

    def attempt_failed(
        self, stage_id: str, item: int | None, attempt: int, outcome: Outcome, *, will_retry: bool
    ) -> None:
        """One call of `execute` failed (raised, timed out or returned a failure)."""
        self._emit(
            AttemptFailed,
            stage_id=stage_id,
            item=item,
            stream_lineage=current_lineage.get(),
            attempt=attempt,
            error=outcome.result.error,
            exception_type=outcome.exception_type,
            will_retry=will_retry,
        )

    def retry_scheduled(
        self, stage_id: str, item: int | None, attempt: int, delay_s: float
    ) -> None:
        """Attempt `attempt` will start after `delay_s` of backoff."""
        self._emit(
            RetryScheduled,
            stage_id=stage_id,
            item=item,
            stream_lineage=current_lineage.get(),
            attempt=attempt,
            delay_s=delay_s,
        )

    def cache_hit(self, stage_id: str, item: int | None, key: str | None) -> None:
        """The stage (or item) was served from the cache; `execute` is not called."""
        self._emit(
            StageCacheHit,
            stage_id=stage_id,
            item=item,
            stream_lineage=current_lineage.get(),
            key=key,
        )

    def item_finished(self, stage_id: str, item: int, outcome: Outcome) -> None:
        """One fan-out item ended."""
        result = outcome.result
        self._emit(
            FanOutItemFinished,
            stage_id=stage_id,
            item=item,
            stream_lineage=current_lineage.get(),
            status=result.status,
            attempts=outcome.attempts,
            cached=outcome.cached,
            error=result.error,
            resource_wait_s=outcome.resource_wait_s,
        )

    def resource_waited(
        self,
        stage_id: str,
        item: int | None,
        attempt: int,
        resource: str,
        weight: int,
        wait_s: float,
    ) -> None:
        """An attempt was granted `resource` after waiting `wait_s`."""
        self._emit(
            ResourceWaited,
            stage_id=stage_id,
            item=item,
            stream_lineage=current_lineage.get(),
            attempt=attempt,
            resource=resource,
            weight=weight,
            wait_s=wait_s,
        )

    def step_finished(self, stage_id: str, step: StepRun) -> None:
        """A durable step ended."""
        self._emit(
            StepFinished,
            stage_id=stage_id,
            item=step.item,
            stream_lineage=current_lineage.get(),
            name=step.name,
            status=step.status,
            cached=step.cached,
            attempts=step.attempts,
            error=step.error,
        )

    def stage_finished(self, record: StageRun, output: Any = None) -> None:
        """A stage ended, whatever the way (also skipped or never started).

        `output` is the stage's output as the run keeps it (None unless it succeeded).
        """
        self._emit(
            StageFinished,
            stage_id=record.stage_id,
            status=record.status,
            attempts=record.attempts,
            cached=record.cached,
            error=record.error,
            duration_s=record.duration_ms / 1000,
            items=record.items,
            output=output if record.status is StageStatus.SUCCEEDED else None,
        )

    def run_finished(self, result: PipelineResult) -> None:
        """The run's result is built."""
        self._emit(
            RunFinished,
            pipeline_name=result.pipeline_name,
            success=result.success,
            duration_s=result.total_duration_ms / 1000,
            error=result.error,
            failed_stages=tuple(result.failed_stages),
        )


@final
class NullReporter:
    """The reporter of a run nobody observes: every method does nothing."""

    __slots__ = ()

    enabled = False
    """No event is built."""
    run_id = None
    """Unobserved runs have no run id."""

    def run_started(self, name: str, plan: ExecutionPlan | None, scheduling: str) -> None:
        """Nothing."""

    def wave_started(self, wave: int, stage_ids: tuple[str, ...]) -> None:
        """Nothing."""

    def stage_started(self, stage_id: str, wave: int, items: int | None) -> None:
        """Nothing."""

    def attempt_started(self, stage_id: str, item: int | None, attempt: int) -> None:
        """Nothing."""

    def attempt_failed(
        self, stage_id: str, item: int | None, attempt: int, outcome: Outcome, *, will_retry: bool
    ) -> None:
        """Nothing."""

    def retry_scheduled(
        self, stage_id: str, item: int | None, attempt: int, delay_s: float
    ) -> None:
        """Nothing."""

    def cache_hit(self, stage_id: str, item: int | None, key: str | None) -> None:
        """Nothing."""

    def item_finished(self, stage_id: str, item: int, outcome: Outcome) -> None:
        """Nothing."""

    def resource_waited(
        self,
        stage_id: str,
        item: int | None,
        attempt: int,
        resource: str,
        weight: int,
        wait_s: float,
    ) -> None:
        """Nothing."""

    def step_finished(self, stage_id: str, step: StepRun) -> None:
        """Nothing."""

    def stage_finished(self, record: StageRun, output: Any = None) -> None:
        """Nothing."""

    def run_finished(self, result: PipelineResult) -> None:
        """Nothing."""


NULL_REPORTER: Final = NullReporter()
"""The one do-nothing reporter every unobserved run shares."""

Reporter = RunReporter | NullReporter
"""What the run state and the attempt chain report to."""

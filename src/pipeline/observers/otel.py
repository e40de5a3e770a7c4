"""`OpenTelemetryObserver`: one span per run, per stage and per attempt (the `otel` extra).

`opentelemetry-api` is imported when the observer is constructed, never when `pipeline` is;
the exporter and SDK setup are the application's business. Events live in `pipeline.events`.

Span tree: `pipeline <name>` (the run, parented on the caller's current span) > `stage <id>` >
`attempt <lineage>#<n>` (fan-out items' attempts carry `pipeline.item.index`). Span times
come from the events' `at_s` (the executor clock) anchored on the wall clock at `RunStarted`,
so durations match the run records even under a fake clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never, final

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
    from collections.abc import Callable

    from opentelemetry.trace import Span, Tracer, TracerProvider

    from pipeline.events import PipelineEvent

INSTRUMENTATION_NAME = "pipeline"
"""The instrumentation scope name of the tracer."""

_AttemptKey = tuple[str, int | None]


def _import_trace() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        msg = "OpenTelemetryObserver needs the otel extra: pip install 'wavepipe[otel]'"
        raise ImportError(msg) from exc
    return trace


@dataclass(slots=True)
class _RunSpans:
    run_id: str
    anchor_ns: int
    run: Span
    stages: dict[str, Span] = field(default_factory=dict)
    attempts: dict[_AttemptKey, Span] = field(default_factory=dict)

    def ns(self, at_s: float) -> int:
        return self.anchor_ns + round(at_s * 1e9)


@final
class OpenTelemetryObserver:
    """Turns a run's events into OpenTelemetry spans.

    Attributes set: `pipeline.name`, `pipeline.run_id`, `pipeline.success` (run);
    `pipeline.stage.id`, `pipeline.stage.status`, `pipeline.stage.attempts`,
    `pipeline.stage.cache_hit`, `pipeline.stage.items`, `pipeline.stage.wave` (stage);
    `pipeline.attempt`, `pipeline.item.index`, `pipeline.lineage_id` (attempt). Failures set
    the span status to ERROR and add an `exception` event (`exception.type`,
    `exception.message`); retries and cache hits are span events on the stage span.

    Args:
        tracer_provider: Where spans go (default: the global provider).
        tracer: A ready tracer instead (overrides `tracer_provider`).
        time_ns: Wall clock used to anchor a run's start (tests may pin it).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        tracer: Tracer | None = None,
        time_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._trace = _import_trace()
        from opentelemetry.trace import Status, StatusCode

        self._status, self._code = Status, StatusCode
        self._tracer: Tracer = (
            tracer
            if tracer is not None
            else self._trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        )
        self._time_ns = time_ns
        self._runs: dict[str, _RunSpans] = {}

    def on_event(self, event: PipelineEvent, /) -> None:
        """Open, annotate or close the spans `event` concerns."""
        match event:
            case RunStarted():
                self._run_started(event)
            case RunFinished():
                self._run_finished(event)
            case WaveStarted():
                run = self._runs.get(event.run_id)
                if run is not None:
                    run.run.add_event(
                        "wave_started",
                        {"pipeline.wave": event.wave, "pipeline.stage.ids": event.stage_ids},
                        timestamp=run.ns(event.at_s),
                    )
            case StageStarted():
                self._stage_started(event)
            case AttemptStarted():
                self._attempt_started(event)
            case AttemptFailed():
                self._attempt_failed(event)
            case RetryScheduled():
                self._stage_event(
                    event,
                    "retry_scheduled",
                    {"pipeline.attempt": event.attempt, "pipeline.retry.delay_s": event.delay_s},
                )
            case StageCacheHit():
                self._cache_hit(event)
            case FanOutItemFinished():
                self._item_finished(event)
            case ResourceWaited():
                self._stage_event(
                    event,
                    "resource_waited",
                    {
                        "pipeline.resource": event.resource,
                        "pipeline.resource.weight": event.weight,
                        "pipeline.resource.wait_s": event.wait_s,
                    },
                )
            case StepFinished():
                self._stage_event(
                    event,
                    "step_finished",
                    {
                        "pipeline.step": event.name,
                        "pipeline.step.status": event.status.value,
                        "pipeline.step.cached": event.cached,
                        "pipeline.step.attempts": event.attempts,
                    },
                )
            case StageFinished():
                self._stage_finished(event)
            case _:  # pragma: no cover - every kind is handled above
                assert_never(event)

    # -- run -----------------------------------------------------------------------------------
    def _run_started(self, event: RunStarted) -> None:
        anchor = self._time_ns() - round(event.at_s * 1e9)
        span = self._tracer.start_span(
            f"pipeline {event.pipeline_name}",
            start_time=anchor + round(event.at_s * 1e9),
            attributes={
                "pipeline.name": event.pipeline_name,
                "pipeline.run_id": event.run_id,
                "pipeline.scheduling": event.scheduling,
                "pipeline.stage_count": len(event.stage_ids),
            },
        )
        self._runs[event.run_id] = _RunSpans(event.run_id, anchor, span)

    def _run_finished(self, event: RunFinished) -> None:
        run = self._runs.pop(event.run_id, None)
        if run is None:
            return
        end = run.ns(event.at_s)
        for span in [*run.attempts.values(), *run.stages.values()]:
            span.end(end_time=end)
        span = run.run
        span.set_attribute("pipeline.success", event.success)
        if event.failed_stages:
            span.set_attribute("pipeline.failed_stages", event.failed_stages)
        if not event.success:
            self._error(span, event.error or "pipeline run failed", None, end)
        span.end(end_time=end)

    # -- stages --------------------------------------------------------------------------------
    def _stage_span(self, run: _RunSpans, stage_id: str, at_s: float) -> Span:
        span = run.stages.get(stage_id)
        if span is None:
            span = self._tracer.start_span(
                f"stage {stage_id}",
                context=self._trace.set_span_in_context(run.run),
                start_time=run.ns(at_s),
                attributes={
                    "pipeline.run_id": run.run_id,
                    "pipeline.stage.id": stage_id,
                },
            )
            run.stages[stage_id] = span
        return span

    def _stage_started(self, event: StageStarted) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        span = self._stage_span(run, event.stage_id, event.at_s)
        if event.wave is not None:
            span.set_attribute("pipeline.stage.wave", event.wave)
        if event.items is not None:
            span.set_attribute("pipeline.stage.items", event.items)

    def _stage_event(
        self,
        event: RetryScheduled | StageCacheHit | ResourceWaited | StepFinished,
        name: str,
        attributes: dict[str, Any],
    ) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        if event.item is not None:
            attributes = {**attributes, "pipeline.item.index": event.item}
        attributes["pipeline.lineage_id"] = event.lineage_id
        span = self._stage_span(run, event.stage_id, event.at_s)
        span.add_event(name, attributes, timestamp=run.ns(event.at_s))

    def _cache_hit(self, event: StageCacheHit) -> None:
        attributes: dict[str, Any] = {} if event.key is None else {"pipeline.cache.key": event.key}
        self._stage_event(event, "cache_hit", attributes)
        run = self._runs.get(event.run_id)
        if run is not None and event.item is None:
            run.stages[event.stage_id].set_attribute("pipeline.stage.cache_hit", True)

    def _stage_finished(self, event: StageFinished) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        end = run.ns(event.at_s)
        ok = event.status in (StageStatus.SUCCEEDED, StageStatus.SKIPPED)
        for key in [k for k in run.attempts if k[0] == event.stage_id]:
            attempt = run.attempts.pop(key)
            if event.status is StageStatus.SUCCEEDED:
                attempt.set_status(self._status(self._code.OK))
            attempt.end(end_time=end)
        span = self._stage_span(run, event.stage_id, event.at_s)
        run.stages.pop(event.stage_id)
        span.set_attribute("pipeline.stage.status", event.status.value)
        span.set_attribute("pipeline.stage.attempts", event.attempts)
        span.set_attribute("pipeline.stage.cache_hit", event.cached)
        if event.items is not None:
            span.set_attribute("pipeline.stage.items", event.items)
        if event.error is not None:
            span.set_attribute("pipeline.stage.error", event.error)
        if event.status is StageStatus.FAILED:
            self._error(span, event.error or "stage failed", None, end)
        elif ok:
            span.set_status(self._status(self._code.OK))
        span.end(end_time=end)

    # -- attempts ------------------------------------------------------------------------------
    def _attempt_started(self, event: AttemptStarted) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        stage = self._stage_span(run, event.stage_id, event.at_s)
        attributes: dict[str, Any] = {
            "pipeline.stage.id": event.stage_id,
            "pipeline.lineage_id": event.lineage_id,
            "pipeline.attempt": event.attempt,
        }
        if event.item is not None:
            attributes["pipeline.item.index"] = event.item
        previous = run.attempts.pop((event.stage_id, event.item), None)
        if previous is not None:  # a missed end: close it rather than leak it
            previous.end(end_time=run.ns(event.at_s))
        run.attempts[(event.stage_id, event.item)] = self._tracer.start_span(
            f"attempt {event.lineage_id}#{event.attempt}",
            context=self._trace.set_span_in_context(stage),
            start_time=run.ns(event.at_s),
            attributes=attributes,
        )

    def _attempt_failed(self, event: AttemptFailed) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        span = run.attempts.pop((event.stage_id, event.item), None)
        if span is None:
            return
        end = run.ns(event.at_s)
        span.set_attribute("pipeline.attempt.will_retry", event.will_retry)
        self._error(span, event.error or "attempt failed", event.exception_type, end)
        span.end(end_time=end)

    def _item_finished(self, event: FanOutItemFinished) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        end = run.ns(event.at_s)
        span = run.attempts.pop((event.stage_id, event.item), None)
        if span is not None:
            span.set_attribute("pipeline.item.status", event.status.value)
            if event.status is StageStatus.SUCCEEDED:
                span.set_status(self._status(self._code.OK))
            span.end(end_time=end)
        stage = run.stages.get(event.stage_id)
        if stage is not None and event.status is not StageStatus.SUCCEEDED:
            attributes: dict[str, Any] = {
                "pipeline.item.index": event.item,
                "pipeline.lineage_id": event.lineage_id,
                "pipeline.item.status": event.status.value,
            }
            if event.error is not None:
                attributes["pipeline.item.error"] = event.error
            stage.add_event("item_finished", attributes, timestamp=end)

    # -- helpers -------------------------------------------------------------------------------
    def _error(self, span: Span, message: str, exception_type: str | None, at_ns: int) -> None:
        span.set_status(self._status(self._code.ERROR, message))
        attributes: dict[str, Any] = {"exception.message": message}
        if exception_type is not None:
            attributes["exception.type"] = exception_type
        span.add_event("exception", attributes, timestamp=at_ns)

"""`LoggingObserver`: every event as one record on `logging.getLogger("pipeline")`.

Structured fields ride in `extra`; handlers, formatters and levels are the application's
business, so nothing here installs a handler. The events live in `pipeline.events`.
"""

from __future__ import annotations

import logging
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
    from pipeline.events import PipelineEvent


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@final
class LoggingObserver:
    """Logs each event as one record with structured `extra` fields.

    Every record carries `pipeline_event` (the event as a JSON-ready dict) and the flat fields
    `pipeline_kind`, `pipeline_run_id` and `pipeline_stage_id` (None for run-level events), so
    a JSON formatter or `%(pipeline_stage_id)s` can use them. Run and stage outcomes log at
    `level`; a failed stage or attempt at `WARNING` (or `level` if higher); starts, attempts
    and fan-out items at `detail_level`.

    Args:
        logger: Where to log (default `logging.getLogger("pipeline")`).
        level: Level of run/stage outcomes and retries.
        detail_level: Level of starts, attempts, cache hits and fan-out items.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        level: int = logging.INFO,
        detail_level: int = logging.DEBUG,
    ) -> None:
        self.logger = logger if logger is not None else logging.getLogger("pipeline")
        self.level = level
        self.detail_level = detail_level
        self._problem_level = max(level, logging.WARNING)

    def on_event(self, event: PipelineEvent, /) -> None:
        """Log `event` (cheaply skipped when the logger would drop it)."""
        level, message, args = self._describe(event)
        if not self.logger.isEnabledFor(level):
            return
        extra: dict[str, Any] = {
            "pipeline_event": event.model_dump(mode="json"),
            "pipeline_kind": event.kind,
            "pipeline_run_id": event.run_id,
            "pipeline_stage_id": getattr(event, "stage_id", None),
        }
        self.logger.log(level, message, *args, extra=extra)

    def _describe(self, event: PipelineEvent) -> tuple[int, str, tuple[Any, ...]]:
        detail, level, problem = self.detail_level, self.level, self._problem_level
        match event:
            case RunStarted():
                return (
                    level,
                    "run %s of pipeline %r started (%d stages)",
                    (
                        event.run_id,
                        event.pipeline_name,
                        len(event.stage_ids),
                    ),
                )
            case WaveStarted():
                return detail, "wave %d released: %s", (event.wave, ", ".join(event.stage_ids))
            case StageStarted():
                return detail, "stage %r started", (event.lineage_id,)
            case AttemptStarted():
                return detail, "stage %r attempt %d started", (event.lineage_id, event.attempt)
            case AttemptFailed():
                return (
                    problem if not event.will_retry else detail,
                    ("stage %r attempt %d failed: %s"),
                    (event.lineage_id, event.attempt, event.error),
                )
            case RetryScheduled():
                return (
                    level,
                    "stage %r: attempt %d in %.3f s",
                    (
                        event.lineage_id,
                        event.attempt,
                        event.delay_s,
                    ),
                )
            case StageCacheHit():
                return detail, "stage %r served from cache", (event.lineage_id,)
            case FanOutItemFinished():
                return detail, "stage %r %s", (event.lineage_id, event.status.value)
            case ResourceWaited():
                return (
                    detail,
                    "stage %r waited %s for resource %r",
                    (event.lineage_id, _ms(event.wait_s), event.resource),
                )
            case StepFinished():
                how = "replayed from cache" if event.cached else event.status.value
                return detail, "stage %r step %r %s", (event.lineage_id, event.name, how)
            case StageFinished():
                lvl = problem if event.status is StageStatus.FAILED else level
                suffix = " (cached)" if event.cached else ""
                if event.error is not None:
                    return (
                        lvl,
                        "stage %r %s in %s after %d attempt(s)%s: %s",
                        (
                            event.stage_id,
                            event.status.value,
                            _ms(event.duration_s),
                            event.attempts,
                            suffix,
                            event.error,
                        ),
                    )
                return (
                    lvl,
                    "stage %r %s in %s after %d attempt(s)%s",
                    (
                        event.stage_id,
                        event.status.value,
                        _ms(event.duration_s),
                        event.attempts,
                        suffix,
                    ),
                )
            case RunFinished():
                outcome = "succeeded" if event.success else "failed"
                return (
                    (level if event.success else problem),
                    "run %s of pipeline %r %s in %s",
                    (
                        event.run_id,
                        event.pipeline_name,
                        outcome,
                        _ms(event.duration_s),
                    ),
                )
        assert_never(event)

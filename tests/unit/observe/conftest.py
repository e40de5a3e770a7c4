"""Synthetic event sequences for the observer tests (no executor involved)."""

from __future__ import annotations

import pytest

from pipeline.events import (
    AttemptFailed,
    AttemptStarted,
    FanOutItemFinished,
    PipelineEvent,
    RetryScheduled,
    RunFinished,
    RunStarted,
    StageCacheHit,
    StageFinished,
    StageStarted,
    WaveStarted,
)
from pipeline.result import StageStatus

RUN = "run1"


def run_events() -> list[PipelineEvent]:
    """a (retried once, succeeds) -> b (fan-out of 2: item 0 ok, item 1 fails) -> c (never runs),
    plus a cached stage d."""
    ok, failed = StageStatus.SUCCEEDED, StageStatus.FAILED
    return [
        RunStarted(
            run_id=RUN,
            at_s=0.0,
            pipeline_name="demo",
            stage_ids=("a", "d", "b", "c"),
            waves=(("a", "d"), ("b",), ("c",)),
        ),
        WaveStarted(run_id=RUN, at_s=0.0, wave=0, stage_ids=("a", "d")),
        StageStarted(run_id=RUN, at_s=0.0, stage_id="a", wave=0),
        StageStarted(run_id=RUN, at_s=0.0, stage_id="d", wave=0),
        StageCacheHit(run_id=RUN, at_s=0.0, stage_id="d", key="k1"),
        StageFinished(run_id=RUN, at_s=0.0, stage_id="d", status=ok, cached=True),
        AttemptStarted(run_id=RUN, at_s=0.0, stage_id="a", attempt=1),
        AttemptFailed(
            run_id=RUN,
            at_s=0.1,
            stage_id="a",
            attempt=1,
            error="ValueError: flaky",
            exception_type="ValueError",
            will_retry=True,
        ),
        RetryScheduled(run_id=RUN, at_s=0.1, stage_id="a", attempt=2, delay_s=0.5),
        AttemptStarted(run_id=RUN, at_s=0.6, stage_id="a", attempt=2),
        StageFinished(run_id=RUN, at_s=0.8, stage_id="a", status=ok, attempts=2, duration_s=0.8),
        WaveStarted(run_id=RUN, at_s=0.8, wave=1, stage_ids=("b",)),
        StageStarted(run_id=RUN, at_s=0.8, stage_id="b", wave=1, items=2),
        AttemptStarted(run_id=RUN, at_s=0.8, stage_id="b", item=0, attempt=1),
        AttemptStarted(run_id=RUN, at_s=0.8, stage_id="b", item=1, attempt=1),
        FanOutItemFinished(run_id=RUN, at_s=0.9, stage_id="b", item=0, status=ok, attempts=1),
        AttemptFailed(
            run_id=RUN, at_s=1.0, stage_id="b", item=1, attempt=1, error="RuntimeError: boom"
        ),
        FanOutItemFinished(
            run_id=RUN,
            at_s=1.0,
            stage_id="b",
            item=1,
            status=failed,
            attempts=1,
            error="RuntimeError: boom",
        ),
        StageFinished(
            run_id=RUN,
            at_s=1.0,
            stage_id="b",
            status=failed,
            attempts=1,
            duration_s=0.2,
            items=2,
            error="FAN_OUT item(s) [1] of 2 failed: RuntimeError: boom",
        ),
        StageFinished(
            run_id=RUN,
            at_s=1.0,
            stage_id="c",
            status=StageStatus.CANCELLED,
            error="[CANCELLED] not started",
        ),
        RunFinished(
            run_id=RUN,
            at_s=1.0,
            pipeline_name="demo",
            success=False,
            duration_s=1.0,
            failed_stages=("b",),
        ),
    ]


@pytest.fixture
def events() -> list[PipelineEvent]:
    return run_events()

"""LoggingObserver: one record per event on the "pipeline" logger, structured extras."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pipeline.observers import LoggingObserver

if TYPE_CHECKING:
    import pytest

    from pipeline.events import PipelineEvent


def test_logs_every_event_with_structured_fields(
    events: list[PipelineEvent], caplog: pytest.LogCaptureFixture
) -> None:
    observer = LoggingObserver()
    with caplog.at_level(logging.DEBUG, logger="pipeline"):
        for event in events:
            observer.on_event(event)
    records = [r for r in caplog.records if r.name == "pipeline"]
    assert len(records) == len(events)
    for record, event in zip(records, events, strict=True):
        assert record.__dict__["pipeline_kind"] == event.kind
        assert record.__dict__["pipeline_run_id"] == "run1"
        assert record.__dict__["pipeline_event"]["kind"] == event.kind
    item = next(r for r in records if r.__dict__["pipeline_kind"] == "fan_out_item_finished")
    assert item.__dict__["pipeline_event"]["lineage_id"] == "b[0]"
    assert item.__dict__["pipeline_stage_id"] == "b"


def test_levels_outcomes_info_problems_warning_details_debug(
    events: list[PipelineEvent], caplog: pytest.LogCaptureFixture
) -> None:
    observer = LoggingObserver()
    with caplog.at_level(logging.DEBUG, logger="pipeline"):
        for event in events:
            observer.on_event(event)
    by_kind: dict[str, set[int]] = {}
    for r in caplog.records:
        by_kind.setdefault(r.__dict__["pipeline_kind"], set()).add(r.levelno)
    assert by_kind["stage_started"] == {logging.DEBUG}
    assert by_kind["retry_scheduled"] == {logging.INFO}
    assert by_kind["stage_finished"] == {logging.INFO, logging.WARNING}  # b failed
    assert by_kind["run_finished"] == {logging.WARNING}  # the run failed
    failed = next(r for r in caplog.records if "failed in" in r.getMessage())
    assert "'b' failed" in failed.getMessage()
    assert "FAN_OUT item(s) [1]" in failed.getMessage()


def test_skips_formatting_when_the_level_is_disabled(
    events: list[PipelineEvent], caplog: pytest.LogCaptureFixture
) -> None:
    observer = LoggingObserver()
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        for event in events:
            observer.on_event(event)
    assert {r.levelno for r in caplog.records} == {logging.WARNING}


def test_never_installs_handlers(events: list[PipelineEvent]) -> None:
    logger = logging.getLogger("pipeline")
    before = list(logger.handlers)
    observer = LoggingObserver()
    for event in events:
        observer.on_event(event)
    assert logger.handlers == before


def test_custom_logger_and_levels(
    events: list[PipelineEvent], caplog: pytest.LogCaptureFixture
) -> None:
    custom = logging.getLogger("myapp.pipelines")
    observer = LoggingObserver(custom, level=logging.DEBUG, detail_level=5)
    with caplog.at_level(logging.DEBUG, logger="myapp.pipelines"):
        for event in events:
            observer.on_event(event)
    assert caplog.records
    assert all(r.name == "myapp.pipelines" for r in caplog.records)
    assert not any(r.__dict__["pipeline_kind"] == "stage_started" for r in caplog.records)

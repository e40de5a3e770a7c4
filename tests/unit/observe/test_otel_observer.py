"""OpenTelemetryObserver: one span per run, per stage, per attempt, parented and annotated."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from pipeline.observers.otel import OpenTelemetryObserver

if TYPE_CHECKING:
    from pipeline.events import PipelineEvent

ANCHOR = 1_700_000_000_000_000_000


def _spans(events: list[PipelineEvent]) -> dict[str, ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = OpenTelemetryObserver(provider, time_ns=lambda: ANCHOR)
    for event in events:
        observer.on_event(event)
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert len(by_name) == len(spans), "span names are unique in this scenario"
    return by_name


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_one_span_per_run_stage_and_attempt(events: list[PipelineEvent]) -> None:
    spans = _spans(events)
    assert sorted(spans) == sorted(
        [
            "pipeline demo",
            "stage a",
            "stage b",
            "stage c",
            "stage d",
            "attempt a#1",
            "attempt a#2",
            "attempt b[0]#1",
            "attempt b[1]#1",
        ]
    )


def test_spans_are_parented_run_stage_attempt(events: list[PipelineEvent]) -> None:
    spans = _spans(events)
    run = spans["pipeline demo"]
    assert run.parent is None
    run_ctx = run.get_span_context()
    assert run_ctx is not None
    for sid in "abcd":
        stage = spans[f"stage {sid}"]
        assert stage.parent is not None
        assert stage.parent.span_id == run_ctx.span_id
        assert stage.context is not None
        assert stage.context.trace_id == run_ctx.trace_id
    for name, owner in [("attempt a#1", "a"), ("attempt a#2", "a"), ("attempt b[1]#1", "b")]:
        parent = spans[name].parent
        stage_ctx = spans[f"stage {owner}"].get_span_context()
        assert parent is not None
        assert stage_ctx is not None
        assert parent.span_id == stage_ctx.span_id


def test_times_come_from_the_events_clock(events: list[PipelineEvent]) -> None:
    spans = _spans(events)
    a = spans["stage a"]
    assert a.start_time == ANCHOR
    assert a.end_time == ANCHOR + 800_000_000
    first = spans["attempt a#1"]
    assert (first.start_time, first.end_time) == (ANCHOR, ANCHOR + 100_000_000)
    assert spans["pipeline demo"].end_time == ANCHOR + 1_000_000_000


def test_status_and_attributes(events: list[PipelineEvent]) -> None:
    spans = _spans(events)
    run = spans["pipeline demo"]
    assert run.status.status_code is StatusCode.ERROR
    assert _attrs(run)["pipeline.success"] is False
    assert _attrs(run)["pipeline.run_id"] == "run1"
    assert _attrs(run)["pipeline.name"] == "demo"

    a = _attrs(spans["stage a"])
    assert a["pipeline.stage.id"] == "a"
    assert a["pipeline.stage.status"] == "succeeded"
    assert a["pipeline.stage.attempts"] == 2
    assert a["pipeline.stage.cache_hit"] is False
    assert spans["stage a"].status.status_code is StatusCode.OK
    assert [e.name for e in spans["stage a"].events] == ["retry_scheduled"]
    assert spans["stage a"].events[0].attributes == {
        "pipeline.attempt": 2,
        "pipeline.retry.delay_s": 0.5,
        "pipeline.lineage_id": "a",
    }

    failed_attempt = spans["attempt a#1"]
    assert failed_attempt.status.status_code is StatusCode.ERROR
    exc = next(e for e in failed_attempt.events if e.name == "exception")
    assert exc.attributes == {
        "exception.message": "ValueError: flaky",
        "exception.type": "ValueError",
    }
    assert spans["attempt a#2"].status.status_code is StatusCode.OK

    assert _attrs(spans["stage d"])["pipeline.stage.cache_hit"] is True
    b = spans["stage b"]
    assert b.status.status_code is StatusCode.ERROR
    assert _attrs(b)["pipeline.stage.items"] == 2
    assert _attrs(spans["attempt b[1]#1"])["pipeline.item.index"] == 1
    assert _attrs(spans["attempt b[1]#1"])["pipeline.lineage_id"] == "b[1]"
    assert _attrs(spans["stage c"])["pipeline.stage.status"] == "cancelled"
    assert spans["stage c"].status.status_code is StatusCode.UNSET


def test_events_of_an_unknown_run_are_ignored(events: list[PipelineEvent]) -> None:
    spans = _spans(events[1:])  # no RunStarted: nothing to attach to
    assert spans == {}


def test_the_run_span_nests_under_the_callers_span(events: list[PipelineEvent]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = OpenTelemetryObserver(provider)
    with provider.get_tracer("app").start_as_current_span("request") as outer:
        for event in events:
            observer.on_event(event)
    run = next(s for s in exporter.get_finished_spans() if s.name == "pipeline demo")
    assert run.parent is not None
    assert run.parent.span_id == outer.get_span_context().span_id

"""ProgressObserver: a rich live view of stages, statuses and fan-out bars."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("rich")

from typing import TYPE_CHECKING

from rich.console import Console

from pipeline.observers.progress import ProgressObserver

if TYPE_CHECKING:
    from pipeline.events import PipelineEvent


def _render(
    events: list[PipelineEvent], *, upto: int | None = None
) -> tuple[str, ProgressObserver]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=False, color_system=None)
    observer = ProgressObserver(console, auto_refresh=False)
    for event in events[:upto]:
        observer.on_event(event)
    return buffer.getvalue(), observer


def test_final_view_lists_every_stage_with_its_status(events: list[PipelineEvent]) -> None:
    text, observer = _render(events)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "succeeded" in lines["a"]
    assert "2 attempts" in lines["a"]
    assert "succeeded (cached)" in lines["d"]
    assert "failed" in lines["b"]
    assert "2/2" in lines["b"]  # both items finished (one of them failed)
    assert "cancelled" in lines["c"]
    assert observer._progress is None  # stopped at RunFinished


def test_live_state_mid_run(events: list[PipelineEvent]) -> None:
    upto = next(i for i, e in enumerate(events) if e.kind == "fan_out_item_finished") + 1
    _, observer = _render(events, upto=upto)
    progress = observer._progress
    assert progress is not None
    tasks = {t.description: t for t in progress.tasks}
    assert tasks["b"].fields["status"] == "running"
    assert tasks["b"].fields["fan_out"] is True
    assert (tasks["b"].completed, tasks["b"].total) == (1, 2)
    assert tasks["c"].fields["status"] == "pending"
    assert not tasks["c"].started
    progress.stop()


def test_events_without_a_run_are_ignored(events: list[PipelineEvent]) -> None:
    text, observer = _render(events[1:])
    assert text == ""
    assert observer._progress is None

"""Events are frozen, tagged, keyword-only values with lineage ids."""

from __future__ import annotations

import typing

import pydantic
import pytest

from pipeline import events as ev
from pipeline.events import EVENT_ADAPTER, FanOutItemFinished, PipelineEvent, StageStarted
from pipeline.result import StageStatus


def test_events_are_frozen_and_reject_unknown_fields() -> None:
    e = StageStarted(run_id="r", at_s=0.0, stage_id="a")
    with pytest.raises(pydantic.ValidationError):
        e.stage_id = "b"  # type: ignore[misc]  # the point: frozen
    with pytest.raises(pydantic.ValidationError):
        StageStarted(run_id="r", at_s=0.0, stage_id="a", bogus=1)  # type: ignore[call-arg]  # the point


def test_payload_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        # Through Any: mypy reports this mistake under a code that depends on its cache state.
        typing.cast("typing.Any", StageStarted)("r", 0.0, "a")


def test_lineage_id_names_fan_out_items() -> None:
    assert StageStarted(run_id="r", at_s=0.0, stage_id="groups").lineage_id == "groups"
    item = FanOutItemFinished(
        run_id="r", at_s=1.0, stage_id="groups", item=3, status=StageStatus.SUCCEEDED
    )
    assert item.lineage_id == "groups[3]"
    assert item.model_dump()["lineage_id"] == "groups[3]"


def test_every_event_round_trips_through_the_adapter(events: list[PipelineEvent]) -> None:
    for event in events:
        data = EVENT_ADAPTER.dump_python(event, mode="json")
        data.pop("lineage_id", None)  # computed, not an input
        assert EVENT_ADAPTER.validate_python(data) == event


def test_kinds_are_unique_and_listed() -> None:
    members = typing.get_args(typing.get_args(ev.PipelineEvent)[0])
    kinds = [m.model_fields["kind"].default for m in members]
    assert len(set(kinds)) == len(kinds)
    assert set(kinds) == set(typing.get_args(ev.EventKind))

"""Helpers for testing pipelines: run one stage, script one, virtual time, record a run.

A pytest plugin exposes them as fixtures.

Public on purpose (like `trio.testing`); nothing in the core imports it. The fixtures live in
`pipeline.testing.pytest_plugin`, registered through the `pytest11` entry point.
"""

from pipeline.testing._clock import FakeClock
from pipeline.testing._harness import StageCall, make_context, run_stage
from pipeline.testing._recorder import (
    RecordingStage,
    RecordKind,
    RunRecorder,
    StageRecord,
    record_run,
)
from pipeline.testing._scripted import Block, Delay, Fail, ScriptedStage

__all__ = [
    "Block",
    "Delay",
    "Fail",
    "FakeClock",
    "RecordKind",
    "RecordingStage",
    "RunRecorder",
    "ScriptedStage",
    "StageCall",
    "StageRecord",
    "make_context",
    "record_run",
    "run_stage",
]

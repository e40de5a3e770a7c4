"""`examples/render_pipeline.yaml` is the flagship example as a file: same outputs, same run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from examples.render_pipeline import make_context

from pipeline import PipelineExecutor, StageStatus
from pipeline.config import load

ROOT = Path(__file__).resolve().parents[3]
FILE = ROOT / "examples" / "render_pipeline.yaml"


@pytest.mark.anyio
async def test_the_file_and_the_python_flagship_give_the_same_outputs(anyio_backend: str) -> None:
    from examples.render_pipeline import PIPELINE, GroupPlannerStage

    # The example's planner counts calls per group (its first call for a flaky group fails):
    # a fresh one per run, as a fresh process would have.
    python_pipeline = dataclasses.replace(
        PIPELINE,
        stages=[
            dataclasses.replace(s, stage=GroupPlannerStage()) if s.id == "groups" else s
            for s in PIPELINE.stages
        ],
    )
    from_file = load(FILE)
    assert [s.id for s in from_file.stages] == [s.id for s in PIPELINE.stages]
    assert [s.inputs for s in from_file.stages] == [s.inputs for s in PIPELINE.stages]
    executor = PipelineExecutor(scheduling="eager")
    python = await executor.execute(python_pipeline, "aurora_borealis.wav", make_context())
    declared = await executor.execute(from_file, "aurora_borealis.wav", make_context())
    assert python.success
    assert declared.success
    assert declared.outputs == python.outputs
    assert declared.metadata == python.metadata  # llm calls, rate limits, frames
    assert declared.metadata["rate_limited_calls"] == 2  # the flaky groups were retried
    assert declared.stage_results["lyrics"].status is StageStatus.SUCCEEDED


def test_the_file_round_trips_through_to_config() -> None:
    definition = load(FILE)
    again = load(definition.to_config("toml"), format="toml")
    assert [s.condition for s in again.stages] == [s.condition for s in definition.stages]
    assert [s.retry_config for s in again.stages] == [s.retry_config for s in definition.stages]


def test_the_cli_runs_the_file_with_input_and_context() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(FILE), "--input",
         json.dumps("aurora_borealis.wav"), "--context",
         "examples.render_pipeline:make_context"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pipeline 'render' succeeded" in done.stdout
    assert "groups [5 items]" in done.stdout

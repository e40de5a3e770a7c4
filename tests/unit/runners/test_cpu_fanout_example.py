"""`examples/cpu_fanout.py` runs as a script on worker processes and prints its timing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline import PipelineContext, PipelineExecutor

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "cpu_fanout.py"


def test_the_example_runs_on_processes_and_prints_its_timing() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--runner", "processes", "--items", "12", "--rounds", "50",
         "--workers", "2", "--batch-size", "4"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"runner=processes items=12 rounds=50 workers=2 batch_size=4: \d+ ms "
        r"\(\d+\.\d+ ms/item, hashed 12, first [0-9a-f]{12}\)",
        line,
    ), line


@pytest.mark.anyio
async def test_the_example_gives_the_same_digests_inline_and_on_processes() -> None:
    from examples.cpu_fanout import build, make_runners

    outputs = {}
    for runner in ("inline", "processes"):
        executor = PipelineExecutor(runners=make_runners(runner, 2))
        ctx: PipelineContext[Any] = PipelineContext(state={"rounds": 3})
        with anyio.fail_after(30):
            result = await executor.execute(build(runner, 2), list(range(6)), ctx)
        assert result.success, result.error
        assert ctx.metrics["hashed_items"] == 6  # counted remotely, applied here
        outputs[runner] = result.outputs["digest"]
    assert outputs["inline"] == outputs["processes"]
    assert len(set(outputs["inline"])) == 6

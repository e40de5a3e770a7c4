"""Durable steps across a crash: SIGKILL after step k of 5, then a new process pays only k+1..5.

The child kills itself (`steps_crash_worker.py`), so no pipes or sleeps coordinate anything.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORKER = str(Path(__file__).with_name("steps_crash_worker.py"))
STEPS = 5


def paid(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


@pytest.mark.parametrize("kill_after", [1, 3, 4, 5])
def test_a_rerun_after_sigkill_pays_only_the_steps_that_had_not_finished(
    tmp_path: Path, kill_after: int
) -> None:
    db, log1, log2 = tmp_path / "cache.db", tmp_path / "run1.log", tmp_path / "run2.log"
    crashed = subprocess.run(
        [sys.executable, WORKER, str(db), str(log1), str(kill_after)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert paid(log1) == list(range(1, kill_after + 1))

    done = subprocess.run(
        [sys.executable, WORKER, str(db), str(log2)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["success"], summary
    assert summary["outputs"] == {"calls": sum(k * k for k in range(1, STEPS + 1))}
    assert paid(log2) == list(range(kill_after + 1, STEPS + 1))
    assert summary["steps"] == [
        [f"call{k}", k <= kill_after, 0 if k <= kill_after else 1] for k in range(1, STEPS + 1)
    ]
    stats = summary["stats"]
    assert (stats["hits"], stats["errors"]) == (kill_after, 0)
    assert stats["writes"] == STEPS - kill_after + 1  # the unpaid steps, then the stage

    third = subprocess.run(
        [sys.executable, WORKER, str(db), str(tmp_path / "run3.log")],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    again: dict[str, Any] = json.loads(third.stdout.strip().splitlines()[-1])
    assert again["steps"] == []  # the finished stage is served whole from the cache
    assert paid(tmp_path / "run3.log") == []

"""A streamed fan-out resumes from the per-item cache after a SIGKILL mid-stream (SPEC 11).

The child is coordinated through its stdout ("ready"), never through sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORKER = str(Path(__file__).with_name("stream_crash_worker.py"))
ITEMS = 8


def _env() -> dict[str, str]:
    """The child imports the same `pipeline` (and these tests) as this process."""
    root = Path(__file__).resolve().parents[3]
    paths = [p for p in sys.path if p] + [str(root)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def log_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("kill_at", [0, 3, 7])
def test_sigkill_mid_stream_then_resume_runs_only_unfinished_items(
    tmp_path: Path, kill_at: int
) -> None:
    db, log1, log2 = tmp_path / "cache.db", tmp_path / "run1.log", tmp_path / "run2.log"
    child = subprocess.Popen(
        [sys.executable, WORKER, str(db), str(log1), str(kill_at)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=20) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        if child.stdout is not None:
            child.stdout.close()
    # The producer may have run ahead of the blocked item (within its buffer), so only the
    # map's lines are in a known order: the blocked item is the last one it started.
    squares = [line for line in log_lines(log1) if line.startswith("square:")]
    assert squares[-1] == f"square:{kill_at}"
    assert set(squares[:-1]) == {f"square:{i}" for i in range(kill_at)}

    rerun = subprocess.run(
        [sys.executable, WORKER, str(db), str(log2)],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
        env=_env(),
    )
    summary: dict[str, Any] = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["success"], summary
    assert summary["total"] == sum(i * i for i in range(ITEMS))
    assert summary["cached_items"] == kill_at
    assert summary["stats"]["hits"] == kill_at
    second = log_lines(log2)
    # The producer runs again (it is not cached); only the unfinished items are computed.
    assert [line for line in second if line.startswith("pages:")] == [
        f"pages:{i}" for i in range(ITEMS)
    ]
    assert [line for line in second if line.startswith("square:")] == [
        f"square:{i}" for i in range(kill_at, ITEMS)
    ]

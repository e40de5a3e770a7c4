"""Crash safety across processes: SIGKILL mid-run, then resume; two processes on one file.

Children are coordinated through pipes ("ready", "go"), never through sleeps.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.cache import JsonSerializer
from pipeline.cache._serialize import unseal

WORKER = str(Path(__file__).with_name("crash_worker.py"))
ORDER = ["A", "B", *(f"C:{i}" for i in range(8)), "D"]


def rows(db: Path) -> list[tuple[str, bytes]]:
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT stage_id, value FROM pipeline_cache").fetchall()
    conn.close()
    return [(str(sid), bytes(value)) for sid, value in found]


def assert_entries_are_whole(db: Path) -> None:
    json = JsonSerializer()
    for _, blob in rows(db):
        json.loads(unseal(json, blob), Any)  # every entry decodes completely


def run_to_end(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, WORKER, *args], capture_output=True, text=True, check=True, timeout=20
    )
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def log_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("kill_at", ["A", "B", "C:0", "C:5", "D"])
def test_sigkill_then_resume_runs_only_what_was_not_committed(tmp_path: Path, kill_at: str) -> None:
    db, log1, log2 = tmp_path / "cache.db", tmp_path / "run1.log", tmp_path / "run2.log"
    child = subprocess.Popen(
        [sys.executable, WORKER, str(db), str(log1), "run", kill_at],
        stdout=subprocess.PIPE,
        text=True,
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

    executed_before = log_lines(log1)
    assert executed_before[-1] == kill_at
    committed = executed_before[:-1]
    if db.exists():
        assert sorted(sid for sid, _ in rows(db)) == sorted(c.split(":")[0] for c in committed)
        assert_entries_are_whole(db)

    summary = run_to_end(str(db), str(log2), "run")
    assert summary["success"], summary
    assert summary["stats"]["errors"] == 0
    assert summary["stats"]["hits"] == len(committed)
    assert log_lines(log2) == [label for label in ORDER if label not in committed]
    assert len(rows(db)) == len(ORDER)
    assert_entries_are_whole(db)


def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    ranges = [(0, 60), (30, 90)]
    children = [
        subprocess.Popen(
            [sys.executable, WORKER, str(db), str(tmp_path / f"p{n}.log"), "fan", str(a), str(b)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n, (a, b) in enumerate(ranges)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "waiting"
        for child in children:  # both are up: release them together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.close()
        summaries = []
        for child in children:
            assert child.stdout is not None
            out = child.stdout.read()
            assert child.wait(timeout=20) == 0
            summaries.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            if child.stdout is not None:
                child.stdout.close()
    for summary in summaries:
        assert summary["success"], summary
        assert summary["stats"]["errors"] == 0
        assert summary["stats"]["hits"] + summary["stats"]["writes"] == 60

    assert len(rows(db)) == 90  # no entry lost
    assert_entries_are_whole(db)
    again = run_to_end(str(db), str(tmp_path / "again.log"), "fan", "0", "90")
    assert again["stats"]["hits"] == 90
    assert log_lines(tmp_path / "again.log") == []

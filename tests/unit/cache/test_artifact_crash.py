"""SIGKILL inside an artifact write: no entry points at a partial file; a rerun redoes that stage.

The child (`crash_worker.py big KILL_IN`) runs A -> Big -> D with Big's output stored as an
artifact and stops at KILL_IN inside that write; coordination is through its stdout, no sleeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.unit.cache.conftest import fresh_namespace

if TYPE_CHECKING:
    from tests.unit.cache._redis_server import RedisServer

WORKER = str(Path(__file__).with_name("crash_worker.py"))
BIG = "x" * 300_000


def committed(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp")


def temp_files(root: Path) -> list[Path]:
    return sorted((root / "tmp").glob("*.part")) if (root / "tmp").exists() else []


def run(db: str, log: Path, root: Path, namespace: str, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PIPELINE_TEST_ARTIFACTS": str(root),
        "PIPELINE_TEST_NAMESPACE": namespace,
    }
    return subprocess.Popen(
        [sys.executable, WORKER, db, str(log), "big", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize(
    ("kill_in", "store"),
    # the order of writes is the stores' shared code: Redis once, to see it there too
    [("partial", "sqlite"), ("rename", "sqlite"), ("entry", "sqlite"), ("entry", "redis")],
)
def test_sigkill_inside_an_artifact_write_then_resume(
    tmp_path: Path, request: pytest.FixtureRequest, kill_in: str, store: str
) -> None:
    root, namespace = tmp_path / "artifacts", fresh_namespace()
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        db = server.url
    else:
        db = str(tmp_path / "cache.db")
    child = run(db, tmp_path / "1.log", root, namespace, kill_in)
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
    assert (tmp_path / "1.log").read_text().split() == ["A", "Big"]
    sha = hashlib.sha256(b'json\n"' + BIG.encode() + b'"').hexdigest()
    if kill_in == "entry":  # the artifact was committed whole, only the entry is missing
        assert committed(root) == [root / sha[:2] / sha]
    else:  # nothing committed: at most a temp file nobody refers to
        assert committed(root) == []
        assert len(temp_files(root)) == 1

    again = run(db, tmp_path / "2.log", root, namespace)
    assert again.stdout is not None
    out = again.stdout.read()
    again.stdout.close()
    assert again.wait(timeout=30) == 0
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert summary["success"], summary
    assert summary["stats"] == {
        "hits": 1,  # A
        "misses": 2,
        "writes": 2,  # Big (its artifact whole this time) and D
        "errors": 0,
        "uncacheable": 0,
    }
    assert (tmp_path / "2.log").read_text().split() == ["Big", "D"]
    (path,) = committed(root)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name == sha

    third = run(db, tmp_path / "3.log", root, namespace)
    assert third.stdout is not None
    third.stdout.read()
    third.stdout.close()
    assert third.wait(timeout=30) == 0
    assert not (tmp_path / "3.log").exists()  # everything served, the artifact included

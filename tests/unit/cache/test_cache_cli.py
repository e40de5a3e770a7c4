"""The command line's cache commands: `run --cache` on SQLite and Redis, and `cache gc`."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import anyio
import pytest

from pipeline.cache import SQLiteCache
from pipeline.cli import main

if TYPE_CHECKING:
    from pathlib import Path

    from tests.unit.cache._redis_server import RedisServer

PIPELINE_MODULE = """
from pipeline import PipelineDefinition, StageDefinition, stage

CALLS = []


@stage
async def big(n, context):
    CALLS.append(n)
    return "x" * n


PIPELINE = PipelineDefinition("p", [StageDefinition("big", big)])
"""


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "cli_cache_pipeline.py").write_text(PIPELINE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cli_cache_pipeline", raising=False)  # a fresh CALLS
    return "cli_cache_pipeline:PIPELINE"


def _calls() -> list[int]:
    import cli_cache_pipeline  # type: ignore[import-not-found]  # written by the fixture

    calls: list[int] = cli_cache_pipeline.CALLS
    return calls


def test_run_with_a_sqlite_cache_computes_once(target: str, tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    args = ["run", target, "--input", "5", "--cache", db, "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0
    assert _calls() == [5]  # the second run was a hit


def test_run_with_a_redis_url_uses_the_shared_store(target: str, redis_server: RedisServer) -> None:
    args = ["run", target, "--input", json.dumps(7), "--cache", redis_server.url, "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0
    assert _calls() == [7]


def test_cache_gc_removes_unreferenced_artifacts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, root = tmp_path / "c.db", tmp_path / "artifacts"

    async def fill() -> None:
        from pipeline.cache import CacheKey

        async with SQLiteCache(db, artifacts=root, artifact_threshold_bytes=10) as store:
            keep = CacheKey(stage_id="a", digest="a1")
            drop = CacheKey(stage_id="b", digest="b1")
            await store.put(keep, b"a" * 100)
            await store.put(drop, b"b" * 100)
            await store.delete(drop)

    anyio.run(fill)
    assert main(["cache", "gc", str(db), "--artifacts", str(root), "--grace", "0"]) == 0
    assert capsys.readouterr().out.startswith("removed 1 unreferenced artifact(s)")
    assert main(["cache", "gc", str(tmp_path / "missing.db"), "--artifacts", str(root)]) == 1
    assert "pipeline cache gc:" in capsys.readouterr().err

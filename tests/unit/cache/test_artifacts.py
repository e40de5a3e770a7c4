"""Large outputs as content-addressed artifacts: layout, verification, fsspec URLs, gc.

Run on SQLite and on a real Redis server; pipelines on both anyio backends.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)
from pipeline.cache import (
    CacheError,
    CacheStore,
    RedisCache,
    SQLiteCache,
    describe_gc,
    fingerprint,
    make_key,
    run_cache_gc,
)
from pipeline.errors import DefinitionError
from tests.unit._support import BACKENDS
from tests.unit.cache.conftest import fresh_namespace

if TYPE_CHECKING:
    from pathlib import Path

    from tests.unit.cache._redis_server import RedisServer

THRESHOLD = 1000
Factory = Callable[..., Any]


@pytest.fixture(params=["sqlite", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A store of each kind with artifacts; keyword arguments go to its constructor."""
    if request.param == "sqlite":
        return lambda **kw: SQLiteCache(tmp_path / f"{uuid.uuid4().hex}.db", **kw)
    server: RedisServer = request.getfixturevalue("redis_server")
    return lambda **kw: RedisCache(server.url, namespace=fresh_namespace(), **kw)


def key(stage: str, value: object = 0) -> Any:
    return make_key(stage, fingerprint(value))


def artifact_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp")


def test_a_value_over_the_threshold_is_a_verified_content_addressed_file(
    make: Factory, tmp_path: Path
) -> None:
    root = tmp_path / "deep" / "artifacts"

    async def scenario() -> None:
        store = make(artifacts=root, artifact_threshold_bytes=THRESHOLD)
        assert root.is_dir()  # the directory is created
        big, edge = os.urandom(THRESHOLD + 1), b"e" * THRESHOLD
        await store.put(key("big"), big)
        await store.put(key("edge"), edge)  # not over the threshold: kept inline
        sha = hashlib.sha256(big).hexdigest()
        assert artifact_files(root) == [root / sha[:2] / sha]
        assert (root / sha[:2] / sha).read_bytes() == big
        assert await store.get(key("big")) == big
        assert await store.get(key("edge")) == edge
        await store.aclose()

    anyio.run(scenario)


async def test_the_sqlite_entry_holds_only_the_reference(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with SQLiteCache(db, artifacts=tmp_path / "a", artifact_threshold_bytes=10) as store:
        await store.put(key("big"), b"x" * 5000)
    with sqlite3.connect(db) as conn:
        (value,) = conn.execute("SELECT value FROM pipeline_cache").fetchone()
    conn.close()
    assert len(value) < 200
    assert hashlib.sha256(b"x" * 5000).hexdigest().encode() in value


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_or_missing_artifact_reads_as_cache_error(
    make: Factory, tmp_path: Path, damage: str
) -> None:
    root = tmp_path / "a"

    async def scenario() -> None:
        store = make(artifacts=root, artifact_threshold_bytes=THRESHOLD)
        await store.put(key("big"), b"y" * 5000)
        (path,) = artifact_files(root)
        if damage == "flip":
            path.write_bytes(b"z" + path.read_bytes()[1:])
        elif damage == "truncate":
            path.write_bytes(path.read_bytes()[:100])
        else:
            path.unlink()
        word = "missing" if damage == "delete" else "damaged"
        with pytest.raises(CacheError, match=word):
            await store.get(key("big"))
        await store.aclose()

    anyio.run(scenario)


class Big:
    name = "big"

    def __init__(self) -> None:
        self.calls = 0

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[str]:
        self.calls += 1
        return StageResult.success("b" * 50_000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_recomputes_a_damaged_artifact_and_records_it(
    make: Factory, tmp_path: Path, backend: str
) -> None:
    root = tmp_path / "a"
    big = Big()
    pipeline = PipelineDefinition("big", [StageDefinition("big", big)])

    async def scenario() -> None:
        store: CacheStore = make(artifacts=root, artifact_threshold_bytes=THRESHOLD)
        executor = PipelineExecutor(cache=store)
        first = await executor.execute(pipeline)
        assert first.cache_stats is not None
        assert first.cache_stats.writes == 1
        hit = await executor.execute(pipeline)
        assert hit.get_output("big") == "b" * 50_000
        assert hit.stage_runs["big"].cached
        (path,) = artifact_files(root)
        path.write_bytes(path.read_bytes()[:-1] + b"!")
        damaged = await executor.execute(pipeline)
        assert damaged.success
        assert damaged.get_output("big") == "b" * 50_000
        assert not damaged.stage_runs["big"].cached
        assert any("damaged" in e for e in damaged.stage_runs["big"].cache_errors)
        assert damaged.cache_stats is not None
        assert damaged.cache_stats.errors == 1
        healed = await executor.execute(pipeline)  # the recompute wrote a whole artifact again
        assert healed.stage_runs["big"].cached
        assert big.calls == 2
        await store.aclose()

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_fsspec_url_holds_the_artifacts(make: Factory, backend: str) -> None:
    import fsspec  # type: ignore[import-untyped]

    url = f"memory://artifacts-{uuid.uuid4().hex}"

    async def scenario() -> None:
        store = make(artifacts=url, artifact_threshold_bytes=THRESHOLD)
        assert fsspec.filesystem("memory").isdir(url.removeprefix("memory://"))  # created
        value = os.urandom(5000)
        await store.put(key("big"), value)
        assert await store.get(key("big")) == value
        fs = fsspec.filesystem("memory")
        sha = hashlib.sha256(value).hexdigest()
        path = f"{url.removeprefix('memory://')}/{sha[:2]}/{sha}"
        assert fs.cat_file(path) == value
        fs.pipe_file(path, value[:10])
        with pytest.raises(CacheError, match="damaged"):
            await store.get(key("big"))
        await store.aclose()

    anyio.run(scenario, backend=backend)


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_gc_removes_unreferenced_and_stale_files_only(make: Factory, tmp_path: Path) -> None:
    root = tmp_path / "a"

    async def scenario() -> None:
        store = make(artifacts=root, artifact_threshold_bytes=THRESHOLD)
        await store.put(key("kept"), b"k" * 5000)
        await store.put(key("dropped"), b"d" * 5000)
        await store.delete(key("dropped"))
        await store.put(key("young"), b"y" * 5000)
        await store.delete(key("young"))
        tmp = root / "tmp"
        stale, fresh = tmp / ("0" * 64 + ".1-ab.part"), tmp / ("1" * 64 + ".1-cd.part")
        stale.write_bytes(b"partial")
        fresh.write_bytes(b"partial")
        stranger = root / "README"
        stranger.write_text("not ours")
        sha = {n: hashlib.sha256(n.encode()[:1] * 5000).hexdigest() for n in ("k", "d", "y")}
        paths = {n: root / s[:2] / s for n, s in sha.items()}
        for path in (paths["k"], paths["d"], stale, stranger):
            age(path, 7200)
        report = await store.gc_artifacts(grace_s=3600)
        assert report.removed == (str(paths["d"]),)
        assert report.removed_temp == (str(stale),)
        assert report.freed_bytes == 5000 + len(b"partial")
        assert report.kept == 2  # referenced, and too young to tell
        assert paths["k"].exists()
        assert paths["y"].exists()
        assert fresh.exists()
        assert stranger.exists()
        assert await store.get(key("kept")) == b"k" * 5000
        await store.aclose()

    anyio.run(scenario)


def test_run_cache_gc_works_on_a_sqlite_file_for_the_command_line(tmp_path: Path) -> None:
    db, root = tmp_path / "c.db", tmp_path / "a"

    async def fill() -> None:
        async with SQLiteCache(db, artifacts=root, artifact_threshold_bytes=10) as store:
            await store.put(key("a"), b"a" * 100)
            await store.put(key("b"), b"b" * 100)
            await store.delete(key("b"))

    anyio.run(fill)
    report = run_cache_gc(db, artifacts=root, grace_s=0)
    assert len(report.removed) == 1
    assert report.kept == 1
    with pytest.raises(CacheError):
        run_cache_gc(tmp_path / "missing.db", artifacts=root)
    assert not (tmp_path / "missing.db").exists()
    assert describe_gc(report).startswith("removed 1 unreferenced artifact(s)")


def test_run_cache_gc_works_on_a_redis_namespace(redis_server: RedisServer, tmp_path: Path) -> None:
    root, namespace = tmp_path / "a", fresh_namespace()

    async def fill() -> None:
        options: dict[str, Any] = {"artifacts": root, "artifact_threshold_bytes": 10}
        async with RedisCache(redis_server.url, namespace=namespace, **options) as store:
            await store.put(key("a"), b"a" * 100)
            await store.put(key("b"), b"b" * 100)
            await store.invalidate("b")

    anyio.run(fill)
    report = run_cache_gc(redis_server.url, artifacts=root, namespace=namespace, grace_s=0)
    assert [os.path.basename(p) for p in report.removed] == [hashlib.sha256(b"b" * 100).hexdigest()]
    assert report.kept == 1


def test_gc_without_artifacts_configured_is_a_cache_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SQLiteCache(tmp_path / "c.db") as store:
            with pytest.raises(CacheError, match="artifacts="):
                await store.gc_artifacts()

    anyio.run(scenario)


@pytest.mark.parametrize("threshold", [-1, 1.5, True, "10"])
def test_a_bad_threshold_is_a_definition_error(tmp_path: Path, threshold: Any) -> None:
    with pytest.raises(DefinitionError, match="artifact_threshold_bytes"):
        SQLiteCache(tmp_path / "c.db", artifacts=tmp_path, artifact_threshold_bytes=threshold)


async def test_a_read_only_store_writes_no_artifact(tmp_path: Path) -> None:
    db, root = tmp_path / "c.db", tmp_path / "a"
    async with SQLiteCache(db) as writer:
        await writer.put(key("warm"), b"w")
    async with SQLiteCache(db, read_only=True, artifacts=root, artifact_threshold_bytes=10) as ro:
        with pytest.raises(CacheError, match="read-only"):
            await ro.put(key("big"), b"x" * 100)
    assert artifact_files(root) == []


async def test_an_entry_with_a_reference_needs_the_artifact_location(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with SQLiteCache(db, artifacts=tmp_path / "a", artifact_threshold_bytes=10) as store:
        await store.put(key("big"), b"x" * 100)
    async with SQLiteCache(db) as without:
        with pytest.raises(CacheError, match="no artifacts= location"):
            await without.get(key("big"))


async def test_values_starting_with_a_nul_byte_round_trip(tmp_path: Path) -> None:
    async with SQLiteCache(tmp_path / "c.db", artifacts=tmp_path / "a") as store:
        for value in (b"\x00", b"\x00pipeline-artifact\x00sha256:" + b"0" * 64 + b":1"):
            await store.put(key("nul", value), value)
            assert await store.get(key("nul", value)) == value


def test_gc_works_on_an_fsspec_url(tmp_path: Path) -> None:
    import fsspec

    url = f"memory://gc-{uuid.uuid4().hex}"

    async def scenario() -> None:
        async with SQLiteCache(tmp_path / "c.db", artifacts=url, artifact_threshold_bytes=10) as s:
            await s.put(key("kept"), b"k" * 100)
            await s.put(key("dropped"), b"d" * 100)
            await s.delete(key("dropped"))
            root = url.removeprefix("memory://")
            fsspec.filesystem("memory").pipe_file(f"{root}/tmp/{'0' * 64}.1-ab.part", b"p")
            report = await s.gc_artifacts(grace_s=0)
            assert len(report.removed) == 1
            assert hashlib.sha256(b"d" * 100).hexdigest() in report.removed[0]
            assert len(report.removed_temp) == 1
            assert report.kept == 1
            assert await s.get(key("kept")) == b"k" * 100

    anyio.run(scenario)


def test_a_url_without_fsspec_installed_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'wavepipe\[fsspec\]'"):
        SQLiteCache(tmp_path / "c.db", artifacts="s3://bucket/cache")

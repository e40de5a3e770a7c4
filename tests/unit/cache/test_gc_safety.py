"""gc never removes what it cannot prove unreferenced, nor anything outside its own layout.

Review findings: a wrong SQLite file (no cache table) or a misspelt Redis namespace read as "no
references" and lost every artifact; files named like temp writes or artifacts anywhere under
the root (a root itself named `tmp`, nested folders) were collected. Redis namespaces with `:`
could share keys with another namespace.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline.cache import (
    CacheError,
    RedisCache,
    SQLiteCache,
    fingerprint,
    gc_store_artifacts,
    make_key,
    run_cache_gc,
)
from pipeline.errors import DefinitionError
from tests.unit._support import BACKENDS
from tests.unit.cache.conftest import fresh_namespace

if TYPE_CHECKING:
    from pathlib import Path

    from tests.unit.cache._redis_server import RedisServer

BIG = b"x" * 100
SHA = hashlib.sha256(BIG).hexdigest()


def key(stage: str, value: object = 0) -> Any:
    return make_key(stage, fingerprint(value))


def age(path: Path, seconds: float = 7200) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def age_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            age(path)


def write_one_artifact(db: Path, root: Path) -> Path:
    async def fill() -> None:
        async with SQLiteCache(db, artifacts=root, artifact_threshold_bytes=10) as store:
            await store.put(key("s"), BIG)

    anyio.run(fill)
    artifact = root / SHA[:2] / SHA
    assert artifact.exists()
    age_tree(root)
    return artifact


@pytest.mark.parametrize("kind", ["other-table", "empty-file", "empty-db"])
def test_gc_against_a_file_without_the_cache_table_refuses_and_removes_nothing(
    tmp_path: Path, kind: str
) -> None:
    root = tmp_path / "a"
    artifact = write_one_artifact(tmp_path / "c.db", root)
    wrong = tmp_path / "wrong.db"
    if kind == "other-table":
        with sqlite3.connect(wrong) as conn:
            conn.execute("CREATE TABLE t (x)")
        conn.close()
    elif kind == "empty-file":
        wrong.write_bytes(b"")
    else:
        with sqlite3.connect(wrong) as conn:
            conn.execute("PRAGMA user_version = 1")  # a valid database with no table at all
        conn.close()
    with pytest.raises(CacheError, match=r"no pipeline_cache table.*nothing was removed"):
        run_cache_gc(wrong, artifacts=root, grace_s=0)
    assert artifact.exists()

    async def direct() -> None:
        async with SQLiteCache(wrong, read_only=True, artifacts=root) as store:
            assert await store.count() == 0  # still reads as an empty store
            with pytest.raises(CacheError, match="no pipeline_cache table"):
                await store.gc_artifacts(grace_s=0)

    anyio.run(direct)
    assert artifact.exists()


def test_gc_against_the_right_file_still_collects(tmp_path: Path) -> None:
    root = tmp_path / "a"
    db = tmp_path / "c.db"
    artifact = write_one_artifact(db, root)

    async def drop() -> None:
        async with SQLiteCache(db) as store:
            await store.clear()  # an emptied store: its table is real, so nothing is referenced

    anyio.run(drop)
    report = run_cache_gc(db, artifacts=root, grace_s=0)
    assert report.removed == (str(artifact),)
    assert not artifact.exists()


def plant_strangers(root: Path) -> list[Path]:
    """Files under the root that look like ours but are not where this layout puts them."""
    sha = "ab" * 32
    strangers = [
        root / "download.part",  # a .part file at the root (the root itself may be named tmp)
        root / "sub" / "tmp" / "video.part",  # a nested folder named tmp
        root / "sub" / "tmp" / f"{'0' * 64}.1-ab.part",  # our naming, but not in root/tmp
        root / "tmp" / "notes.part",  # in root/tmp, but not our naming
        root / "tmp" / f"{'0' * 64}.part",  # no pid and random part
        root / "user" / sha[:2] / sha,  # an artifact-like file one level too deep
        root / sha,  # an artifact name at the root
        root / "cd" / sha,  # in a two-hex folder that is not its prefix
    ]
    for path in strangers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"user data")
        age(path)
    return strangers


def test_gc_removes_only_files_of_its_own_layout(tmp_path: Path) -> None:
    root = tmp_path / "proj" / "tmp"  # a root that is itself named tmp
    db = tmp_path / "c.db"
    strangers = plant_strangers(root)
    ours_temp = root / "tmp" / f"{'1' * 64}.42-0a1b2c3d.part"
    ours_temp.parent.mkdir(parents=True, exist_ok=True)
    ours_temp.write_bytes(b"partial")
    age(ours_temp)

    async def scenario() -> None:
        async with SQLiteCache(db, artifacts=root, artifact_threshold_bytes=10) as store:
            await store.put(key("dropped"), BIG)
            await store.delete(key("dropped"))
            age_tree(root)
            report = await store.gc_artifacts(grace_s=3600)
            assert report.removed == (str(root / SHA[:2] / SHA),)
            assert report.removed_temp == (str(ours_temp),)

    anyio.run(scenario)
    assert [p for p in strangers if not p.exists()] == []


def test_gc_on_an_fsspec_url_removes_only_files_of_its_own_layout(tmp_path: Path) -> None:
    import fsspec  # type: ignore[import-untyped]  # no stubs

    url = f"memory://tmp/gc-{uuid.uuid4().hex}/tmp"
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://")
    sha = "ab" * 32
    strangers = [f"{root}/download.part", f"{root}/sub/tmp/video.part", f"{root}/u/ab/{sha}"]
    for path in strangers:
        fs.pipe_file(path, b"user data")

    async def scenario() -> None:
        async with SQLiteCache(tmp_path / "c.db", artifacts=url, artifact_threshold_bytes=10) as s:
            await s.put(key("dropped"), BIG)
            await s.delete(key("dropped"))
            report = await s.gc_artifacts(grace_s=-1)  # everything counts as old
            assert len(report.removed) == 1
            assert report.removed[0].endswith(f"/{SHA[:2]}/{SHA}")
            assert report.removed_temp == ()

    anyio.run(scenario)
    assert [p for p in strangers if not fs.exists(p)] == []


# -- Redis -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("namespace", ["a:s", "app:cache:", ":x"])
def test_a_redis_namespace_with_a_colon_is_a_definition_error(namespace: str) -> None:
    with pytest.raises(DefinitionError, match=r"namespace.*without ':'") as caught:
        RedisCache("redis://127.0.0.1:1/0", namespace=namespace)
    assert repr(namespace.replace(":", "-")) in str(caught.value)  # names a spelling that works


@pytest.mark.parametrize("backend", BACKENDS)
def test_stage_ids_with_colons_stay_in_their_namespace(
    redis_server: RedisServer, backend: str
) -> None:
    """`a` + stage `s:y` and `a-s`/`as` + stage `y` used to be able to share index keys."""

    async def scenario() -> None:
        base = fresh_namespace()
        async with (
            RedisCache(redis_server.url, namespace=base) as a,
            RedisCache(redis_server.url, namespace=f"{base}s") as b,
            RedisCache(redis_server.url, namespace=f"{base}-s") as c,
        ):
            await a.put(key("s:y"), b"a's")
            await a.put(key("stages"), b"a's stage named stages")
            await b.put(key("y"), b"b's")
            await c.put(key("y"), b"c's")
            assert (await a.count("s:y"), await b.count("y"), await c.count("y")) == (1, 1, 1)
            assert await a.invalidate("s:y") == 1
            assert await b.get(key("y")) == b"b's"
            assert await c.get(key("y")) == b"c's"
            assert (await b.invalidate("y"), await c.count("y")) == (1, 1)
            assert await a.count() == 1  # the stage called "stages" is an ordinary stage
            await a.clear()
            assert (await a.count(), await c.count()) == (0, 1)
            await c.clear()

    anyio.run(scenario, backend=backend)


def test_redis_gc_of_a_namespace_never_written_refuses(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    root, namespace = tmp_path / "a", fresh_namespace()

    async def scenario() -> None:
        options: dict[str, Any] = {"artifacts": root, "artifact_threshold_bytes": 10}
        async with RedisCache(redis_server.url, namespace=namespace, **options) as store:
            await store.put(key("s"), BIG)
        artifact = root / SHA[:2] / SHA
        age(artifact)
        with pytest.raises(CacheError, match=r"never written.*nothing was removed"):
            await gc_store_artifacts(
                redis_server.url, artifacts=root, namespace=namespace + "x", grace_s=0
            )
        assert artifact.exists()
        async with RedisCache(redis_server.url, namespace=namespace, **options) as store:
            await store.clear()  # emptied on purpose: now nothing is referenced
            report = await store.gc_artifacts(grace_s=0)
            assert report.removed == (str(artifact),)
            await store.clear()

    anyio.run(scenario)

"""A `SQLiteCache` on a file this process may only read: it serves hits and refuses writes.

Tests and CI run as root, which ignores permission bits, so most tests make the OS refuse at
the boundaries the store asks (`os.access`, opening the file for writing); the real
permission check runs only as a normal user.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import TYPE_CHECKING, Any, Literal

import anyio
import pytest

from pipeline import PipelineDefinition, PipelineExecutor, PipelineStage, StageDefinition
from pipeline.cache import CacheError, CacheKey, SQLiteCache, fingerprint, make_key
from pipeline.errors import DefinitionError
from pipeline.testing import ScriptedStage
from tests.unit._support import BACKENDS

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def key(stage: str, value: object = 0) -> CacheKey:
    return make_key(stage, fingerprint(value))


async def filled(path: Path) -> None:
    """Write entry `a` (value b"v") with a normal, writable store."""
    async with SQLiteCache(path) as store:
        await store.put(key("a"), b"v")


def rows(path: Path) -> list[tuple[str, bytes]]:
    """What the file holds, read behind the store's back."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT stage_id, value FROM pipeline_cache ORDER BY stage_id"
        ).fetchall()
    finally:
        conn.close()


def refuse_writing(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make `os.access` answer for `path` as it does for a file the process may only read."""
    real = os.access
    target = os.path.abspath(path)

    def access(p: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if os.path.abspath(p) == target and mode & os.W_OK:
            return False
        return real(p, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def refuse_opening(monkeypatch: pytest.MonkeyPatch, *, immutable_only: bool) -> list[str]:
    """Make SQLite refuse to open files for writing, as on a read-only filesystem.

    With `immutable_only`, a plain read-only open is refused too, as in a directory where
    SQLite cannot create the -shm file a WAL database needs. Returns the opens attempted.
    """
    real = sqlite3.connect
    opened: list[str] = []

    def connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        where = str(database)
        opened.append(where)
        read_only = kwargs.get("uri") and "mode=ro" in where
        if not read_only or (immutable_only and "immutable=1" not in where):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        conn: sqlite3.Connection = real(database, *args, **kwargs)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return opened


async def assert_writes_refused(store: SQLiteCache, *, fix: str) -> None:
    """Every write raises a `CacheError` that says read-only, keeps hits and names the fix."""
    writes: list[tuple[str, Callable[[], Any]]] = [
        ("store the entry", lambda: store.put(key("b"), b"w")),
        ("delete the entry", lambda: store.delete(key("a"))),
        ("invalidate stage 'a'", lambda: store.invalidate("a")),
        ("clear the store", store.clear),
    ]
    for what, write in writes:
        with pytest.raises(CacheError) as info:
            await write()
        message = str(info.value)
        assert f"cannot {what}: the store is read-only" in message
        assert "hits are still served" in message
        assert fix in message
    with pytest.raises(CacheError, match="key " + key("b").digest[:12]):
        await store.put(key("b"), b"w")


# -- asked for: SQLiteCache(path, read_only=True) ---------------------------------------------
async def test_read_only_true_serves_hits_and_never_changes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    await filled(path)
    async with SQLiteCache(path, read_only=True) as store:
        assert store.read_only
        assert store.read_only_reason == "opened with read_only=True"
        assert "read_only=True" in repr(store)
        assert await store.get(key("a")) == b"v"
        assert await store.get(key("b")) is None
        assert await store.count() == 1
        await assert_writes_refused(store, fix="open it without read_only=True to write")
    assert rows(path) == [("a", b"v")]


async def test_read_only_true_sees_what_a_writer_adds_later(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    await filled(path)
    async with SQLiteCache(path) as writer, SQLiteCache(path, read_only=True) as reader:
        assert await reader.get(key("a")) == b"v"
        await writer.put(key("b"), b"w")
        assert await reader.get(key("b")) == b"w"  # not immutable: WAL changes are seen


async def test_read_only_true_never_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    store = SQLiteCache(path, read_only=True)
    with pytest.raises(CacheError, match="cannot open"):
        await store.get(key("a"))
    assert not path.exists()
    await store.aclose()


async def test_a_read_only_file_without_the_table_is_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.commit()
    conn.close()
    async with SQLiteCache(path, read_only=True) as store:
        assert await store.get(key("a")) is None
        assert await store.count() == 0
    conn = sqlite3.connect(path)
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    assert tables == [("unrelated",)]


def test_read_only_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as info:
        SQLiteCache(tmp_path / "c.db", read_only="yes")  # type: ignore[arg-type]  # the bad value under test
    assert (info.value.owner, info.value.field) == ("SQLiteCache", "read_only")
    assert "True or False" in str(info.value)


async def test_a_writable_file_is_not_read_only(tmp_path: Path) -> None:
    async with SQLiteCache(tmp_path / "c.db") as store:
        await store.put(key("a"), b"v")
        assert not store.read_only
        assert store.read_only_reason is None


# -- found out: the OS or SQLite refuses to write ---------------------------------------------
async def test_a_file_the_process_may_not_write_is_opened_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.db"
    await filled(path)
    refuse_writing(monkeypatch, path)
    store = SQLiteCache(path)
    assert (store.read_only, store.read_only_reason) == (False, None)  # not opened yet
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert await store.get(key("a")) == b"v"
    assert store.read_only
    assert store.read_only_reason is not None
    assert "not writable by this process" in store.read_only_reason
    [logged] = [r.getMessage() for r in caplog.records if "read-only" in r.getMessage()]
    assert "serves hits and stores nothing" in logged
    await assert_writes_refused(store, fix="give this process write access to the file")
    # The connection itself is read-only, not just guarded: SQLite refuses a direct write.
    with pytest.raises(CacheError, match="readonly"):
        await store._call(lambda conn: conn.execute("DELETE FROM pipeline_cache"), None)
    await store.aclose()
    assert rows(path) == [("a", b"v")]


async def test_a_file_sqlite_cannot_open_for_writing_is_opened_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.db"
    await filled(path)
    opened = refuse_opening(monkeypatch, immutable_only=False)
    async with SQLiteCache(path) as store:
        assert await store.get(key("a")) == b"v"
        assert store.read_only_reason == (
            "opening it for writing failed: attempt to write a readonly database"
        )
        await assert_writes_refused(store, fix="write access")
    # The writable open is refused, then the file opens read-only, and so does the second
    # connection that serves lookups on the event loop.
    opens = [o.rsplit("?", 1)[-1] if "?" in o else "rw" for o in opened]
    assert opens == ["rw", "mode=ro", "mode=ro"]
    monkeypatch.undo()
    assert rows(path) == [("a", b"v")]


async def test_without_room_for_the_wal_index_the_file_is_opened_immutable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.db"
    await filled(path)
    refuse_opening(monkeypatch, immutable_only=True)
    async with SQLiteCache(path) as store:
        assert await store.get(key("a")) == b"v"
        assert await store.count("a") == 1
        assert store.read_only_reason is not None
        assert "opened immutable" in store.read_only_reason
        assert "other processes' writes are not seen" in store.read_only_reason
        await assert_writes_refused(store, fix="write access")


async def test_a_write_sqlite_refuses_makes_the_store_read_only(tmp_path: Path) -> None:
    """SQLite opens a file it may not write read-only on its own; the first write finds out."""
    path = tmp_path / "c.db"
    await filled(path)
    store = SQLiteCache(path)
    uri = f"{path.absolute().as_uri()}?mode=ro"

    def silently_read_only() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    store._open = silently_read_only  # type: ignore[method-assign]  # what SQLite does itself
    assert await store.get(key("a")) == b"v"
    assert (store.read_only, store.read_only_reason) == (False, None)  # reads give no sign
    with pytest.raises(CacheError, match="cannot store the entry: the store is read-only") as info:
        await store.put(key("b"), b"w")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert store.read_only_reason == "SQLite refused a write: attempt to write a readonly database"
    await assert_writes_refused(store, fix="write access")
    assert await store.get(key("a")) == b"v"
    await store.aclose()


@pytest.mark.skipif(IS_ROOT, reason="root ignores permission bits, so the file stays writable")
@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permission bits")
@pytest.mark.parametrize("directory_writable", [True, False])
async def test_a_file_without_write_permission_serves_hits(
    tmp_path: Path, directory_writable: bool
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "c.db"
    await filled(path)
    path.chmod(0o444)
    if not directory_writable:
        folder.chmod(0o555)
    try:
        async with SQLiteCache(path) as store:
            assert await store.get(key("a")) == b"v"
            assert store.read_only
            await assert_writes_refused(store, fix="write access")
            if not directory_writable:
                assert "opened immutable" in str(store.read_only_reason)
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert rows(path) == [("a", b"v")]


# -- through the executor ----------------------------------------------------------------------
def two_stages(a: PipelineStage[Any, Any], b: PipelineStage[Any, Any]) -> PipelineDefinition:
    return PipelineDefinition(
        "ro", [StageDefinition("a", a), StageDefinition("b", b, inputs=["a"])]
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["asked", "refused"])
def test_a_run_on_a_read_only_store_serves_hits_and_notes_it_cannot_write(
    backend: str,
    how: Literal["asked", "refused"],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "c.db"
    a, b = ScriptedStage("A"), ScriptedStage("B")

    async def scenario() -> None:
        async with SQLiteCache(path) as writable:
            # The first run caches only `a`: `b` is not a cacheable stage yet.
            first = await PipelineExecutor(cache=writable).execute(
                PipelineDefinition("ro", [StageDefinition("a", a)]), 7
            )
            assert first.success
            assert await writable.count() == 1
        if how == "refused":
            refuse_writing(monkeypatch, path)
        store = SQLiteCache(path, read_only=how == "asked")
        with anyio.fail_after(10):
            result = await PipelineExecutor(cache=store).execute(two_stages(a, b), 7)
        await store.aclose()

        assert result.success
        assert result.outputs == {"a": "A", "b": "B"}
        assert (a.call_count, b.call_count) == (1, 1)  # `a` came from the read-only file
        assert b.inputs == ["A"]  # the hit reached `b`
        assert result.stage_runs["a"].cached
        assert result.stage_runs["a"].cache_errors == ()
        [note] = result.stage_runs["b"].cache_errors
        assert note.startswith("write failed: CacheError: ")
        assert "cannot store the entry: the store is read-only" in note
        assert result.cache_stats is not None
        stats = result.cache_stats
        assert (stats.hits, stats.misses, stats.writes, stats.errors) == (1, 1, 0, 1)
        assert store.read_only

    anyio.run(scenario, backend=backend)
    monkeypatch.undo()
    assert [stage for stage, _ in rows(path)] == ["a"]

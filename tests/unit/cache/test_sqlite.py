"""What only the SQLite store does: WAL, persistence, batching, and failing as `CacheError`."""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from pipeline.cache import CacheError, CacheKey, SQLiteCache, fingerprint, make_key
from pipeline.errors import DefinitionError, PipelineError

if TYPE_CHECKING:
    from pathlib import Path


def key(stage: str, value: object = 0) -> CacheKey:
    return make_key(stage, fingerprint(value))


async def test_file_is_in_wal_mode_with_the_table(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with SQLiteCache(path) as store:
        await store.put(key("a"), b"v")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute("SELECT stage_id, value FROM pipeline_cache").fetchall()
    assert rows == [("a", b"v")]


async def test_entries_survive_a_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with SQLiteCache(path) as store:
        await store.put(key("a"), b"v")
    async with SQLiteCache(path) as again:
        assert await again.get(key("a")) == b"v"


async def test_a_file_that_is_not_a_database_raises_cache_error(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    path.write_bytes(b"this is not a database" * 100)
    store = SQLiteCache(path)
    with pytest.raises(CacheError) as info:
        await store.get(key("a"))
    assert isinstance(info.value, PipelineError)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(CacheError):
        await store.put(key("a"), b"v")
    await store.aclose()


async def test_a_corrupt_row_raises_cache_error(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with SQLiteCache(path) as store:
        await store.put(key("a"), b"v")
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE pipeline_cache SET value = 'text, not bytes'")
        with pytest.raises(CacheError, match="corrupt row") as info:
            await store.get(key("a"))
        assert info.value.key == key("a").digest


async def test_a_lock_held_past_the_busy_timeout_raises_cache_error(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with SQLiteCache(path, busy_timeout_s=0.05) as store:
        await store.put(key("a"), b"v")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(CacheError, match="locked"):
                await store.put(key("b"), b"v")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await store.put(key("b"), b"v")  # recovers once the lock is gone
        assert await store.get(key("b")) == b"v"


def test_busy_timeout_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="busy_timeout_s"):
        SQLiteCache(tmp_path / "c.db", busy_timeout_s=-1)


async def test_concurrent_calls_share_worker_thread_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteCache(tmp_path / "c.db")
    trips: list[int] = []
    original = store._run_batch

    def counting(batch: list[Any]) -> None:
        trips.append(len(batch))
        original(batch)

    monkeypatch.setattr(store, "_run_batch", counting)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(store.put, key("a", i), b"v")
    assert sum(trips) == 100
    assert len(trips) <= 3
    await store.aclose()


async def test_a_cancelled_leader_hands_over_to_the_waiting_callers(tmp_path: Path) -> None:
    store = SQLiteCache(tmp_path / "c.db")
    await store.put(key("a"), b"v")
    got: list[bytes | None] = []

    async def follower() -> None:
        got.append(await store.get(key("a")))

    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await store.get(key("a"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await anyio.lowlevel.checkpoint()  # the leader is at its gathering checkpoint
            tg.start_soon(follower)
            tg.start_soon(follower)
            leader_scope.cancel()
    assert got == [b"v", b"v"]
    assert store._pending == []
    assert not store._leading
    await store.aclose()


async def test_operation_queued_behind_a_cancelled_leader_still_runs(tmp_path: Path) -> None:
    """A shielded write queued behind an operation whose caller is cancelled must not be lost.

    The cancelled caller led the worker-thread trips; its next trip is refused at the
    cancellation checkpoint before it starts, and the queued write has to run anyway. (The
    leader counts: a lookup of an open file is served on the loop without a trip.)
    """
    cache = SQLiteCache(tmp_path / "c.db")
    await cache.put(key("warm"), b"w")  # open the file first: the gate below is for lookups
    gate, entered = threading.Event(), threading.Event()
    run_batch = cache._run_batch

    def gated(batch: list[Any]) -> None:
        if not gate.is_set():
            entered.set()
            gate.wait(5)
        run_batch(batch)

    cache._run_batch = gated  # type: ignore[method-assign]  # hold the first trip in its thread
    leader_scope = anyio.CancelScope()
    written = anyio.Event()

    async def leader() -> None:
        with leader_scope:
            await cache.count()

    async def shielded_writer() -> None:
        with anyio.CancelScope(shield=True):
            await cache.put(key("b"), b"v")
        written.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await anyio.to_thread.run_sync(entered.wait, 5)
            tg.start_soon(shielded_writer)
            await anyio.wait_all_tasks_blocked()  # the write is queued behind the leader's trip
            leader_scope.cancel()
            gate.set()
            await written.wait()
    assert await cache.get(key("b")) == b"v"
    await cache.aclose()


async def test_lookups_of_an_open_file_take_no_worker_thread_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hit must stay cheap (SPEC 13: <= 50 us per stage), so it is read on the event loop."""
    store = SQLiteCache(tmp_path / "c.db")
    await store.put(key("a"), b"v")
    await store.put(key("big"), b"b" * 100_000)
    trips: list[int] = []
    original = store._run_batch

    def counting(batch: list[Any]) -> None:
        trips.append(len(batch))
        original(batch)

    monkeypatch.setattr(store, "_run_batch", counting)
    for _ in range(20):
        assert await store.get(key("a")) == b"v"
        assert await store.get(key("missing")) is None
    assert trips == []
    assert await store.get(key("big")) == b"b" * 100_000  # a large value: read in a thread
    assert trips == [1]
    await store.aclose()


async def test_lookups_on_the_loop_see_other_connections_writes(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with SQLiteCache(path) as store:
        await store.put(key("a"), b"v")
        assert await store.get(key("b")) is None
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("UPDATE pipeline_cache SET value = X'7777'")
        other.execute("INSERT INTO pipeline_cache VALUES (?, 'b', 0, X'6262')", (key("b").digest,))
        other.close()
        assert await store.get(key("a")) == b"ww"
        assert await store.get(key("b")) == b"bb"
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # WAL: a writer's lock does not stop readers
        try:
            with anyio.fail_after(5):
                assert await store.get(key("a")) == b"ww"
        finally:
            holder.execute("ROLLBACK")
            holder.close()


async def test_a_file_of_the_older_without_rowid_format_still_works(tmp_path: Path) -> None:
    """Files written before the rowid table keep working; their lookups use worker threads."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE pipeline_cache (digest TEXT PRIMARY KEY, stage_id TEXT NOT NULL,"
            " created_at REAL NOT NULL, value BLOB NOT NULL) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO pipeline_cache VALUES (?, 'a', 0, X'6f6c64')", (key("a").digest,))
    conn.close()
    async with SQLiteCache(path) as store:
        assert await store.get(key("a")) == b"old"
        await store.put(key("b"), b"new")
        assert await store.get(key("b")) == b"new"
        assert await store.count() == 2
        assert store._reader._conn is None  # no lookups on the loop for this format

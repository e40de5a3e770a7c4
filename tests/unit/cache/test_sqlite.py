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
    """A shielded write queued behind a lookup whose stage is cancelled must not be lost.

    The cancelled caller led the worker-thread trips; its next trip is refused at the
    cancellation checkpoint before it starts, and the queued write has to run anyway.
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
            await cache.get(key("a"))

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

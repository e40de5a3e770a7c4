"""`SQLiteCache`: a `CacheStore` in one SQLite file, shared safely by threads and processes.

stdlib `sqlite3` runs in anyio worker threads, never on the event loop. Concurrent calls are
gathered into one worker-thread trip (each operation still its own transaction), because the
trip costs far more than the query. The protocol and the in-memory store live in `_store`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, final

import anyio
import anyio.to_thread

from pipeline.cache._store import CacheError, _check_ttl
from pipeline.errors import DefinitionError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from pipeline.cache._key import CacheKey

T = TypeVar("T")

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS pipeline_cache ("
    " digest TEXT PRIMARY KEY, stage_id TEXT NOT NULL,"
    " created_at REAL NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS pipeline_cache_stage ON pipeline_cache (stage_id)",
)


class _Job(Generic[T]):
    """One store operation waiting for a worker-thread trip."""

    __slots__ = ("done", "error", "fn", "key", "value", "wakeup")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], key: str | None) -> None:
        self.fn = fn
        self.key = key
        self.done = False
        self.value: T | None = None
        self.error: BaseException | None = None
        self.wakeup: anyio.Event | None = None

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()


@final
class SQLiteCache:
    """A `CacheStore` in a SQLite file (WAL mode): survives crashes, shared across processes.

    Every write is one transaction, so a killed process leaves the old entry or the new one,
    never part of one. Readers never block writers (WAL). Use one instance per event loop.

    Args:
        path: The database file (created with its table if missing).
        ttl_s: Entries older than this many seconds read as missing (None: never expire).
        time_fn: Wall-clock time in seconds for the TTL (default `time.time`; tests pass a fake).
        busy_timeout_s: How long an operation waits for another process's lock before it
            fails with `CacheError` (the run then recomputes the stage).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl_s: float | None = None,
        time_fn: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
    ) -> None:
        _check_ttl("SQLiteCache", ttl_s)
        if not busy_timeout_s >= 0:
            raise DefinitionError(
                "SQLiteCache", "busy_timeout_s", f"is {busy_timeout_s!r}", "use seconds >= 0"
            )
        self.path = os.fspath(path)
        self.ttl_s = ttl_s
        self.time_fn = time_fn
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used by one worker thread at a time
        self._pending: list[_Job[Any]] = []
        self._leading = False

    def __repr__(self) -> str:
        return f"SQLiteCache({self.path!r}, ttl_s={self.ttl_s!r})"

    async def __aenter__(self) -> SQLiteCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the store operations ------------------------------------------------------------------
    async def get(self, key: CacheKey) -> bytes | None:
        """The bytes under `key`, or None when missing or expired."""
        ttl, now = self.ttl_s, self.time_fn

        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT created_at, value FROM pipeline_cache WHERE digest = ?", (key.digest,)
            ).fetchone()
            if row is None:
                return None
            created, value = row
            if not isinstance(value, bytes) or not isinstance(created, float | int):
                raise CacheError(repr(self), key.digest, "corrupt row (wrong column types)")
            if ttl is not None and now() - created > ttl:
                return None
            return value

        return await self._call(op, key.digest)

    async def put(self, key: CacheKey, value: bytes) -> None:
        """Store `value` under `key` in one transaction, replacing any older entry."""
        created = self.time_fn()
        row = (key.digest, key.stage_id, created, bytes(value))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO pipeline_cache VALUES (?, ?, ?, ?)", row)

        await self._call(op, key.digest)

    async def delete(self, key: CacheKey) -> bool:
        """Remove the entry under `key`; True if there was one."""

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM pipeline_cache WHERE digest = ?", (key.digest,))
            return cur.rowcount > 0

        return await self._call(op, key.digest)

    async def invalidate(self, stage_id: str) -> int:
        """Remove every entry of `stage_id`; return how many."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM pipeline_cache WHERE stage_id = ?", (stage_id,)
            ).rowcount

        return await self._call(op, None)

    async def clear(self) -> None:
        """Remove every entry."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM pipeline_cache")

        await self._call(op, None)

    async def count(self, stage_id: str | None = None) -> int:
        """How many live entries there are (of `stage_id`, when given)."""
        oldest = -float("inf") if self.ttl_s is None else self.time_fn() - self.ttl_s

        def op(conn: sqlite3.Connection) -> int:
            sql = "SELECT count(*) FROM pipeline_cache WHERE created_at >= ?"
            args: tuple[Any, ...] = (oldest,)
            if stage_id is not None:
                sql, args = sql + " AND stage_id = ?", (oldest, stage_id)
            return int(conn.execute(sql, args).fetchone()[0])

        return await self._call(op, None)

    async def purge_expired(self) -> int:
        """Delete entries past the TTL (they already read as missing); return how many."""
        if self.ttl_s is None:
            return 0
        oldest = self.time_fn() - self.ttl_s

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM pipeline_cache WHERE created_at < ?", (oldest,)
            ).rowcount

        return await self._call(op, None)

    async def aclose(self) -> None:
        """Close the connection (a later call reopens it); idempotent."""
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """`aclose` for sync code (blocks while an operation finishes)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    # -- one worker-thread trip for every operation waiting ------------------------------------
    async def _call(self, fn: Callable[[sqlite3.Connection], T], key: str | None) -> T:
        job: _Job[T] = _Job(fn, key)
        self._pending.append(job)
        try:
            while not job.done:
                if self._leading:
                    job.wakeup = anyio.Event()
                    await job.wakeup.wait()
                else:
                    await self._lead()
        finally:
            if not job.done:
                with suppress(ValueError):
                    self._pending.remove(job)
        if job.error is not None:
            raise job.error
        return job.value  # type: ignore[return-value]  # done without error: fn returned a T

    async def _lead(self) -> None:
        # The first caller carries everyone's operations: callers arriving while it is in the
        # worker thread ride together on its next trip. Whoever is woken unserved leads next.
        self._leading = True
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await anyio.to_thread.run_sync(self._run_batch, batch)
                except BaseException:
                    # Cancelled before the trip started: the batch did not run. Put it back so
                    # the jobs' own callers (woken below) carry it; dropping it would leave
                    # them waiting for a trip that never comes.
                    self._pending[:0] = [job for job in batch if not job.done]
                    raise
                finally:
                    for job in batch:
                        job.wake()
        finally:
            self._leading = False
            for job in self._pending:
                job.wake()

    def _run_batch(self, batch: list[_Job[Any]]) -> None:
        with self._lock:
            try:
                conn = self._connect()
            except Exception as exc:  # noqa: BLE001  # every waiting job gets the error
                error = CacheError(repr(self), None, f"cannot open: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                for job in batch:
                    job.error, job.done = error, True
                return
            for job in batch:
                try:
                    job.value = job.fn(conn)
                except CacheError as exc:
                    job.error = exc
                except Exception as exc:  # noqa: BLE001  # sqlite3 errors become CacheError
                    job.error = CacheError(repr(self), job.key, f"{type(exc).__name__}: {exc}")
                    job.error.__cause__ = exc
                job.done = True

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        # Switching a new file to WAL and creating the table can report "locked" at once when
        # another process does the same, without waiting for the busy timeout: retry here.
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.002
        while True:
            try:
                self._conn = self._open()
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if not ("locked" in text or "busy" in text) or time.monotonic() >= deadline:
                    raise
                threading.Event().wait(delay)  # a worker thread: waiting here blocks no loop
                delay = min(delay * 2, 0.05)
            else:
                return self._conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            isolation_level=None,  # autocommit: every statement is its own transaction
            check_same_thread=False,  # worker threads take turns under self._lock
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL unavailable")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: crash-safe, not power-safe
            for statement in _SCHEMA:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

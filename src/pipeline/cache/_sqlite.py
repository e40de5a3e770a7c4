"""`SQLiteCache`: a `CacheStore` in one SQLite file, shared safely by threads and processes.

stdlib `sqlite3` runs in anyio worker threads, never on the event loop. Concurrent calls are
gathered into one worker-thread trip (each operation still its own transaction), because the
trip costs far more than the query. A file this process may only read is opened read-only: it
serves hits and refuses writes. The protocol and the in-memory store live in `_store`.
"""

from __future__ import annotations

import logging
import os
import pathlib
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

logger = logging.getLogger("pipeline")

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS pipeline_cache ("
    " digest TEXT PRIMARY KEY, stage_id TEXT NOT NULL,"
    " created_at REAL NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS pipeline_cache_stage ON pipeline_cache (stage_id)",
)

# A read-only file without our table (empty, or never written) reads as an empty store.
_EMPTY_TABLE: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS pipeline_cache ("
    " digest TEXT PRIMARY KEY, stage_id TEXT NOT NULL,"
    " created_at REAL NOT NULL, value BLOB NOT NULL) WITHOUT ROWID"
)

_ASKED: Final = "opened with read_only=True"


def _refuses_writes(exc: sqlite3.Error) -> bool:
    """Whether `exc` says the file, its directory or its -wal/-shm files cannot be written."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc).lower()
    return name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")) or any(
        word in text for word in ("readonly", "read-only", "unable to open")
    )


class _Job(Generic[T]):
    """One store operation waiting for a worker-thread trip."""

    __slots__ = ("done", "error", "fn", "key", "value", "wakeup", "write")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], T], key: str | None, write: str | None
    ) -> None:
        self.fn = fn
        self.key = key
        self.write = write  # what the operation writes ("store the entry"), None for reads
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

    A file this process may only read (permissions, a read-only filesystem, a directory where
    SQLite cannot create the -wal/-shm files) is opened read-only instead of failing: `get` and
    `count` work, and `put`, `delete`, `invalidate`, `clear` and `purge_expired` raise
    `CacheError` saying the store is read-only (during a run that is a "write failed" note in
    `StageRun.cache_errors`, never a failed run). `read_only` and `read_only_reason` tell which
    mode the file was opened in. When not even the WAL index can be created beside the file,
    it is opened immutable: entries still in its -wal file and later writes by other
    processes are not seen until the store is reopened.

    Args:
        path: The database file (created with its table if missing, unless read-only).
        ttl_s: Entries older than this many seconds read as missing (None: never expire).
        time_fn: Wall-clock time in seconds for the TTL (default `time.time`; tests pass a fake).
        busy_timeout_s: How long an operation waits for another process's lock before it
            fails with `CacheError` (the run then recomputes the stage).
        read_only: Open the file read-only even when it could be written: serve hits from a
            shared cache without ever changing it. A missing file then fails with `CacheError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl_s: float | None = None,
        time_fn: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
        read_only: bool = False,
    ) -> None:
        _check_ttl("SQLiteCache", ttl_s)
        if not isinstance(read_only, bool):
            raise DefinitionError(
                "SQLiteCache", "read_only", f"is {read_only!r}", "use True or False"
            )
        if not busy_timeout_s >= 0:
            raise DefinitionError(
                "SQLiteCache", "busy_timeout_s", f"is {busy_timeout_s!r}", "use seconds >= 0"
            )
        self.path = os.fspath(path)
        self.ttl_s = ttl_s
        self.time_fn = time_fn
        self.busy_timeout_s = busy_timeout_s
        self._asked_read_only = read_only
        self._read_only_reason: str | None = _ASKED if read_only else None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used by one worker thread at a time
        self._pending: list[_Job[Any]] = []
        self._leading = False

    def __repr__(self) -> str:
        extra = ", read_only=True" if self._asked_read_only else ""
        return f"SQLiteCache({self.path!r}, ttl_s={self.ttl_s!r}{extra})"

    @property
    def read_only(self) -> bool:
        """True when this store only reads: asked for, or the file cannot be written.

        The file is opened by the first operation, so a file found read-only reports True
        from then on (`await store.count()` opens it); `read_only_reason` says why.
        """
        return self._read_only_reason is not None

    @property
    def read_only_reason(self) -> str | None:
        """Why the store is read-only (the refusal SQLite or the OS gave), or None."""
        return self._read_only_reason

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

        await self._call(op, key.digest, write="store the entry")

    async def delete(self, key: CacheKey) -> bool:
        """Remove the entry under `key`; True if there was one."""

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM pipeline_cache WHERE digest = ?", (key.digest,))
            return cur.rowcount > 0

        return await self._call(op, key.digest, write="delete the entry")

    async def invalidate(self, stage_id: str) -> int:
        """Remove every entry of `stage_id`; return how many."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM pipeline_cache WHERE stage_id = ?", (stage_id,)
            ).rowcount

        return await self._call(op, None, write=f"invalidate stage {stage_id!r}")

    async def clear(self) -> None:
        """Remove every entry."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM pipeline_cache")

        await self._call(op, None, write="clear the store")

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

        return await self._call(op, None, write="purge expired entries")

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
    async def _call(
        self, fn: Callable[[sqlite3.Connection], T], key: str | None, *, write: str | None = None
    ) -> T:
        job: _Job[T] = _Job(fn, key, write)
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
                    if job.write is not None and self._read_only_reason is not None:
                        job.error = self._refusal(job)
                    else:
                        job.value = job.fn(conn)
                except CacheError as exc:
                    job.error = exc
                except sqlite3.Error as exc:
                    if job.write is not None and "readonly" in str(exc).lower():
                        # SQLite opened the file read-only on its own (it does when the OS
                        # refuses writing): from now on writes are refused up front.
                        self._found_read_only(f"SQLite refused a write: {exc}")
                        job.error = self._refusal(job)
                    else:
                        job.error = CacheError(repr(self), job.key, f"{type(exc).__name__}: {exc}")
                    job.error.__cause__ = exc
                except Exception as exc:  # noqa: BLE001  # every other error becomes CacheError
                    job.error = CacheError(repr(self), job.key, f"{type(exc).__name__}: {exc}")
                    job.error.__cause__ = exc
                job.done = True

    def _refusal(self, job: _Job[Any]) -> CacheError:
        if self._asked_read_only:
            fix = "open it without read_only=True to write"
        else:
            fix = (
                "give this process write access to the file and its directory (WAL keeps "
                "-wal and -shm files beside it), or point the cache at a writable path"
            )
        return CacheError(
            repr(self),
            job.key,
            f"cannot {job.write}: the store is read-only ({self._read_only_reason}); "
            f"hits are still served; {fix}",
        )

    def _found_read_only(self, reason: str) -> None:
        self._read_only_reason = reason
        logger.warning(
            "cache: %r is read-only (%s); it serves hits and stores nothing", self, reason
        )

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        # Switching a new file to WAL and creating the table can report "locked" at once when
        # another process does the same, without waiting for the busy timeout: retry here.
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.002
        while True:
            try:
                self._conn = self._open_any()
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if not ("locked" in text or "busy" in text) or time.monotonic() >= deadline:
                    raise
                threading.Event().wait(delay)  # a worker thread: waiting here blocks no loop
                delay = min(delay * 2, 0.05)
            else:
                return self._conn

    def _open_any(self) -> sqlite3.Connection:
        if self._asked_read_only:
            return self._open_read_only(None)
        if os.access(self.path, os.F_OK) and not os.access(self.path, os.W_OK):
            return self._open_read_only(
                "the file is not writable by this process (permissions or a read-only filesystem)"
            )
        try:
            conn = self._open()
        except sqlite3.Error as exc:
            if not _refuses_writes(exc):
                raise
            return self._open_read_only(f"opening it for writing failed: {exc}")
        self._read_only_reason = None
        return conn

    def _open_read_only(self, reason: str | None) -> sqlite3.Connection:
        """Open the file read-only; `reason` is why (None: the caller asked for it)."""
        uri = pathlib.Path(os.path.abspath(self.path)).as_uri()
        try:
            conn = self._open_uri(f"{uri}?mode=ro")
            how = ""
        except sqlite3.Error as exc:
            if not _refuses_writes(exc):
                raise
            # A WAL file needs its -shm index, which SQLite creates beside the file even to
            # read; where it cannot, only an immutable open (no WAL, no locks) can read it.
            conn = self._open_uri(f"{uri}?mode=ro&immutable=1")
            how = (
                "; opened immutable, as SQLite cannot create the -shm file beside it: "
                "other processes' writes are not seen"
            )
        if reason is None:
            self._read_only_reason = _ASKED + how
        else:
            self._found_read_only(reason + how)
        return conn

    def _open_uri(self, uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=self.busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            # Reading the schema reads the file (and the WAL index): refusals surface here.
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pipeline_cache'"
            ).fetchone()
            if found is None:
                conn.execute(_EMPTY_TABLE)
        except BaseException:
            conn.close()
            raise
        return conn

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

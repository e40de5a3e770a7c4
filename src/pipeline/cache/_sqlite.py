"""`SQLiteCache`: a `CacheStore` in one SQLite file, shared safely by threads and processes.

stdlib `sqlite3` runs in anyio worker threads. Concurrent calls are gathered into one
worker-thread trip (`_batch`; each operation still its own transaction), because the trip
costs far more than the query. Lookups are the exception: once the file is open, `get` first
asks a second, query-only connection right on the event loop (`_sqlite_reader`), which costs a
few microseconds instead of a thread trip and never waits: what could block goes the thread
way. A file this process may only read is opened read-only: it serves hits and refuses writes.
Large values can live outside the file as artifacts (`_artifacts`). The protocol and the
in-memory store live in `_store`.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import anyio
import anyio.to_thread

from pipeline.cache._artifacts import DEFAULT_THRESHOLD, NUL, REF_PREFIX, Artifacts, referenced_sha
from pipeline.cache._batch import Job, TripBatcher
from pipeline.cache._sqlite_reader import UNSERVED, InlineReader
from pipeline.cache._store import CacheError, _check_ttl
from pipeline.errors import DefinitionError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from pipeline.cache._artifacts import ArtifactGcReport
    from pipeline.cache._key import CacheKey

T = TypeVar("T")

logger = logging.getLogger("pipeline")

# A rowid table: its digest index holds only keys, so a lookup never reads a large neighbour's
# value (files made before this by a WITHOUT ROWID table still work; see `_sqlite_reader`).
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS pipeline_cache ("
    " digest TEXT PRIMARY KEY, stage_id TEXT NOT NULL,"
    " created_at REAL NOT NULL, value BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pipeline_cache_stage ON pipeline_cache (stage_id)",
)

# A read-only file without our table (empty, or never written) reads as an empty store.
_EMPTY_TABLE: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS pipeline_cache ("
    " digest TEXT PRIMARY KEY, stage_id TEXT NOT NULL,"
    " created_at REAL NOT NULL, value BLOB NOT NULL)"
)

_ASKED: Final = "opened with read_only=True"


def _sha_of(stored: bytes) -> str:
    return referenced_sha(stored) or ""


def _refuses_writes(exc: sqlite3.Error) -> bool:
    """Whether `exc` says the file, its directory or its -wal/-shm files cannot be written."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc).lower()
    return name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")) or any(
        word in text for word in ("readonly", "read-only", "unable to open")
    )


class _Job(Job[T]):
    """One SQLite operation: `fn` runs on the connection in the worker thread."""

    __slots__ = ("fn", "write")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], T], key: str | None, write: str | None
    ) -> None:
        super().__init__(key)
        self.fn = fn
        self.write = write  # what the operation writes ("store the entry"), None for reads


@final
class SQLiteCache(TripBatcher):
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
        artifacts: Where values longer than `artifact_threshold_bytes` go, as content-addressed
            files the entry refers to: a local directory (created) or an fsspec URL (extra
            `fsspec`). None keeps every value in the file.
        artifact_threshold_bytes: The size (of the serialised bytes) above which a value
            becomes an artifact.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl_s: float | None = None,
        time_fn: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
        read_only: bool = False,
        artifacts: str | os.PathLike[str] | None = None,
        artifact_threshold_bytes: int = DEFAULT_THRESHOLD,
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
        self._reader = InlineReader()  # serves lookups on the event loop once the file is open
        self._reader_uri: str | None = None  # how the reader opens (None: the plain path)
        self._artifacts = Artifacts(repr(self), artifacts, artifact_threshold_bytes)
        self._pending = []
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
        found = self._reader.get(key.digest, self.ttl_s, self.time_fn)
        if found is UNSERVED:
            found = await self._get_in_thread(key)
        if isinstance(found, bytes) and found.startswith(NUL):
            return await self._artifacts.unpack(found, key.digest)
        return found  # type: ignore[return-value]  # bytes or None past the sentinel

    async def _get_in_thread(self, key: CacheKey) -> bytes | None:
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
        """Store `value` under `key` in one transaction, replacing any older entry.

        A value over the artifact threshold is written (and committed) as an artifact first;
        the entry then holds the reference.
        """
        value = bytes(value)
        if self._artifacts.takes(value):  # a read-only store refuses before the artifact
            await self._call(lambda _: None, key.digest, write="store the entry")
        stored = await self._artifacts.pack(value, key.digest)
        created = self.time_fn()
        row = (key.digest, key.stage_id, created, stored)

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

    async def gc_artifacts(self, *, grace_s: float = 3600.0) -> ArtifactGcReport:
        """Remove artifacts no entry refers to, and temp files of writes that never finished.

        Only files older than `grace_s` seconds go (a write in progress commits its artifact
        before its entry). Use one artifact location per store: a location shared by several
        stores loses the artifacts only the others refer to.

        Raises:
            CacheError: The store has no `artifacts=`, its file cannot be read, or the file has
                no cache table (a wrong or empty file: nothing is removed).
        """

        def op(conn: sqlite3.Connection) -> list[bytes]:
            # A read-only open of a file without our table reads through an empty TEMP one;
            # taken as "no references", that would remove every artifact. Only the file's
            # own table counts.
            found = conn.execute(
                "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'pipeline_cache'"
            ).fetchone()
            if found is None:
                raise CacheError(
                    repr(self),
                    None,
                    "the file has no pipeline_cache table (not a file SQLiteCache wrote, or an "
                    "empty one), so which artifacts are referenced is unknown and nothing was "
                    "removed; pass the cache file the artifacts were written with",
                )
            rows = conn.execute(
                "SELECT value FROM main.pipeline_cache"
                " WHERE length(value) < 256 AND substr(value, 1, ?) = ?",
                (len(REF_PREFIX), REF_PREFIX),
            ).fetchall()
            return [bytes(row[0]) for row in rows]

        refs = {_sha_of(v) for v in await self._call(op, None)}
        return await anyio.to_thread.run_sync(self._artifacts.gc, refs, grace_s)

    async def aclose(self) -> None:
        """Close the connection (a later call reopens it); idempotent."""
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """`aclose` for sync code (blocks while an operation finishes)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            self._reader.close()

    # -- one worker-thread trip for every operation waiting ------------------------------------
    async def _call(
        self, fn: Callable[[sqlite3.Connection], T], key: str | None, *, write: str | None = None
    ) -> T:
        return await self._submit(_Job(fn, key, write))

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
                self._reader.open(self.path, self._reader_uri, self._open_uri)
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
        self._reader_uri = None
        return conn

    def _open_read_only(self, reason: str | None) -> sqlite3.Connection:
        """Open the file read-only; `reason` is why (None: the caller asked for it)."""
        uri = pathlib.Path(os.path.abspath(self.path)).as_uri()
        try:
            self._reader_uri = f"{uri}?mode=ro"
            conn = self._open_uri(self._reader_uri)
            how = ""
        except sqlite3.Error as exc:
            if not _refuses_writes(exc):
                raise
            # A WAL file needs its -shm index, which SQLite creates beside the file even to
            # read; where it cannot, only an immutable open (no WAL, no locks) can read it.
            self._reader_uri = f"{uri}?mode=ro&immutable=1"
            conn = self._open_uri(self._reader_uri)
            how = (
                "; opened immutable, as SQLite cannot create the -shm file beside it: "
                "other processes' writes are not seen"
            )
        if reason is None:
            self._read_only_reason = _ASKED + how
        else:
            self._found_read_only(reason + how)
        return conn

    def _open_uri(self, uri: str, busy_timeout_s: float | None = None) -> sqlite3.Connection:
        wait = self.busy_timeout_s if busy_timeout_s is None else busy_timeout_s
        conn = sqlite3.connect(
            uri, uri=True, timeout=wait, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
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

"""The query-only connection that serves `SQLiteCache` lookups right on the event loop.

A worker-thread trip costs ~100 us, a primary-key lookup a few. Once the store has opened its
file (in a worker thread), it opens this second connection beside it, with SQLite's busy wait
off: a lookup that would have to wait for a lock gets "busy" at once instead and takes the
worker-thread way, which waits. So do values over `INLINE_MAX_BYTES` and rows that look wrong
(the worker-thread way reports them). WAL readers never wait for writers, so in practice every
lookup of an open file is served here. Each lookup is its own read transaction: it sees what
other connections and processes committed before it.

Only files whose table has rowids get a reader. Files written by earlier versions keep their
entries in a WITHOUT ROWID table, where finding a key compares it with whole records, large
values included (~1 ms per MB, measured); their lookups stay in worker threads.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

INLINE_MAX_BYTES: Final = 64 * 1024
"""Values up to this size are read on the event loop; larger ones in a worker thread."""

_GET: Final = (
    "SELECT created_at, CASE WHEN length(value) <= ? THEN value END"
    " FROM pipeline_cache WHERE digest = ?"
)

UNSERVED: Final = object()
"""What `InlineReader.get` returns when it cannot answer without blocking."""


class InlineReader:
    """One query-only connection, tried without waiting from the event loop's thread."""

    __slots__ = ("_conn", "_lock")

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # only ever tried, never waited for, on the loop

    def open(self, path: str, uri: str | None, open_uri: Callable[..., sqlite3.Connection]) -> None:
        """Open beside the store's connection (in its worker thread); failing is harmless.

        Args:
            path: The database file, opened plainly (query-only) when `uri` is None.
            uri: The read-only URI the store itself opened, if it did.
            open_uri: The store's URI opener, called as `open_uri(uri, busy_timeout_s=0)`.
        """
        if self._conn is not None:
            return
        try:
            if uri is None:
                conn = sqlite3.connect(
                    path, timeout=0, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA query_only = ON")
            else:
                conn = open_uri(uri, busy_timeout_s=0)
            found = conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'pipeline_cache'"
            ).fetchall()
        except sqlite3.Error:
            return  # lookups keep taking the worker-thread way
        if found and "WITHOUT ROWID" in str(found[0][0]).upper():
            conn.close()  # an older file: a lookup could read large values on the loop
            return
        self._conn = conn

    def get(self, digest: str, ttl_s: float | None, time_fn: Callable[[], float]) -> object:
        """The live value under `digest`, None when missing or expired, or `UNSERVED`."""
        conn = self._conn
        if conn is None or not self._lock.acquire(blocking=False):
            return UNSERVED
        try:
            rows = conn.execute(_GET, (INLINE_MAX_BYTES, digest)).fetchall()
        except sqlite3.Error:
            return UNSERVED
        finally:
            self._lock.release()
        if not rows:
            return None
        created, value = rows[0]
        if not isinstance(value, bytes) or not isinstance(created, float | int):
            return UNSERVED  # large, or a corrupt row the worker-thread way reports
        if ttl_s is not None and time_fn() - created > ttl_s:
            return None
        return value

    def close(self) -> None:
        """Close the connection (waits for a lookup in progress); idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

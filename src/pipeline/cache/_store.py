"""The `CacheStore` protocol every store implements, and the in-memory store.

Stores keep opaque bytes under a `CacheKey`; serialization and keys live elsewhere
(`pipeline.cache._serialize`, `pipeline.cache._key`), the SQLite store in `_sqlite`, and
`CacheError` in `pipeline.errors` (re-exported here and by `pipeline.cache`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol, final

from pipeline.errors import (
    CacheError as CacheError,  # defined in errors; importable here too
    DefinitionError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.cache._key import CacheKey


class CacheStore(Protocol):
    """Where `PipelineExecutor(cache=...)` keeps successful outputs, as bytes.

    `get` returns None for a missing or expired entry. `put` replaces atomically: a reader
    sees the old entry, the new one or none, never part of one. Expiry (TTL) is the store's
    business. Implementations raise `CacheError` (or any exception: the executor treats every
    store error as a miss and records it).
    """

    async def get(self, key: CacheKey) -> bytes | None:
        """The bytes stored under `key`, or None."""
        ...

    async def put(self, key: CacheKey, value: bytes) -> None:
        """Store `value` under `key`, replacing any older entry."""
        ...

    async def delete(self, key: CacheKey) -> bool:
        """Remove the entry under `key`; True if there was one."""
        ...

    async def invalidate(self, stage_id: str) -> int:
        """Remove every entry of stage `stage_id` (stage- and item-level); return how many."""
        ...

    async def clear(self) -> None:
        """Remove every entry."""
        ...

    async def count(self, stage_id: str | None = None) -> int:
        """How many live entries there are (of `stage_id`, when given)."""
        ...

    async def aclose(self) -> None:
        """Release resources; idempotent."""
        ...


def _check_ttl(owner: str, ttl_s: float | None) -> None:
    if ttl_s is not None and not ttl_s > 0:
        raise DefinitionError(owner, "ttl_s", f"is {ttl_s!r}", "use a positive number of seconds")


@final
class MemoryCache:
    """A `CacheStore` in a dict: fast, per process, gone when the process ends.

    Args:
        ttl_s: Entries older than this many seconds read as missing (None: never expire).
        time_fn: Wall-clock time in seconds for the TTL (default `time.time`; tests pass a fake).
    """

    def __init__(
        self, *, ttl_s: float | None = None, time_fn: Callable[[], float] = time.time
    ) -> None:
        _check_ttl("MemoryCache", ttl_s)
        self.ttl_s = ttl_s
        self.time_fn = time_fn
        self._entries: dict[str, tuple[str, float, bytes]] = {}

    def __repr__(self) -> str:
        return f"MemoryCache(entries={len(self._entries)}, ttl_s={self.ttl_s!r})"

    def _live(self, created: float) -> bool:
        return self.ttl_s is None or self.time_fn() - created <= self.ttl_s

    async def get(self, key: CacheKey) -> bytes | None:
        """The bytes under `key`, or None when missing or expired."""
        entry = self._entries.get(key.digest)
        if entry is None:
            return None
        if not self._live(entry[1]):
            del self._entries[key.digest]
            return None
        return entry[2]

    async def put(self, key: CacheKey, value: bytes) -> None:
        """Store `value` under `key` (one dict assignment: atomic)."""
        self._entries[key.digest] = (key.stage_id, self.time_fn(), bytes(value))

    async def delete(self, key: CacheKey) -> bool:
        """Remove the entry under `key`; True if there was one."""
        return self._entries.pop(key.digest, None) is not None

    async def invalidate(self, stage_id: str) -> int:
        """Remove every entry of `stage_id`; return how many."""
        doomed = [d for d, (sid, _, _) in self._entries.items() if sid == stage_id]
        for digest in doomed:
            del self._entries[digest]
        return len(doomed)

    async def clear(self) -> None:
        """Remove every entry."""
        self._entries.clear()

    async def count(self, stage_id: str | None = None) -> int:
        """How many live entries there are (of `stage_id`, when given)."""
        return sum(
            1
            for sid, created, _ in self._entries.values()
            if (stage_id is None or sid == stage_id) and self._live(created)
        )

    async def aclose(self) -> None:
        """Nothing to release."""

"""Garbage collection of a store's artifacts, in a form a command line can call.

`python -m pipeline cache gc STORE --artifacts LOCATION` maps onto `run_cache_gc`: STORE is a
SQLite file or a `redis://` URL; the store is opened only to read which artifacts its entries
refer to (a SQLite file read-only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import anyio

from pipeline.cache._redis import RedisCache
from pipeline.cache._sqlite import SQLiteCache

if TYPE_CHECKING:
    import os

    from pipeline.cache._artifacts import ArtifactGcReport

REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
DEFAULT_GRACE_S: Final = 3600.0


async def gc_store_artifacts(
    store: str | os.PathLike[str],
    *,
    artifacts: str | os.PathLike[str],
    namespace: str = "pipeline",
    grace_s: float = DEFAULT_GRACE_S,
) -> ArtifactGcReport:
    """Remove the artifacts under `artifacts` that no entry of `store` refers to.

    Args:
        store: A SQLite cache file, or a Redis URL (`redis://`, `rediss://`, `unix://`).
        artifacts: The artifact location the store was written with (directory or fsspec URL).
        namespace: The Redis namespace (ignored for SQLite).
        grace_s: Keep files younger than this many seconds (writes may be in progress).

    Raises:
        CacheError: The store cannot be read (a missing SQLite file, an unreachable server).
    """
    spec = str(store)
    if spec.startswith(REDIS_SCHEMES):
        async with RedisCache(spec, namespace=namespace, artifacts=artifacts) as redis:
            return await redis.gc_artifacts(grace_s=grace_s)
    async with SQLiteCache(spec, read_only=True, artifacts=artifacts) as sqlite:
        return await sqlite.gc_artifacts(grace_s=grace_s)


def run_cache_gc(
    store: str | os.PathLike[str],
    *,
    artifacts: str | os.PathLike[str],
    namespace: str = "pipeline",
    grace_s: float = DEFAULT_GRACE_S,
) -> ArtifactGcReport:
    """`gc_store_artifacts` for sync callers such as the command line (runs its own loop)."""
    return anyio.run(
        lambda: gc_store_artifacts(store, artifacts=artifacts, namespace=namespace, grace_s=grace_s)
    )


def describe_gc(report: ArtifactGcReport) -> str:
    """One line for a person: what was removed, what was kept, how much space came back."""
    return (
        f"removed {len(report.removed)} unreferenced artifact(s) and "
        f"{len(report.removed_temp)} stale temp file(s), freed {report.freed_bytes} bytes; "
        f"kept {report.kept}"
    )

"""Fixtures shared by the cache tests: a fake wall clock and every store implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest

from pipeline.cache import CacheStore, MemoryCache, SQLiteCache

if TYPE_CHECKING:
    from pathlib import Path


class WallClock:
    """A settable stand-in for `time.time`, so TTL tests never wait."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[..., CacheStore]


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds a fresh store of each kind; keyword arguments go to its constructor."""
    if request.param == "memory":
        return MemoryCache
    counter = iter(range(1000))

    def sqlite(**kwargs: object) -> CacheStore:
        return SQLiteCache(tmp_path / f"cache{next(counter)}.db", **kwargs)  # type: ignore[arg-type]  # test passes the same kwargs to both

    return sqlite


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[CacheStore]:
    built = make_store()
    yield built
    await built.aclose()

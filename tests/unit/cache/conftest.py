"""Fixtures shared by the cache tests: a fake wall clock, a Redis server, every store kind."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from pipeline.cache import CacheStore, MemoryCache, RedisCache, SQLiteCache
from tests.unit.cache._redis_server import RedisServer, redis_server_binary

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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One `redis-server` for the session (tests isolate themselves by namespace)."""
    server = RedisServer(redis_server_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A `redis-server` of this test alone, which it may stop and restart."""
    server = RedisServer(redis_server_binary(), tmp_path)
    server.start()
    yield server
    server.stop()


def fresh_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "sqlite", "redis", "sqlite-artifacts", "redis-artifacts"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds a fresh store of each kind; keyword arguments go to its constructor.

    The `-artifacts` kinds keep every non-empty value as an artifact (threshold 0), so the
    whole protocol runs through the artifact store too.
    """
    if request.param == "memory":
        return MemoryCache
    extra: dict[str, object] = {}
    if request.param.endswith("-artifacts"):
        extra = {"artifacts": tmp_path / "artifacts", "artifact_threshold_bytes": 0}
    if request.param.startswith("redis"):
        server: RedisServer = request.getfixturevalue("redis_server")

        def redis(**kwargs: object) -> CacheStore:
            return RedisCache(server.url, namespace=fresh_namespace(), **extra, **kwargs)  # type: ignore[arg-type]  # test passes the same kwargs to every kind

        return redis
    counter = iter(range(1000))

    def sqlite(**kwargs: object) -> CacheStore:
        return SQLiteCache(tmp_path / f"cache{next(counter)}.db", **extra, **kwargs)  # type: ignore[arg-type]  # test passes the same kwargs to every kind

    return sqlite


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[CacheStore]:
    built = make_store()
    yield built
    await built.aclose()

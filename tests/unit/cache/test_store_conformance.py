"""One conformance suite every `CacheStore` passes (memory, SQLite and a real Redis server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import anyio
import pytest

from pipeline.cache import CacheKey, CacheStore, fingerprint, make_key
from pipeline.errors import DefinitionError

StoreFactory = Callable[..., CacheStore]


class WallClock(Protocol):
    """The `wall` fixture: a settable `time_fn`."""

    now: float

    def __call__(self) -> float: ...


def key(stage: str, value: object = 0, *, item: bool = False) -> CacheKey:
    return make_key(stage, fingerprint(value), item=item)


async def test_missing_key_reads_none(store: CacheStore) -> None:
    assert await store.get(key("a")) is None
    assert await store.count() == 0


async def test_put_then_get_round_trips_bytes(store: CacheStore) -> None:
    for i, payload in enumerate([b"", b"\x00\xff binary", b"x" * 100_000]):
        await store.put(key("a", i), payload)
        assert await store.get(key("a", i)) == payload
    assert await store.count() == 3


async def test_put_replaces(store: CacheStore) -> None:
    await store.put(key("a"), b"old")
    await store.put(key("a"), b"new")
    assert await store.get(key("a")) == b"new"
    assert await store.count() == 1


async def test_delete(store: CacheStore) -> None:
    await store.put(key("a"), b"v")
    assert await store.delete(key("a")) is True
    assert await store.delete(key("a")) is False
    assert await store.get(key("a")) is None


async def test_invalidate_drops_only_that_stage(store: CacheStore) -> None:
    await store.put(key("a", 1), b"1")
    await store.put(key("a", 2, item=True), b"2")
    await store.put(key("b", 1), b"3")
    assert await store.invalidate("a") == 2
    assert await store.invalidate("a") == 0
    assert await store.get(key("a", 1)) is None
    assert await store.get(key("b", 1)) == b"3"
    assert await store.count("a") == 0
    assert await store.count("b") == 1


async def test_clear(store: CacheStore) -> None:
    for i in range(5):
        await store.put(key(f"s{i}"), b"v")
    await store.clear()
    assert await store.count() == 0
    assert await store.get(key("s0")) is None


async def test_ttl_expires_entries(make_store: StoreFactory, wall: WallClock) -> None:
    store = make_store(ttl_s=60, time_fn=wall)
    await store.put(key("a"), b"v")
    wall.now += 60
    assert await store.get(key("a")) == b"v"
    assert await store.count() == 1
    wall.now += 1
    assert await store.get(key("a")) is None
    assert await store.count() == 0
    await store.put(key("a"), b"fresh")
    assert await store.get(key("a")) == b"fresh"
    await store.aclose()


@pytest.mark.parametrize("ttl", [0, -1])
def test_ttl_must_be_positive(make_store: StoreFactory, ttl: float) -> None:
    with pytest.raises(DefinitionError, match="ttl_s"):
        make_store(ttl_s=ttl)


async def test_concurrent_operations_all_land(store: CacheStore) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(store.put, key("a", i), str(i).encode())
    results: dict[int, bytes | None] = {}

    async def read(i: int) -> None:
        results[i] = await store.get(key("a", i))

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(read, i)
    assert results == {i: str(i).encode() for i in range(50)}
    assert await store.count("a") == 50


async def test_aclose_is_idempotent(store: CacheStore) -> None:
    await store.put(key("a"), b"v")
    await store.aclose()
    await store.aclose()


def test_works_on_trio(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.put(key("a"), b"v")
        assert await store.get(key("a")) == b"v"
        await store.aclose()

    anyio.run(scenario, backend="trio")

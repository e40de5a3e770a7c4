"""What only the Redis store does: namespaces, several processes, a server that goes away.

The conformance suite (`test_store_conformance.py`) covers the protocol; these tests use a real
`redis-server` (fixtures in conftest.py) and run pipelines on both anyio backends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import redis

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)
from pipeline.cache import CacheError, RedisCache, fingerprint, make_key
from pipeline.errors import DefinitionError
from tests.unit._support import BACKENDS
from tests.unit.cache.conftest import fresh_namespace

if TYPE_CHECKING:
    from tests.unit.cache._redis_server import RedisServer

WORKER = str(Path(__file__).with_name("crash_worker.py"))


def key(stage: str, value: object = 0) -> Any:
    return make_key(stage, fingerprint(value))


def run_worker(url: str, namespace: str, log: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PIPELINE_TEST_NAMESPACE": namespace}
    done = subprocess.run(
        [sys.executable, WORKER, url, str(log), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=env,
    )
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def log_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("backend", BACKENDS)
def test_namespaces_isolate_clear_count_and_invalidate(
    redis_server: RedisServer, backend: str
) -> None:
    async def scenario() -> None:
        ns_a, ns_b = fresh_namespace(), fresh_namespace()
        async with (
            RedisCache(redis_server.url, namespace=ns_a) as a,
            RedisCache(redis_server.url, namespace=ns_b) as b,
        ):
            assert await a.ping()
            await a.put(key("s"), b"from a")
            await b.put(key("s"), b"from b")
            await b.put(key("t"), b"other")
            assert await a.get(key("s")) == b"from a"
            assert (await a.count(), await b.count()) == (1, 2)
            assert await a.invalidate("t") == 0
            await a.clear()
            assert await a.count() == 0
            assert await b.get(key("s")) == b"from b"
            assert await b.count() == 2

    anyio.run(scenario, backend=backend)


def test_clear_leaves_keys_that_are_not_its_own(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    namespace = fresh_namespace()
    client.set(f"{namespace}:e:not-ours", b"keep")  # looks like ours, is not in our index
    client.set("unrelated", b"keep")

    async def scenario() -> None:
        async with RedisCache(redis_server.url, namespace=namespace) as store:
            await store.put(key("s"), b"v")
            await store.clear()
            assert await store.count() == 0

    anyio.run(scenario)
    assert client.get(f"{namespace}:e:not-ours") == b"keep"
    assert client.get("unrelated") == b"keep"
    # what stays of ours is the marker that tells gc_artifacts an emptied namespace from a typo
    left = {f"{namespace}:e:not-ours".encode(), f"{namespace}:written".encode()}
    assert set(client.keys(f"{namespace}:*")) == left
    client.close()


def test_the_default_namespace_is_pipeline(redis_server: RedisServer) -> None:
    store = RedisCache(redis_server.url)
    assert store.namespace == "pipeline"
    assert "namespace='pipeline'" in repr(store)


@pytest.mark.parametrize("namespace", ["", "  padded ", 3])
def test_a_bad_namespace_is_a_definition_error(namespace: Any) -> None:
    with pytest.raises(DefinitionError, match="namespace"):
        RedisCache("redis://127.0.0.1:1/0", namespace=namespace)


@pytest.mark.parametrize("url", ["localhost:6379", "http://localhost:6379", 6379])
def test_a_bad_url_is_a_definition_error(url: Any) -> None:
    with pytest.raises(DefinitionError, match="url"):
        RedisCache(url)


def test_the_password_stays_out_of_repr() -> None:
    store = RedisCache("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(store)


def test_an_unreachable_server_raises_cache_error() -> None:
    async def scenario() -> None:
        from tests.unit.cache._redis_server import free_port

        store = RedisCache(f"redis://127.0.0.1:{free_port()}/0", timeout_s=2)
        with pytest.raises(CacheError, match="ConnectionError"):
            await store.get(key("a"))
        await store.aclose()

    anyio.run(scenario)


def test_two_processes_one_after_the_other_compute_nothing_twice(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    namespace = fresh_namespace()
    first = run_worker(redis_server.url, namespace, tmp_path / "1.log", "run")
    assert first["success"], first
    assert first["stats"]["writes"] == 11
    assert len(log_lines(tmp_path / "1.log")) == 11
    second = run_worker(redis_server.url, namespace, tmp_path / "2.log", "run")
    assert second["success"], second
    assert second["stats"]["hits"] == 11
    assert second["stats"]["errors"] == 0
    assert log_lines(tmp_path / "2.log") == []  # the second process computed nothing


def test_two_processes_at_once_lose_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    namespace = fresh_namespace()
    env = {**os.environ, "PIPELINE_TEST_NAMESPACE": namespace}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                redis_server.url,
                str(tmp_path / f"p{n}.log"),
                "fan",
                str(a),
                str(b),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n, (a, b) in enumerate([(0, 60), (30, 90)])
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "waiting"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.close()
        for child in children:
            assert child.stdout is not None
            summary = json.loads(child.stdout.read().strip().splitlines()[-1])
            assert child.wait(timeout=30) == 0
            assert summary["success"], summary
            assert summary["stats"]["errors"] == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            if child.stdout is not None:
                child.stdout.close()

    async def count() -> int:
        async with RedisCache(redis_server.url, namespace=namespace) as store:
            return await store.count("C")

    assert anyio.run(count) == 90  # no entry lost
    again = run_worker(redis_server.url, namespace, tmp_path / "again.log", "fan", "0", "90")
    assert again["stats"]["hits"] == 90
    assert log_lines(tmp_path / "again.log") == []


class Stops:
    """A stage that stops the Redis server (once) and passes its input on."""

    name = "stops"

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.calls = 0

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[int]:
        self.calls += 1
        if self.calls == 1:
            await anyio.to_thread.run_sync(self.server.stop)
        return StageResult.success(int(input or 0) + 1)


class Adds:
    name = "adds"

    def __init__(self) -> None:
        self.calls = 0

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[int]:
        self.calls += 1
        return StageResult.success(int(input or 0) + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_outage_mid_run_recomputes_and_records_it(
    own_redis_server: RedisServer, backend: str
) -> None:
    first, stopper, last = Adds(), Stops(own_redis_server), Adds()
    pipeline = PipelineDefinition(
        "outage",
        [
            StageDefinition("first", first),
            StageDefinition("stopper", stopper, inputs=["first"]),
            StageDefinition("last", last, inputs=["stopper"]),
        ],
    )

    async def scenario() -> None:
        async with RedisCache(own_redis_server.url, timeout_s=2) as store:
            with anyio.fail_after(30):
                result = await PipelineExecutor(cache=store).execute(pipeline)
            assert result.success, result.error
            assert result.get_output("last") == 3
            stats = result.cache_stats
            assert stats is not None
            assert stats.writes == 1  # only "first", before the server went away
            assert stats.errors == 3  # stopper's write, last's lookup and last's write
            runs = result.stage_runs
            assert any("write failed" in e for e in runs["stopper"].cache_errors)
            assert any("read failed, recomputing" in e for e in runs["last"].cache_errors)
            assert runs["last"].status.value == "succeeded"

            own_redis_server.start()  # a restarted server (empty: no persistence)
            again = await PipelineExecutor(cache=store).execute(pipeline)
            assert again.success
            assert again.cache_stats is not None
            assert again.cache_stats.errors == 0  # the store reconnected by itself
            assert again.cache_stats.writes == 3
            assert (first.calls, stopper.calls, last.calls) == (2, 2, 2)

    anyio.run(scenario, backend=backend)


def test_a_restart_between_operations_costs_no_error(own_redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with RedisCache(own_redis_server.url) as store:
            await store.put(key("a"), b"v")
            own_redis_server.stop()
            own_redis_server.start()
            assert await store.get(key("a")) is None  # gone with the server, no CacheError
            await store.put(key("a"), b"w")
            assert await store.get(key("a")) == b"w"

    anyio.run(scenario)


def test_purge_expired_drops_old_entries_and_tidies_the_index(redis_server: RedisServer) -> None:
    now = [1_000.0]
    namespace = fresh_namespace()

    async def scenario() -> None:
        async with RedisCache(
            redis_server.url, namespace=namespace, ttl_s=60, time_fn=lambda: now[0]
        ) as store:
            await store.put(key("old"), b"o")
            now[0] += 30
            await store.put(key("new"), b"n")
            now[0] += 31
            assert await store.purge_expired() == 1
            assert await store.get(key("new")) == b"n"
            assert await store.count() == 1

    anyio.run(scenario)
    client = redis.Redis.from_url(redis_server.url)
    assert client.smembers(f"{namespace}:stages") == {b"new"}
    assert not client.exists(f"{namespace}:s:old")
    client.close()


def test_a_missing_server_binary_skips_or_fails_as_ci_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    from tests.unit.cache import _redis_server

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(_redis_server, "FALLBACKS", ())
    monkeypatch.delenv("PIPELINE_REQUIRE_REDIS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        _redis_server.redis_server_binary()
    monkeypatch.setenv("PIPELINE_REQUIRE_REDIS", "1")
    with pytest.raises(pytest.fail.Exception, match="PIPELINE_REQUIRE_REDIS=1"):
        _redis_server.redis_server_binary()


def test_without_the_redis_library_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'wavepipe\[redis\]'"):
        RedisCache("redis://127.0.0.1:6379/0")


async def test_a_write_queued_behind_a_cancelled_leader_still_lands(
    redis_server: RedisServer,
) -> None:
    """A shielded write (a fan-out item's) queued behind a cancelled caller's trip is not lost."""
    import threading

    store = RedisCache(redis_server.url, namespace=fresh_namespace())
    await store.put(key("warm"), b"w")
    gate, entered = threading.Event(), threading.Event()
    run_batch = store._run_batch

    def gated(batch: list[Any]) -> None:
        if not gate.is_set():
            entered.set()
            gate.wait(5)
        run_batch(batch)

    store._run_batch = gated  # type: ignore[method-assign]  # hold the first trip in its thread
    leader_scope = anyio.CancelScope()
    written = anyio.Event()

    async def leader() -> None:
        with leader_scope:
            await store.get(key("a"))

    async def shielded_writer() -> None:
        with anyio.CancelScope(shield=True):
            await store.put(key("b"), b"v")
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
    assert await store.get(key("b")) == b"v"
    assert store._pending == []
    assert not store._leading
    await store.aclose()

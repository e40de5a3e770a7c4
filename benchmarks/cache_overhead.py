"""Cost of a cache hit per stage, against a no-cache run of the same pipeline in the same process.

Shapes: `wide` (200 independent no-op stages, one wave), `chain` (200 no-op stages in a row) and
`1MB` (20 independent stages, each returning a 1 MB string). For each: runs without a cache,
then runs fully served from a warm store: `MemoryCache`, `SQLiteCache`, `RedisCache` (a
`redis-server` started for the benchmark, or `--redis-url`), and for `1MB` both stores with the
outputs kept as artifacts in a local directory. Runs alternate between the modes (so load on a
shared machine hits every row alike). Prints the median of several runs, the cost
per stage and its excess over the no-cache run, and checks SPEC 13's target: a SQLite hit costs
at most 50 us over the no-cache run per stage on the 200-stage chain (asyncio).

Usage: python benchmarks/cache_overhead.py [--runs N] [--backend asyncio|trio] [--quick]
       [--redis-url redis://host:port/0]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)
from pipeline.cache import CacheStore, MemoryCache, RedisCache, SQLiteCache

if TYPE_CHECKING:
    from collections.abc import Iterator

STAGES = 200
BIG_STAGES = 20
MB = "m" * 1_048_576  # 1 MiB: over the default artifact threshold once serialised
TARGET_US = 50.0


class NoOp:
    name = "noop"

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(input)


class OneMB:
    name = "one_mb"

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[str]:
        return StageResult.success(MB)


def build(shape: str) -> PipelineDefinition:
    if shape == "1MB":
        return PipelineDefinition(
            shape, [StageDefinition(f"s{i}", OneMB()) for i in range(BIG_STAGES)]
        )
    stage = NoOp()
    if shape == "wide":
        defs = [StageDefinition(f"s{i}", stage) for i in range(STAGES)]
    else:
        defs = [
            StageDefinition(f"s{i}", stage, inputs=[f"s{i - 1}"] if i else [])
            for i in range(STAGES)
        ]
    return PipelineDefinition(shape, defs)


async def medians_ms(
    executors: list[PipelineExecutor], pipeline: PipelineDefinition, runs: int
) -> list[float]:
    """Median wall time of each executor; runs alternate between them, so load drift on a
    shared machine hits every row alike."""
    for executor in executors:
        await executor.execute(pipeline, 0)  # warm-up (and, with a cache, fill it)
    samples: list[list[float]] = [[] for _ in executors]
    for _ in range(runs):
        for executor, taken in zip(executors, samples, strict=True):
            gc.collect()
            start = time.perf_counter()
            result = await executor.execute(pipeline, 0)
            taken.append((time.perf_counter() - start) * 1000)
            assert result.success
            if result.cache_stats is not None:
                stats = result.cache_stats
                assert stats.hits == len(pipeline.stages), stats
    return [statistics.median(taken) for taken in samples]


@contextlib.contextmanager
def redis_server(url: str | None, workdir: str) -> Iterator[str | None]:
    """A server URL: the given one, a `redis-server` started here, or None without one."""
    if url is not None:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    process = subprocess.Popen(
        [*args, "no", "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def stores(shape: str, tmp: Path, url: str | None) -> list[tuple[str, CacheStore | None]]:
    built: list[tuple[str, CacheStore | None]] = [("no cache", None)]
    if shape != "1MB":
        built.append(("MemoryCache hit", MemoryCache()))
    built.append(("SQLiteCache hit", SQLiteCache(tmp / f"{shape}.db")))
    if shape == "1MB":
        art = tmp / f"{shape}-artifacts"
        built.append(("SQLite+artifacts", SQLiteCache(tmp / f"{shape}-a.db", artifacts=art)))
    if url is not None:
        built.append(("RedisCache hit", RedisCache(url, namespace=f"bench-{shape}")))
        if shape == "1MB":
            art = tmp / f"{shape}-redis-artifacts"
            redis_art = RedisCache(url, namespace=f"bench-{shape}-a", artifacts=art)
            built.append(("Redis+artifacts", redis_art))
    return built


async def main(runs: int, url: str | None, backend: str) -> None:
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, redis_server(url, tmp) as server:
        for shape in ("wide", "chain", "1MB"):
            pipeline = build(shape)
            built = stores(shape, Path(tmp), server)
            for _, store in built:
                if isinstance(store, RedisCache):
                    await store.clear()
            executors = [PipelineExecutor(cache=store) for _, store in built]
            for (label, _), ms in zip(
                built, await medians_ms(executors, pipeline, runs), strict=True
            ):
                rows.append((shape, label, ms))
            for _, store in built:
                if isinstance(store, RedisCache):
                    await store.clear()
                if store is not None:
                    await store.aclose()

    print(
        f"cache hit cost, median of {runs} runs, {backend}; wide/chain: {STAGES} no-op stages, "
        f"1MB: {BIG_STAGES} stages returning 1 MB each"
    )
    if server is None:
        print("(RedisCache rows skipped: no redis-server found; pass --redis-url)")
    header = (
        f"{'shape':<6} {'mode':<17} {'median ms':>10} {'per stage us':>13} {'ratio':>7} "
        f"{'hit - no cache us':>18}"
    )
    print(header)
    print("-" * len(header))
    base: dict[str, float] = {}
    verdict = ""
    for shape, label, ms in rows:
        per_stage = ms * 1000 / (BIG_STAGES if shape == "1MB" else STAGES)
        if label == "no cache":
            base[shape] = per_stage
            extra = ""
        else:
            extra = f"{per_stage - base[shape]:+.1f}"
        ratio = per_stage / base[shape]
        print(f"{shape:<6} {label:<17} {ms:>10.2f} {per_stage:>13.1f} {ratio:>7.2f} {extra:>18}")
        if shape == "chain" and label == "SQLiteCache hit":
            cost = per_stage - base[shape]
            ok = cost <= TARGET_US
            verdict = (
                f"SQLite hit on the {STAGES}-stage chain: {cost:+.1f} us per stage over no cache "
                f"({'meets' if ok else 'misses'} the {TARGET_US:.0f} us target)"
            )
    print(verdict)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--quick", action="store_true", help="3 runs: a smoke test")
    parser.add_argument("--redis-url", default=None, help="use this server instead of starting one")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    anyio.run(main, runs, args.redis_url, args.backend, backend=args.backend)

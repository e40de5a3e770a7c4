"""Cost of a cache hit: a 200-stage no-op pipeline served from the cache vs run uncached.

Two shapes: `wide` (200 independent stages, one wave) and `chain` (200 stages in a row).
For each: uncached runs, then runs fully served from a warm `MemoryCache` and a warm
`SQLiteCache`. Prints the median of several runs, the per-stage cost and the ratio to
uncached. The aim: a SQLite hit costs less than a no-op stage run plus 100 us.

Usage: python benchmarks/cache_overhead.py [--runs N] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)
from pipeline.cache import CacheStore, MemoryCache, SQLiteCache

STAGES = 200


class NoOp:
    name = "noop"

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(input)


def build(shape: str) -> PipelineDefinition:
    stage = NoOp()
    if shape == "wide":
        defs = [StageDefinition(f"s{i}", stage) for i in range(STAGES)]
    else:
        defs = [
            StageDefinition(f"s{i}", stage, inputs=[f"s{i - 1}"] if i else [])
            for i in range(STAGES)
        ]
    return PipelineDefinition(shape, defs)


async def median_ms(executor: PipelineExecutor, pipeline: PipelineDefinition, runs: int) -> float:
    await executor.execute(pipeline, 0)  # warm-up (and, with a cache, fill it)
    samples = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        result = await executor.execute(pipeline, 0)
        samples.append((time.perf_counter() - start) * 1000)
        assert result.success
        if result.cache_stats is not None:
            assert result.cache_stats.hits == STAGES, result.cache_stats
    return statistics.median(samples)


async def main(runs: int) -> None:
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("wide", "chain"):
            pipeline = build(shape)
            stores: list[tuple[str, CacheStore | None]] = [
                ("uncached", None),
                ("MemoryCache hit", MemoryCache()),
                ("SQLiteCache hit", SQLiteCache(Path(tmp) / f"{shape}.db")),
            ]
            for label, store in stores:
                ms = await median_ms(PipelineExecutor(cache=store), pipeline, runs)
                rows.append((shape, label, ms))
                if store is not None:
                    await store.aclose()

    print(f"{STAGES}-stage no-op pipeline, median of {runs} runs")
    header = f"{'shape':<6} {'mode':<16} {'median ms':>10} {'per stage us':>13} {'ratio':>6} {'hit - no-op us':>15}"
    print(header)
    print("-" * len(header))
    base: dict[str, float] = {}
    verdicts = []
    for shape, label, ms in rows:
        per_stage = ms * 1000 / STAGES
        if label == "uncached":
            base[shape] = per_stage
            extra = ""
        else:
            extra = f"{per_stage - base[shape]:+.1f}"
        ratio = per_stage / base[shape]
        print(f"{shape:<6} {label:<16} {ms:>10.2f} {per_stage:>13.1f} {ratio:>6.2f} {extra:>15}")
        if label.startswith("SQLite"):
            ok = per_stage < base[shape] + 100
            verdicts.append(f"{shape}: SQLite hit {'meets' if ok else 'misses'} no-op + 100 us")
    print("; ".join(verdicts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(main, args.runs, backend=args.backend)

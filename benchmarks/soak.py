"""Soak: thousands of small runs leave memory, tasks and threads where they were.

Each configuration runs one small pipeline (split -> fan-out of 3 items, split -> total, then a
join of both: 4 stages) `--runs` times on one event loop, with one executor holding a sync and
an async no-op observer and a cache store: `MemoryCache`, or `SQLiteCache` in a temp dir. Run i
gets input i // 2, so every other run is served from the cache; the store is cleared every
`CLEAR_EVERY` runs, so its entries stay bounded and both the miss-and-write and the hit path
keep running.

After `--warmup` runs (store cleared, `gc.collect()`, tracemalloc starts) and again after the
last run, it samples the memory still allocated, `anyio.get_running_tasks()` and
`threading.active_count()`. It fails when memory grew by `MAX_GROWTH_BYTES` or more, or any task
or thread is extra. `tests/unit/test_soak.py` runs the same check with fewer runs.

Usage: python benchmarks/soak.py [--runs N] [--warmup N] [--backend asyncio|trio|both]
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)
from pipeline.cache import MemoryCache, SQLiteCache

if TYPE_CHECKING:
    from pipeline.cache import CacheStore
    from pipeline.events import Observer, PipelineEvent

Backend = Literal["asyncio", "trio"]
Store = Literal["memory", "sqlite"]

RUNS = 10_000
WARMUP = 1_000
CLEAR_EVERY = 100  # runs between two `store.clear()`: at most 50 inputs' entries live
MAX_GROWTH_BYTES = 1 << 20  # tracemalloc growth between the two samples


# -- the pipeline ---------------------------------------------------------------------------------
class Split:
    """x -> [x, x + 1, x + 2]."""

    name = "split"

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[list[int]]:
        return StageResult.success([input, input + 1, input + 2])


class Inc:
    """One fan-out item: x -> x + 1."""

    name = "inc"

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(input + 1)


class Total:
    """A list -> its sum."""

    name = "total"

    async def execute(self, input: list[int], context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(sum(input))


class Join:
    """{"inc": [...], "total": n} -> sum of both."""

    name = "join"

    async def execute(
        self, input: dict[str, Any], context: PipelineContext[Any]
    ) -> StageResult[int]:
        return StageResult.success(sum(input["inc"]) + input["total"])


def soak_definition() -> PipelineDefinition:
    """The 4-stage pipeline every soak run executes."""
    return PipelineDefinition(
        name="soak",
        stages=[
            StageDefinition("split", Split()),
            StageDefinition("inc", Inc(), inputs=["split"], pattern=ExecutionPattern.FAN_OUT),
            StageDefinition("total", Total(), inputs=["split"]),
            StageDefinition("join", Join(), inputs=["inc", "total"]),
        ],
    )


def expected_output(x: int) -> int:
    """What `join` returns for input x: (3x + 6) + (3x + 3)."""
    return 6 * x + 9


class CountingObserver:
    """A sync no-op observer: counts events, keeps none."""

    def __init__(self) -> None:
        self.events = 0

    def on_event(self, event: PipelineEvent, /) -> None:
        self.events += 1


class AsyncCountingObserver:
    """The same as an `async def` observer (delivered by the dispatcher's drain task)."""

    def __init__(self) -> None:
        self.events = 0

    async def on_event(self, event: PipelineEvent, /) -> None:
        self.events += 1


# -- one soak -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """What is alive at one point of a soak."""

    memory: int
    """tracemalloc's current bytes (allocated since tracing started and not yet freed)."""
    tasks: int
    """`len(anyio.get_running_tasks())`, the soak's own task included."""
    threads: int
    """`threading.active_count()`."""


@dataclass(frozen=True)
class SoakReport:
    """One configuration's soak: its two samples and what the runs did."""

    label: str
    runs: int
    seconds: float
    first: Sample
    last: Sample
    sync_events: int
    async_events: int
    hits: int
    writes: int

    @property
    def growth(self) -> int:
        """Bytes still allocated at the end that were not at the first sample."""
        return self.last.memory - self.first.memory

    def problems(self, max_growth: int = MAX_GROWTH_BYTES) -> list[str]:
        """What is wrong with this soak (empty when memory, tasks and threads stayed flat)."""
        found = []
        if self.growth >= max_growth:
            found.append(f"{self.label}: memory grew {self.growth:,} B (limit {max_growth:,} B)")
        if self.last.tasks > self.first.tasks:
            found.append(f"{self.label}: tasks {self.first.tasks} -> {self.last.tasks}")
        if self.last.threads > self.first.threads:
            found.append(f"{self.label}: threads {self.first.threads} -> {self.last.threads}")
        if self.sync_events == 0 or self.async_events != self.sync_events:
            found.append(
                f"{self.label}: observers got {self.sync_events} (sync) and "
                f"{self.async_events} (async) events; both should get every event"
            )
        if self.hits == 0 or self.writes == 0:
            found.append(f"{self.label}: cache hits={self.hits}, writes={self.writes}")
        return found


def _sample() -> Sample:
    gc.collect()
    memory = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    return Sample(memory, len(anyio.get_running_tasks()), threading.active_count())


async def soak(
    store: CacheStore,
    *,
    runs: int,
    warmup: int,
    label: str,
    clear_every: int = CLEAR_EVERY,
    observers: tuple[Observer, ...] = (),
) -> SoakReport:
    """Run the soak pipeline `runs` times with `store`; sample after `warmup` runs and at the end.

    The store is cleared every `clear_every` runs and before each sample. Starts tracemalloc
    at the first sample and stops it at the end (it must not be tracing when called).
    `observers` are added to the two counting ones (a test passes a leaky one to check that
    growth is caught).
    """
    if tracemalloc.is_tracing():
        raise RuntimeError("soak() starts tracemalloc itself; stop it first")
    if not 0 < warmup < runs or warmup % clear_every:
        raise ValueError(f"need 0 < warmup < runs, warmup a multiple of {clear_every=}")
    definition = soak_definition()
    sync_obs, async_obs = CountingObserver(), AsyncCountingObserver()
    executor = PipelineExecutor(cache=store, observers=(sync_obs, async_obs, *observers))
    hits = writes = 0
    first: Sample | None = None
    started = time.perf_counter()
    try:
        for i in range(runs):
            if i % clear_every == 0:
                await store.clear()
            if i == warmup:
                first = _sample()
                tracemalloc.start()
            x = i // 2
            result = await executor.execute(definition, x)
            if not result.success or result.outputs["join"] != expected_output(x):
                raise RuntimeError(f"{label}: run {i} failed: {result.error} {result.outputs}")
            stats = result.cache_stats
            if stats is not None:
                hits, writes = hits + stats.hits, writes + stats.writes
            del result, stats
        await store.clear()
        last = _sample()
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - started
    assert first is not None  # warmup < runs; taken just before tracing started: memory 0
    return SoakReport(
        label, runs, seconds, first, last, sync_obs.events, async_obs.events, hits, writes
    )


def make_store(kind: Store, directory: Path) -> CacheStore:
    """A fresh `MemoryCache`, or a `SQLiteCache` on a new file in `directory`."""
    if kind == "memory":
        return MemoryCache()
    return SQLiteCache(directory / "soak.db")


async def soak_store(
    kind: Store,
    directory: Path,
    *,
    runs: int,
    warmup: int,
    label: str,
    clear_every: int = CLEAR_EVERY,
) -> SoakReport:
    """`soak` with a fresh store of `kind`, closed afterwards."""
    store = make_store(kind, directory)
    try:
        return await soak(store, runs=runs, warmup=warmup, label=label, clear_every=clear_every)
    finally:
        await store.aclose()


# -- the script -----------------------------------------------------------------------------------
def print_table(reports: list[SoakReport]) -> None:
    header = (
        "config",
        "runs",
        "runs/s",
        "memory growth",
        "tasks",
        "threads",
        "events/observer",
        "cache hits",
    )
    cells = [
        (
            r.label,
            f"{r.runs:,}",
            f"{r.runs / r.seconds:,.0f}",
            f"{r.growth / 1024:+,.1f} KiB",
            f"{r.first.tasks} -> {r.last.tasks}",
            f"{r.first.threads} -> {r.last.threads}",
            f"{r.sync_events:,}",
            f"{r.hits:,}",
        )
        for r in reports
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per config ({RUNS:,})")
    parser.add_argument("--warmup", type=int, default=WARMUP, help=f"first sample ({WARMUP:,})")
    parser.add_argument("--backend", choices=("asyncio", "trio", "both"), default="asyncio")
    args = parser.parse_args()
    backends: list[Backend] = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    reports: list[SoakReport] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            kinds: tuple[Store, ...] = ("memory", "sqlite")
            for kind in kinds:
                directory = Path(tmp) / f"{backend}-{kind}"
                directory.mkdir()
                label = f"{backend} {kind} + sync & async observer"
                job = functools.partial(
                    soak_store, kind, directory, runs=args.runs, warmup=args.warmup, label=label
                )
                reports.append(anyio.run(job, backend=backend))
    print(
        f"pipeline soak  python={sys.version.split()[0]}  4-stage pipeline (fan-out of 3), "
        f"samples after {args.warmup:,} and {args.runs:,} runs; cache cleared every "
        f"{CLEAR_EVERY} runs\n"
    )
    print_table(reports)
    problems = [p for r in reports for p in r.problems()]
    for problem in problems:
        print(f"FAIL {problem}")
    print(
        f"\nmemory growth < {MAX_GROWTH_BYTES / 2**20:g} MiB, no extra tasks or threads: "
        + ("FAIL" if problems else "PASS")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

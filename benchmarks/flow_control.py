"""Cost of flow control (issue 11): a resource held per attempt, and a durable step's cache.

Each feature is timed against the same work without it, in one run (one event loop):

- `uses`, chain: a chain of 200 no-op async stages with `StageDefinition(uses={"r": 1})` on
  an executor that has `resources={"r": Resource(max_in_flight=1000)}` (never contended),
  against the same chain without `uses` on the same executor; the difference per attempt
  (target: under 5 µs). Median over rounds of `reps` runs of each, interleaved.
- `uses`, fan-out: one FAN_OUT stage over 10,000 items (max_concurrent_fan_out=100), with and
  without `uses`; the difference per item (each item is one attempt, same target).
- Durable steps: one stage (kept out of the stage cache) whose code makes 200
  `await context.step("s", fn, i)` calls, `fn` a trivial `async def`, timed inside the stage
  (so only the steps are counted) against the same stage calling `await fn(i)` directly. Per
  step: a step on an executor without a cache (no store), then with `MemoryCache()` and with
  `SQLiteCache(<tmp file>)`: a first run (every step misses and writes its result) and a second
  run of the same definition (every step is replayed from the store). Each miss round uses a
  fresh pipeline name, so its keys are new. Info only (the issue asks to measure).
- What a step costs is split up below them (info): `fingerprint(args)` alone, the bare store
  `put` of a new step-sized entry and `get` of it (a hit), called straight from the event loop,
  and one `anyio.to_thread.run_sync` of a no-op (SQLiteCache makes one worker-thread trip per
  operation when nothing else is waiting); then the share of each cached step's added cost
  they make up.

Medians of several rounds, `gc.freeze()` after the warm-up (as benchmarks/overhead.py).

Usage: python benchmarks/flow_control.py [--quick] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

import pipeline
from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    StageDefinition,
    StageResult,
)
from pipeline.cache import CacheKey, CacheStore, MemoryCache, SQLiteCache, fingerprint

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

CHAIN = 200  # stages in the `uses` chain
ITEMS = 10_000  # fan-out items
CAP = 100  # fan-out concurrency
STEPS = 200  # context.step calls per stage run
USES = {"r": 1}

TARGET_US_PER_ATTEMPT = 5.0


# -- the work ------------------------------------------------------------------------------------
class NoOpStage:
    """A no-op async stage: hands its input back."""

    @property
    def name(self) -> str:
        return "noop"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


async def fn(i: int) -> int:
    """The step's call: trivial, so what is timed is the step around it."""
    return i


class StepLoop:
    """Makes `STEPS` calls of `fn` (through `context.step`, or directly); outputs the seconds."""

    def __init__(self, *, step: bool) -> None:
        self.step = step

    @property
    def name(self) -> str:
        return "steps" if self.step else "direct"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[float]:
        t0 = time.perf_counter()
        if self.step:
            for i in range(STEPS):
                await context.step("s", fn, i)
        else:
            for i in range(STEPS):
                await fn(i)
        return StageResult.success(time.perf_counter() - t0)


def chain(*, uses: bool) -> PipelineDefinition:
    stage = NoOpStage()
    return PipelineDefinition(
        name="chain-uses" if uses else "chain",
        stages=[
            StageDefinition(
                f"s{i}", stage, inputs=[f"s{i - 1}"] if i else [], uses=USES if uses else {}
            )
            for i in range(CHAIN)
        ],
    )


def fan_out(*, uses: bool) -> PipelineDefinition:
    return PipelineDefinition(
        name="fan-uses" if uses else "fan",
        stages=[
            StageDefinition(
                "fan",
                NoOpStage(),
                pattern=ExecutionPattern.FAN_OUT,
                max_concurrent_fan_out=CAP,
                uses=USES if uses else {},
            )
        ],
    )


def step_pipeline(name: str, *, step: bool) -> PipelineDefinition:
    # cache=False: the stage itself is never served from the cache, so every run makes its steps
    return PipelineDefinition(
        name=name, stages=[StageDefinition("steps", StepLoop(step=step), cache=False)]
    )


def checked(result: PipelineResult) -> PipelineResult:
    if not result.success:
        raise SystemExit(f"pipeline run failed: {result.error} {result.failed_stages}")
    return result


# -- measuring -----------------------------------------------------------------------------------
async def per_run(fn: Callable[[], Awaitable[Any]], reps: int) -> float:
    """Seconds per call of `reps` calls of `fn` in a row."""
    t0 = time.perf_counter()
    for _ in range(reps):
        await fn()
    return (time.perf_counter() - t0) / reps


async def paired(
    without: Callable[[], Awaitable[Any]],
    with_: Callable[[], Awaitable[Any]],
    rounds: int,
    reps: int,
) -> tuple[float, float, float]:
    """Medians over `rounds` of seconds per run without and with, and of their difference.

    Each round times `reps` runs of one, then of the other (which goes first alternates).
    """
    a: list[float] = []
    b: list[float] = []
    for r in range(rounds):
        if r % 2:
            b.append(await per_run(with_, reps))
            a.append(await per_run(without, reps))
        else:
            a.append(await per_run(without, reps))
            b.append(await per_run(with_, reps))
    diff = statistics.median(y - x for x, y in zip(a, b, strict=True))
    return statistics.median(a), statistics.median(b), diff


@dataclass
class Row:
    workload: str
    without: str
    with_: str
    overhead: str
    target: str
    ok: bool | None


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} µs"


def print_table(rows: list[Row]) -> None:
    header = ("workload", "without", "with", "overhead", "target", "")
    cells = [(r.workload, r.without, r.with_, r.overhead, r.target, verdict(r.ok)) for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "FAIL")


# -- 1. a resource held per attempt --------------------------------------------------------------
async def resource_rows(rounds: int, reps: int, fan_reps: int) -> list[Row]:
    executor = PipelineExecutor(resources={"r": pipeline.Resource(max_in_flight=1000)})
    plain, held = chain(uses=False), chain(uses=True)
    fan_plain, fan_held = fan_out(uses=False), fan_out(uses=True)
    items = list(range(ITEMS))

    async def run_plain() -> None:
        checked(await executor.execute(plain))

    async def run_held() -> None:
        checked(await executor.execute(held))

    async def fan_run_plain() -> None:
        checked(await executor.execute(fan_plain, items))

    async def fan_run_held() -> None:
        checked(await executor.execute(fan_held, items))

    for f in (run_plain, run_held):  # warm-up
        await per_run(f, 20)
    for f in (fan_run_plain, fan_run_held):
        await f()
    gc.collect()
    gc.freeze()
    try:
        base, cand, diff = await paired(run_plain, run_held, rounds, reps)
        fan_base, fan_cand, fan_diff = await paired(fan_run_plain, fan_run_held, rounds, fan_reps)
    finally:
        gc.unfreeze()
    per_attempt = diff / CHAIN
    per_item = fan_diff / ITEMS
    target = f"< {TARGET_US_PER_ATTEMPT:g} µs/attempt"
    return [
        Row(
            f"uses={{'r': 1}}, {CHAIN}-stage chain",
            f"{us(base / CHAIN)}/stage",
            f"{us(cand / CHAIN)}/stage",
            f"{per_attempt * 1e6:+.2f} µs/attempt",
            target,
            per_attempt < TARGET_US_PER_ATTEMPT * 1e-6,
        ),
        Row(
            f"uses={{'r': 1}}, fan-out {ITEMS:,} items (cap {CAP})",
            f"{fan_base * 1e3:.2f} ms",
            f"{fan_cand * 1e3:.2f} ms",
            f"{per_item * 1e6:+.2f} µs/item",
            target,
            per_item < TARGET_US_PER_ATTEMPT * 1e-6,
        ),
    ]


# -- 2. durable steps ----------------------------------------------------------------------------
class StepTimer:
    """Runs the step stage on one executor; the seconds per step its code measured."""

    def __init__(self, executor: PipelineExecutor, label: str) -> None:
        self.executor = executor
        self.label = label
        self.fresh = 0

    async def run(self, definition: PipelineDefinition, *, hits: int | None = None) -> float:
        result = checked(await self.executor.execute(definition))
        stats = result.cache_stats
        if hits is not None:  # with a store: the run hit (or missed) every step
            assert stats is not None
            want = (hits, STEPS - hits, STEPS - hits)
            got = (stats.hits, stats.misses, stats.writes)
            if got != want:
                raise SystemExit(f"{self.label}: hits, misses, writes {got}, expected {want}")
        seconds: float = result.outputs["steps"]
        return seconds / STEPS

    def new_definition(self) -> PipelineDefinition:
        """The step stage under a pipeline name not used before: its steps all miss."""
        self.fresh += 1
        return step_pipeline(f"steps-{self.label}-{self.fresh}", step=True)

    async def miss_then_hit(self, reps: int) -> tuple[float, float]:
        """Seconds per step of a first run (misses + writes) and a second (hits), `reps` each."""
        miss = hit = 0.0
        for _ in range(reps):
            definition = self.new_definition()
            miss += await self.run(definition, hits=0)
            hit += await self.run(definition, hits=STEPS)
        return miss / reps, hit / reps


async def bare_store_s(store: CacheStore, n: int, round_: int) -> tuple[float, float]:
    """Seconds per bare `put` of `n` new step-sized entries, then per `get` of each (a hit)."""
    keys = [CacheKey("bench", fingerprint(("bare", round_, i))) for i in range(n)]
    blob = b'{"v":1,"value":123}'
    t0 = time.perf_counter()
    for key in keys:
        await store.put(key, blob)
    t1 = time.perf_counter()
    for key in keys:
        if await store.get(key) is None:
            raise SystemExit(f"{store!r}: an entry just written is missing")
    t2 = time.perf_counter()
    return (t1 - t0) / n, (t2 - t1) / n


async def thread_hop_s(n: int) -> float:
    """Seconds per `anyio.to_thread.run_sync` of a no-op: one worker-thread round trip."""
    t0 = time.perf_counter()
    for _ in range(n):
        await anyio.to_thread.run_sync(int)
    return (time.perf_counter() - t0) / n


def fingerprint_s(n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fingerprint((i,))
    return (time.perf_counter() - t0) / n


async def step_rows(rounds: int, reps: int, tmp: Path) -> tuple[list[Row], list[str]]:
    """The step rows, and notes on what dominates each cached step's cost."""
    direct = step_pipeline("direct", step=False)
    no_store = step_pipeline("no-store", step=True)
    bare = PipelineExecutor()
    memory = MemoryCache()
    sqlite = SQLiteCache(tmp / "steps.db")
    timers = {
        "none": StepTimer(bare, "none"),
        "memory": StepTimer(PipelineExecutor(cache=memory), "memory"),
        "sqlite": StepTimer(PipelineExecutor(cache=sqlite), "sqlite"),
    }
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "direct",
            "none",
            "memory miss",
            "memory hit",
            "sqlite miss",
            "sqlite hit",
            "fingerprint",
            "memory put",
            "memory get",
            "sqlite put",
            "sqlite get",
            "thread hop",
        )
    }
    try:
        for _ in range(3):  # warm-up (opens the SQLite file)
            await timers["none"].run(direct)
            await timers["none"].run(no_store)
            for key in ("memory", "sqlite"):
                await timers[key].miss_then_hit(1)
        gc.collect()
        gc.freeze()
        try:
            for round_ in range(rounds):
                direct_s = none_s = 0.0
                for _ in range(reps):
                    direct_s += await timers["none"].run(direct)
                    none_s += await timers["none"].run(no_store)
                samples["direct"].append(direct_s / reps)
                samples["none"].append(none_s / reps)
                for key, store in (("memory", memory), ("sqlite", sqlite)):
                    miss, hit = await timers[key].miss_then_hit(reps)
                    samples[f"{key} miss"].append(miss)
                    samples[f"{key} hit"].append(hit)
                    put, get = await bare_store_s(store, STEPS, round_)
                    samples[f"{key} put"].append(put)
                    samples[f"{key} get"].append(get)
                samples["fingerprint"].append(fingerprint_s(STEPS))
                samples["thread hop"].append(await thread_hop_s(STEPS))
        finally:
            gc.unfreeze()
    finally:
        await sqlite.aclose()
    m = {k: statistics.median(v) for k, v in samples.items()}
    base = m["direct"]

    def step_row(label: str, key: str) -> Row:
        return Row(
            f"context.step, {label}",
            f"{us(base)}/call",
            f"{us(m[key])}/step",
            f"{(m[key] - base) * 1e6:+.2f} µs/step",
            "info",
            None,
        )

    def part_row(label: str, key: str) -> Row:
        return Row(f"  of which: {label}", "", f"{us(m[key])}/call", "", "info", None)

    def share(part: float, key: str) -> str:
        return f"{part / (m[key] - base):.0%}"

    notes = [
        f"MemoryCache hit: fingerprint(args) is {share(m['fingerprint'], 'memory hit')} of the "
        "added µs/step (the rest: the step key's sha256, unsealing, the StepRun record + event)",
        f"MemoryCache miss + write: the step without a store is "
        f"{share(m['none'] - base, 'memory miss')}, fingerprint(args) "
        f"{share(m['fingerprint'], 'memory miss')} (the rest: serialising the result and the "
        "shielded write)",
        f"SQLiteCache hit: the bare get is {share(m['sqlite get'], 'sqlite hit')} of it, and a "
        f"bare worker-thread trip alone {share(m['thread hop'], 'sqlite hit')}",
        f"SQLiteCache miss + write: the bare get + put are "
        f"{share(m['sqlite get'] + m['sqlite put'], 'sqlite miss')} of it (two thread trips, "
        "one a committed write)",
    ]
    return [
        step_row("no store (executor without cache)", "none"),
        step_row("MemoryCache, miss + write (1st run)", "memory miss"),
        step_row("MemoryCache, hit (2nd run)", "memory hit"),
        step_row("SQLiteCache, miss + write (1st run)", "sqlite miss"),
        step_row("SQLiteCache, hit (2nd run)", "sqlite hit"),
        part_row("fingerprint(args)", "fingerprint"),
        part_row("bare MemoryCache.put", "memory put"),
        part_row("bare MemoryCache.get (hit)", "memory get"),
        part_row("bare SQLiteCache.put", "sqlite put"),
        part_row("bare SQLiteCache.get (hit)", "sqlite get"),
        part_row("anyio.to_thread.run_sync(no-op)", "thread hop"),
    ], notes


# -- main ----------------------------------------------------------------------------------------
async def run(quick: bool, backend: str) -> list[Row]:
    rounds = 5 if quick else 9
    reps, fan_reps, step_reps = (30, 1, 3) if quick else (100, 2, 10)
    t0 = time.perf_counter()
    rows = await resource_rows(rounds, reps, fan_reps)
    with tempfile.TemporaryDirectory() as tmp:
        more, notes = await step_rows(rounds, step_reps, Path(tmp))
    rows += more
    elapsed = time.perf_counter() - t0
    print(
        f"flow control benchmark  backend={backend}  python={sys.version.split()[0]}  "
        f"rounds={rounds}  ({elapsed:.1f} s)"
    )
    print(f"pipeline from {pipeline.__file__}")
    print(
        f"medians over rounds, gc.freeze() after warm-up; uses: {reps} chain runs / {fan_reps} "
        f"fan-out runs of each per round, overhead = median of per-round differences; steps: "
        f"{STEPS} per run, timed inside the stage, {step_reps} runs of each per round, "
        "'without' = the same stage calling `await fn(i)`\n"
    )
    print_table(rows)
    print("\nwhat dominates a cached step (shares of its added µs/step, from the rows above):")
    for note in notes:
        print(f"- {note}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repetitions")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    rows = anyio.run(run, args.quick, args.backend, backend=args.backend)
    ok = all(r.ok is not False for r in rows)
    print("\nall targets PASS" if ok else "\nsome targets FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

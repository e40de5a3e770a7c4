"""Overhead of `pipeline` over equivalent hand-written anyio code.

Workloads (all in one process, baseline and pipeline runs interleaved):

- W1: one source -> 200 parallel no-op stages -> join; then the same with one no-op sync
  (and one async) observer against no observers, the cost of watching a run.
- W2: a chain of 200 no-op stages.
- W1 / W2 per stage, split (issue 10): what one stage costs from nothing to the end of a run,
  in absolute µs per stage, next to hand-written anyio per stage (W1: a task per concurrent
  stage in a task group; W2: a loop awaiting 200 coroutines). "build" constructs the
  `StageDefinition`s and the `PipelineDefinition`; "validate + plan" is `.plan` on that fresh
  definition (it validates first); "run" is `await PipelineExecutor().execute(d)` with the plan
  cached; "build + run" times all of it in one go. Medians of 5 rounds x 200 repetitions,
  `gc.freeze()` after the warm-up (so the collector does not rescan the interpreter's own
  objects; the garbage a run makes is still collected).
- W3: fan-out of one no-op stage over 10,000 items (max_concurrent_fan_out=100), plus the
  tracemalloc peak for 2,500 / 5,000 / 10,000 items.
- W4: a seeded random 40-stage DAG whose stages really sleep 5-40 ms; makespan against the
  critical-path bound, for the hand-written baseline and both scheduling policies.
- W5 (scale, `--scale N`, default 20,000; 0 skips it): a chain of N stages and a wide graph
  (one source -> N parallel stages -> one join of all N). For each: building the definition,
  `validate_pipeline()` and `.plan` on a fresh definition (`.plan` validates, then
  `build_plan`), how plan time grows from N/4 to N stages, and one run against the
  hand-written baseline. Repeats stop once a step has used its time budget, so a slow
  (quadratic) plan costs one sample, not fifteen.
- W6: `PipelineExecutor().run_sync(d)`, and `anyio.run(executor.execute, d)` (how run_sync
  used to start its loop), against `anyio.run(holder)` (a coroutine that stores
  `await executor.execute(d)` in a list) for one stage returning a 200,000-element list: time
  and tracemalloc peak of each. These run outside the benchmark's own event loop.

Usage: python benchmarks/overhead.py [--quick] [--backend asyncio|trio] [--scale N] [--json PATH]
(`--json` also writes the rows with their numbers; benchmarks/compare.py uses it.)
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

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

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from pipeline.events import PipelineEvent

T = TypeVar("T")

FAN = 200  # W1 width
CHAIN = 200  # W2 length
ITEMS = 10_000  # W3 items
CAP = 100  # W3 concurrency
MEM_SIZES = (2_500, 5_000, 10_000)
DAG_NODES = 40
DAG_SEED = 20240611
SCALE = 20_000  # W5 stages (chain length, and width of the wide graph)
BIG_OUTPUT = 200_000  # W6 output length
SPLIT_ROUNDS, SPLIT_REPS = 5, 200  # W1 / W2 per-stage split: median of rounds of reps each

TARGET_US_PER_STAGE = 20.0
TARGET_US_BUILD_RUN = 12.0  # W1 / W2 build + run, absolute, on asyncio (issue 10)
TARGET_US_PER_STAGE_OBSERVED = 10.0  # added by one no-op sync observer (3 events per stage)
TARGET_US_PER_ITEM = 8.0
TARGET_EAGER_RATIO = 1.05
TARGET_PLAN_S = 0.5  # SPEC 7: "a 20,000-stage chain plans in well under a second"
TARGET_PLAN_GROWTH = 6.0  # plan time for 4x the stages: linear gives ~4x, quadratic ~16x


# -- the no-op work ------------------------------------------------------------------------------
async def noop(value: Any) -> Any:
    """The baseline's unit of work: one coroutine call that hands its input back."""
    return value


class NoOpStage:
    """The pipeline's unit of work: the same, wrapped in the `PipelineStage` protocol."""

    @property
    def name(self) -> str:
        return "noop"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


class NoOpObserver:
    """A sync observer that only counts the events it is given."""

    def __init__(self) -> None:
        self.events = 0

    def on_event(self, event: PipelineEvent, /) -> None:
        self.events += 1


class AsyncNoOpObserver:
    """The same as an `async def` observer (delivered by the dispatcher's task)."""

    def __init__(self) -> None:
        self.events = 0

    async def on_event(self, event: PipelineEvent, /) -> None:
        self.events += 1


class SleepStage:
    """Sleeps a fixed time (W4)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    @property
    def name(self) -> str:
        return "sleep"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[None]:
        await anyio.sleep(self.seconds)
        return StageResult.success(None)


# -- W1: source -> 200 parallel -> join (W5 wide: the same, 20,000 wide) ------------------------
async def w1_baseline(width: int = FAN) -> Any:
    source = await noop(0)
    outputs: dict[str, Any] = {}

    async def branch(key: str) -> None:
        outputs[key] = await noop(source)

    async with anyio.create_task_group() as tg:
        for i in range(width):
            tg.start_soon(branch, f"p{i}")
    return await noop({f"p{i}": outputs[f"p{i}"] for i in range(width)})


def w1_definition(width: int = FAN) -> PipelineDefinition:
    stage = NoOpStage()
    branches = [f"p{i}" for i in range(width)]
    return PipelineDefinition(
        name="w1",
        stages=[
            StageDefinition("source", stage),
            *(StageDefinition(b, stage, inputs=["source"]) for b in branches),
            StageDefinition("join", stage, inputs=branches),
        ],
    )


# -- W2: a chain of 200 (W5 chain: the same, 20,000 long) ----------------------------------------
async def w2_baseline(length: int = CHAIN) -> Any:
    value: Any = 0
    for _ in range(length):
        value = await noop(value)
    return value


def w2_definition(length: int = CHAIN) -> PipelineDefinition:
    stage = NoOpStage()
    return PipelineDefinition(
        name="w2",
        stages=[
            StageDefinition(f"s{i}", stage, inputs=[f"s{i - 1}"] if i else [])
            for i in range(length)
        ],
    )


# -- W3: fan-out over 10,000 items -----------------------------------------------------------------
async def w3_baseline(items: Sequence[Any]) -> list[Any]:
    """A 100-worker pool pulling indices from one iterator, outputs kept in input order."""
    outputs: list[Any] = [None] * len(items)
    indices = iter(range(len(items)))

    async def worker() -> None:
        for i in indices:
            outputs[i] = await noop(items[i])

    async with anyio.create_task_group() as tg:
        for _ in range(min(CAP, len(items))):
            tg.start_soon(worker)
    return outputs


def w3_definition() -> PipelineDefinition:
    return PipelineDefinition(
        name="w3",
        stages=[
            StageDefinition(
                "fan",
                NoOpStage(),
                pattern=ExecutionPattern.FAN_OUT,
                max_concurrent_fan_out=CAP,
            )
        ],
    )


# -- W4: a random DAG of sleeping stages ----------------------------------------------------------
@dataclass(frozen=True)
class Dag:
    inputs: dict[str, tuple[str, ...]]
    seconds: dict[str, float]

    def critical_path(self) -> float:
        """The longest sum of sleeps along any path: no schedule can finish sooner."""
        finish: dict[str, float] = {}
        for node, deps in self.inputs.items():  # nodes are in topological order
            finish[node] = max((finish[d] for d in deps), default=0.0) + self.seconds[node]
        return max(finish.values())


def random_dag(seed: int, n: int) -> Dag:
    rng = random.Random(seed)
    inputs: dict[str, tuple[str, ...]] = {}
    seconds: dict[str, float] = {}
    for i in range(n):
        node = f"n{i}"
        if i < 3:
            deps: list[str] = []
        else:
            window = [f"n{j}" for j in range(max(0, i - 8), i)]
            deps = rng.sample(window, rng.randint(1, 3))
        inputs[node] = tuple(sorted(deps, key=lambda s: int(s[1:])))
        seconds[node] = rng.uniform(0.005, 0.040)
    return Dag(inputs, seconds)


async def w4_baseline(dag: Dag) -> None:
    """Each node awaits its inputs' events, sleeps, then sets its own event."""
    done = {node: anyio.Event() for node in dag.inputs}

    async def node_task(node: str) -> None:
        for dep in dag.inputs[node]:
            await done[dep].wait()
        await anyio.sleep(dag.seconds[node])
        done[node].set()

    async with anyio.create_task_group() as tg:
        for node in dag.inputs:
            tg.start_soon(node_task, node)


def w4_definition(dag: Dag) -> PipelineDefinition:
    return PipelineDefinition(
        name="w4",
        stages=[
            StageDefinition(node, SleepStage(dag.seconds[node]), inputs=list(deps))
            for node, deps in dag.inputs.items()
        ],
    )


# -- W6: a run whose output is a 200,000-element list --------------------------------------------
class BigOutputStage:
    """Returns a fresh `list(range(BIG_OUTPUT))`."""

    @property
    def name(self) -> str:
        return "big"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[list[int]]:
        return StageResult.success(list(range(BIG_OUTPUT)))


def w6_definition() -> PipelineDefinition:
    return PipelineDefinition(name="w6", stages=[StageDefinition("big", BigOutputStage())])


def run_holder(
    executor: PipelineExecutor, definition: PipelineDefinition, backend: str
) -> PipelineResult:
    """The holder form: `anyio.run` a coroutine that keeps the result in a list, returns None."""
    box: list[PipelineResult] = []

    async def holder() -> None:
        box.append(await executor.execute(definition))

    anyio.run(holder, backend=backend)
    return box[0]


# -- measuring ------------------------------------------------------------------------------------
async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def compare(
    baseline: Callable[[], Awaitable[Any]],
    candidate: Callable[[], Awaitable[Any]],
    repeats: int,
    *,
    budget_s: float = math.inf,
    warmup: bool = True,
) -> tuple[float, float]:
    """Medians (seconds) of interleaved runs, after one warm-up run of each (if `warmup`).

    Stops early once the measured runs have taken `budget_s` (at least one pair runs).
    """
    if warmup:
        await baseline()
        await candidate()
    base: list[float] = []
    cand: list[float] = []
    for _ in range(repeats):
        base.append(await timed(baseline))
        cand.append(await timed(candidate))
        if sum(base) + sum(cand) >= budget_s:
            break
    return statistics.median(base), statistics.median(cand)


def sample(
    setup: Callable[[], T], op: Callable[[T], object], *, repeats: int, budget_s: float
) -> list[float]:
    """Seconds of up to `repeats` calls `op(setup())` (only `op` is timed; GC stays on).

    Stops once the timed calls have taken `budget_s`; at least one call runs.
    """
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget_s:
        arg = setup()
        gc.collect()
        t0 = time.perf_counter()
        op(arg)
        times.append(time.perf_counter() - t0)
        del arg
    return times


def sample_gc_paused(
    setup: Callable[[], T], op: Callable[[T], object], *, repeats: int, budget_s: float
) -> float:
    """The fastest `op(setup())` with the garbage collector paused: the algorithm's own cost."""

    def paused(arg: T) -> None:
        gc.disable()
        try:
            op(arg)
        finally:
            gc.enable()

    return min(sample(setup, paused, repeats=repeats, budget_s=budget_s))


async def peak_bytes(fn: Callable[[], Awaitable[Any]]) -> int:
    """tracemalloc peak of one run (inputs are allocated before tracing starts)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = await fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak


def linear_fit(points: list[tuple[int, int]]) -> tuple[float, bool]:
    """Slope (bytes/item) between the smallest and largest size, and whether every point lies
    within 10% of that line's rise (the peak grows linearly, not faster)."""
    (x0, y0), (x1, y1) = points[0], points[-1]
    slope = (y1 - y0) / (x1 - x0)
    tolerance = max(0.10 * abs(y1 - y0), 4096)
    linear = all(abs(y - (y0 + slope * (x - x0))) <= tolerance for x, y in points)
    return slope, linear


def checked(result: Any) -> None:
    if not result.success:
        raise SystemExit(f"pipeline run failed: {result.error} {result.failed_stages}")


@dataclass
class Row:
    workload: str
    baseline: str
    pipeline: str
    overhead: str
    target: str
    ok: bool | None
    # For --json / compare.py: the row's number (pipeline side), the baseline's in the same
    # unit (when there is one), and a key that stays the same between code versions.
    value: float | None = None
    base: float | None = None
    unit: str = ""
    key: str = ""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def print_table(rows: list[Row]) -> None:
    header = ("workload", "baseline", "pipeline", "overhead", "target", "")
    cells = [
        (r.workload, r.baseline, r.pipeline, r.overhead, r.target, verdict(r.ok)) for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "FAIL")


async def scale_rows(scale: int, repeats: int, budget_s: float) -> list[Row]:
    """W5: build, validate, plan and run a `scale`-long chain and a `scale`-wide graph."""
    rows: list[Row] = []
    executor = PipelineExecutor()
    target_s = TARGET_PLAN_S * scale / SCALE  # linear: the 20k budget, prorated
    for shape, make, base_fn in (
        ("chain", w2_definition, w2_baseline),
        ("wide", w1_definition, w1_baseline),
    ):
        label = f"W5 {shape} {scale}"
        big = make(scale).stages
        small = make(max(scale // 4, 1)).stages
        n = len(big)

        def fresh(stages: Sequence[StageDefinition] = big, name: str = shape) -> PipelineDefinition:
            # Validation issues and the plan are cached per definition: time a new one.
            return PipelineDefinition(name=name, stages=stages)

        def per_stage(seconds: float, stages: int = n) -> str:
            return f"{seconds / stages * 1e6:.1f} µs/stage"

        build_s = statistics.median(sample(lambda: scale, make, repeats=repeats, budget_s=budget_s))
        validate_s = statistics.median(
            sample(fresh, PipelineDefinition.validate_pipeline, repeats=repeats, budget_s=budget_s)
        )
        planned: list[PipelineDefinition] = []

        def plan(
            definition: PipelineDefinition, planned: list[PipelineDefinition] = planned
        ) -> None:
            _ = definition.plan  # validates, then `build_plan`
            planned[:] = [definition]

        plan_s = statistics.median(sample(fresh, plan, repeats=repeats, budget_s=budget_s))
        # Growth with the collector paused: the algorithm's cost, not GC's (GC is in plan_s).
        small_s = sample_gc_paused(
            functools.partial(fresh, small), plan, repeats=repeats, budget_s=budget_s / 2
        )
        big_s = sample_gc_paused(fresh, plan, repeats=repeats, budget_s=budget_s / 2)
        growth = big_s / small_s
        rows += [
            Row(
                f"{label}: build definition",
                "",
                ms(build_s),
                per_stage(build_s),
                "info",
                None,
                value=build_s * 1e3,
                unit="ms",
            ),
            Row(
                f"{label}: validate_pipeline() (fresh)",
                "",
                ms(validate_s),
                per_stage(validate_s),
                "info",
                None,
                value=validate_s * 1e3,
                unit="ms",
            ),
            Row(
                f"{label}: .plan (fresh: validate + build)",
                "",
                ms(plan_s),
                per_stage(plan_s),
                f"well under 1 s at 20k: <= {ms(target_s)}",
                plan_s <= target_s,
                value=plan_s * 1e3,
                unit="ms",
            ),
            Row(
                f"{label}: plan time, x4 stages (gc paused)",
                f"{len(small)}: {ms(small_s)}",
                f"{n}: {ms(big_s)}",
                f"{growth:.1f}x",
                f"linear: <= {TARGET_PLAN_GROWTH:g}x",
                growth <= TARGET_PLAN_GROWTH,
                value=growth,
                unit="x",
            ),
        ]

        definition = planned[0]  # already planned: the run row times running only

        async def pipe(d: PipelineDefinition = definition) -> None:
            checked(await executor.execute(d))

        async def base(size: int = scale, fn: Callable[[int], Awaitable[Any]] = base_fn) -> None:
            await fn(size)

        base_s, run_s = await compare(base, pipe, repeats, budget_s=budget_s, warmup=False)
        rows.append(
            Row(
                f"{label}: run (plan cached)",
                ms(base_s),
                ms(run_s),
                per_stage(run_s - base_s),
                "info (W1/W2: <= 20 µs/stage)",
                None,
                value=run_s * 1e3,
                base=base_s * 1e3,
                unit="ms",
            )
        )
    return rows


def run_sync_rows(repeats: int, backend: Literal["asyncio", "trio"]) -> list[Row]:
    """W6: `run_sync` and `anyio.run(execute)` against `anyio.run(holder)` (no loop running)."""
    definition = w6_definition()
    executor = PipelineExecutor()
    _ = definition.plan

    def via_holder() -> PipelineResult:
        return run_holder(executor, definition, backend)

    def via_run_sync() -> PipelineResult:
        return executor.run_sync(definition, backend=backend)

    def via_direct() -> PipelineResult:
        return anyio.run(executor.execute, definition, backend=backend)

    forms = {"holder": via_holder, "run_sync": via_run_sync, "direct": via_direct}
    times: dict[str, list[float]] = {name: [] for name in forms}
    peaks: dict[str, list[int]] = {name: [] for name in forms}
    for fn in forms.values():  # warm-up
        checked(fn())
    for _ in range(max(repeats // 3, 3)):
        for name, fn in forms.items():
            gc.collect()
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
            checked(result)
            if len(result.outputs["big"]) != BIG_OUTPUT:
                raise SystemExit(f"{name}: output has {len(result.outputs['big'])} items")
            del result
            gc.collect()
            tracemalloc.start()
            try:
                result = fn()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            peaks[name].append(peak)
            del result
    t = {name: statistics.median(v) for name, v in times.items()}
    p = {name: statistics.median(v) for name, v in peaks.items()}
    label = f"W6 output of {BIG_OUTPUT:,} items"
    rows: list[Row] = []
    for name, form in (("run_sync", "run_sync(d)"), ("direct", "anyio.run(execute, d)")):
        rows += [
            Row(
                f"{label}: {form} time",
                f"{ms(t['holder'])} (holder)",
                ms(t[name]),
                f"{t[name] / t['holder']:.2f}x",
                "info",
                None,
                value=t[name] * 1e3,
                base=t["holder"] * 1e3,
                unit="ms",
            ),
            Row(
                f"{label}: {form} peak",
                f"{p['holder'] / 2**20:.1f} MiB (holder)",
                f"{p[name] / 2**20:.1f} MiB",
                f"{p[name] / p['holder']:.2f}x",
                "info",
                None,
                value=p[name] / 2**20,
                base=p["holder"] / 2**20,
                unit="MiB",
            ),
        ]
    return rows


async def split_costs(
    make: Callable[[], PipelineDefinition],
    base_fn: Callable[[], Awaitable[Any]],
    rounds: int,
    reps: int,
) -> dict[str, float]:
    """Seconds per repetition of each part of a run from scratch, and of the anyio baseline.

    Each round times `reps` repetitions of the baseline, then `reps` of build / plan / run (one
    timer around each part of the same repetition; "run" ends once the result and definition are
    freed), then `reps` of everything in one go; the result is the median over the rounds.
    Warm-up first, then `gc.freeze()` (undone at the end).
    """

    async def baseline() -> None:
        await base_fn()

    parts = {"build": 0.0, "plan": 0.0, "run": 0.0}

    async def split() -> None:
        t0 = time.perf_counter()
        definition = make()
        t1 = time.perf_counter()
        _ = definition.plan  # fresh: validates, then builds the plan
        t2 = time.perf_counter()
        result = await PipelineExecutor().execute(definition)  # the plan is cached now
        checked(result)
        del result, definition  # freeing them is part of the cost ("whole" pays it too)
        t3 = time.perf_counter()
        parts["build"] += t1 - t0
        parts["plan"] += t2 - t1
        parts["run"] += t3 - t2

    async def whole() -> None:
        checked(await PipelineExecutor().execute(make()))

    async def block(fn: Callable[[], Awaitable[None]], n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await fn()
        return (time.perf_counter() - t0) / n

    for fn in (baseline, split, whole):  # warm-up
        await block(fn, min(reps, 20))
    samples: dict[str, list[float]] = {k: [] for k in ("anyio", "build", "plan", "run", "full")}
    gc.collect()
    gc.freeze()
    try:
        for _ in range(rounds):
            samples["anyio"].append(await block(baseline, reps))
            parts.update(build=0.0, plan=0.0, run=0.0)
            await block(split, reps)
            for k, total in parts.items():
                samples[k].append(total / reps)
            samples["full"].append(await block(whole, reps))
    finally:
        gc.unfreeze()
    return {k: statistics.median(v) for k, v in samples.items()}


async def split_rows(rounds: int, reps: int, backend: str) -> list[Row]:
    """W1 / W2 per stage: build, validate + plan, run, and build + run, against anyio."""
    rows: list[Row] = []
    for label, make, base_fn in (
        (f"W1 fan {FAN} + join", w1_definition, w1_baseline),
        (f"W2 chain {CHAIN}", w2_definition, w2_baseline),
    ):
        stages = len(make().stages)
        costs = await split_costs(make, base_fn, rounds, reps)
        rows += split_workload_rows(label, {k: v / stages * 1e6 for k, v in costs.items()}, backend)
    return rows


def split_workload_rows(label: str, us: dict[str, float], backend: str) -> list[Row]:
    """The four rows of one workload from its µs per stage (`split_costs` keys)."""
    anyio_us = us["anyio"]

    def cell(x: float) -> str:
        return f"{x:.2f} µs/stage"

    def row(part: str, name: str, *, vs_anyio: bool = False) -> Row:
        return Row(
            f"{label} per stage: {name}",
            f"{cell(anyio_us)} (anyio)" if vs_anyio else "",
            cell(us[part]),
            f"{us[part] - anyio_us:+.2f} µs/stage vs anyio" if vs_anyio else "",
            "info",
            None,
            value=us[part],
            base=anyio_us if vs_anyio else None,
            unit="µs/stage",
        )

    full = row("full", "build + run (all of it)", vs_anyio=True)
    if backend == "asyncio":
        full.target = f"<= {TARGET_US_BUILD_RUN:g} µs/stage"
        full.ok = us["full"] <= TARGET_US_BUILD_RUN
    else:
        full.target = f"info (asyncio: <= {TARGET_US_BUILD_RUN:g})"
    return [
        row("build", "build (StageDefinitions + PipelineDefinition)"),
        row("plan", "validate + plan (.plan, fresh)"),
        row("run", "run (plan cached)", vs_anyio=True),
        full,
    ]


async def run(
    repeats: int,
    dag_repeats: int,
    split: tuple[int, int],
    backend: str,
    scale: int,
    extra: list[Row],
) -> list[Row]:
    rows: list[Row] = []
    executor = PipelineExecutor()
    eager = PipelineExecutor(scheduling="eager")

    # W1 / W2: per-stage overhead (the definition, and so its plan, is built once and reused).
    for label, base_fn, definition in (
        (f"W1 fan {FAN} + join", w1_baseline, w1_definition()),
        (f"W2 chain {CHAIN}", w2_baseline, w2_definition()),
    ):
        stages = len(definition.stages)

        async def pipe(d: PipelineDefinition = definition) -> None:
            checked(await executor.execute(d))

        base, cand = await compare(base_fn, pipe, repeats)
        per_stage = (cand - base) / stages * 1e6
        rows.append(
            Row(
                f"{label} ({stages} stages)",
                ms(base),
                ms(cand),
                f"{per_stage:.1f} µs/stage",
                f"<= {TARGET_US_PER_STAGE:g} µs/stage",
                per_stage <= TARGET_US_PER_STAGE,
                value=per_stage,
                unit="µs/stage (over anyio)",
            )
        )

    # W1 / W2 per stage, split into build, validate + plan and run (issue 10).
    rows += await split_rows(*split, backend)

    # Observers: W1 with one no-op observer against W1 with none (same executor settings).
    w1 = w1_definition()
    stages = len(w1.stages)
    for kind, observer in (("sync", NoOpObserver()), ("async", AsyncNoOpObserver())):
        observed = PipelineExecutor(observers=[observer])

        async def quiet(d: PipelineDefinition = w1) -> None:
            checked(await executor.execute(d))

        async def watched(d: PipelineDefinition = w1, ex: PipelineExecutor = observed) -> None:
            checked(await ex.execute(d))

        base, cand = await compare(quiet, watched, repeats)
        per_stage = (cand - base) / stages * 1e6
        is_sync = kind == "sync"
        rows.append(
            Row(
                f"W1 + 1 no-op {kind} observer ({observer.events // (repeats + 1)} events)",
                f"{ms(base)} (no observers)",
                ms(cand),
                f"{per_stage:.1f} µs/stage",
                f"<= {TARGET_US_PER_STAGE_OBSERVED:g} µs/stage" if is_sync else "info",
                per_stage <= TARGET_US_PER_STAGE_OBSERVED if is_sync else None,
                value=per_stage,
                unit="µs/stage (over none)",
                key=f"W1 + 1 no-op {kind} observer",
            )
        )

    # W3: per-item overhead of a fan-out.
    fan = w3_definition()
    items = list(range(ITEMS))

    async def w3_pipe(values: list[int] = items) -> Any:
        result = await executor.execute(fan, values)
        checked(result)
        return result

    base, cand = await compare(lambda: w3_baseline(items), w3_pipe, repeats)
    per_item = (cand - base) / ITEMS * 1e6
    rows.append(
        Row(
            f"W3 fan-out {ITEMS} items (cap {CAP})",
            ms(base),
            ms(cand),
            f"{per_item:.2f} µs/item",
            f"<= {TARGET_US_PER_ITEM:g} µs/item",
            per_item <= TARGET_US_PER_ITEM,
            value=per_item,
            unit="µs/item (over anyio)",
        )
    )

    # W3 memory: peak = fixed part (the 100 workers) + a part linear in the number of items.
    peaks: list[tuple[int, int, int]] = []
    for m in MEM_SIZES:
        values = list(range(m))
        base_peak = await peak_bytes(functools.partial(w3_baseline, values))
        pipe_peak = await peak_bytes(functools.partial(w3_pipe, values))
        peaks.append((m, base_peak, pipe_peak))
        rows.append(
            Row(
                f"W3 memory peak, {m} items",
                f"{base_peak / 1024:.0f} KiB",
                f"{pipe_peak / 1024:.0f} KiB",
                f"{(pipe_peak - base_peak) / 1024:+.0f} KiB",
                "linear in items",
                None,
                value=pipe_peak / 1024,
                base=base_peak / 1024,
                unit="KiB",
            )
        )
    base_slope, base_linear = linear_fit([(m, b) for m, b, _ in peaks])
    pipe_slope, pipe_linear = linear_fit([(m, p) for m, _, p in peaks])
    rows.append(
        Row(
            "W3 memory per extra item",
            f"{base_slope:.1f} B/item",
            f"{pipe_slope:.1f} B/item",
            f"{pipe_slope - base_slope:+.1f} B/item",
            "linear (fit within 10%)",
            base_linear and pipe_linear,
            value=pipe_slope,
            base=base_slope,
            unit="B/item",
        )
    )

    # W4: makespan over the critical-path bound.
    dag = random_dag(DAG_SEED, DAG_NODES)
    bound = dag.critical_path()
    w4 = w4_definition(dag)
    spans: dict[str, list[float]] = {"baseline": [], "waves": [], "eager": []}
    for _ in range(dag_repeats):
        spans["baseline"].append(await timed(lambda: w4_baseline(dag)))
        for key, ex in (("waves", executor), ("eager", eager)):

            async def w4_pipe(e: PipelineExecutor = ex) -> None:
                checked(await e.execute(w4))

            spans[key].append(await timed(w4_pipe))
    base_span = statistics.median(spans["baseline"])
    for key in ("waves", "eager"):
        span = statistics.median(spans[key])
        ratio = span / bound
        is_eager = key == "eager"
        rows.append(
            Row(
                f"W4 DAG {DAG_NODES} sleeps, {key}",
                f"{ms(base_span)} ({base_span / bound:.3f}x)",
                f"{ms(span)} ({ratio:.3f}x)",
                f"{ms(span - base_span)} vs baseline",
                f"<= {TARGET_EAGER_RATIO:g}x CP" if is_eager else "~1.4-1.5x CP (info)",
                ratio <= TARGET_EAGER_RATIO if is_eager else None,
                value=ratio,
                base=base_span / bound,
                unit="x critical path",
            )
        )
    eager_span = statistics.median(spans["eager"])
    rows.append(
        Row(
            "W4 eager / baseline makespan",
            "",
            "",
            f"{eager_span / base_span:.3f}x ({(eager_span - base_span) / DAG_NODES * 1e6:.0f} µs/stage)",
            "info: timer overshoot is in both",
            None,
            value=eager_span / base_span,
            unit="x",
        )
    )

    if scale:
        rows += await scale_rows(scale, repeats, budget_s=1.0 if repeats <= 5 else 2.0)
    rows += extra

    rounds, reps = split
    print(
        f"pipeline overhead benchmark  backend={backend}  python={sys.version.split()[0]}  "
        f"repeats={repeats} (W4: {dag_repeats}; W5: until a step used its time budget)  "
        f"W4 critical path={ms(bound)}"
    )
    print(f"pipeline from {pipeline.__file__}")
    print(
        "medians of interleaved runs; overhead = (pipeline - baseline) / stages or items; "
        f"'per stage' rows: absolute, median of {rounds} rounds x {reps} repetitions, "
        "gc.freeze() after warm-up\n"
    )
    print_table(rows)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats (5, W4: 1, per-stage split: 3 x 50)"
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--scale",
        type=int,
        default=SCALE,
        metavar="N",
        help=f"stages of the W5 chain and wide graph (default {SCALE:,}; 0 skips W5)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows, with numbers, here")
    args = parser.parse_args()
    repeats, dag_repeats = (5, 1) if args.quick else (15, 3)
    split = (3, 50) if args.quick else (SPLIT_ROUNDS, SPLIT_REPS)
    extra = run_sync_rows(repeats, args.backend)  # starts its own event loops
    rows = anyio.run(
        run, repeats, dag_repeats, split, args.backend, args.scale, extra, backend=args.backend
    )
    ok = all(r.ok is not False for r in rows)
    if args.json:
        report = {
            "backend": args.backend,
            "python": sys.version.split()[0],
            "pipeline": pipeline.__file__,
            "ok": ok,
            "rows": [{**asdict(r), "key": r.key or r.workload} for r in rows],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
    print("\nall targets PASS" if ok else "\nsome targets FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

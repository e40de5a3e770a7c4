"""Overhead of `pipeline` over equivalent hand-written anyio code.

Workloads (all in one process, baseline and pipeline runs interleaved):

- W1: one source -> 200 parallel no-op stages -> join; then the same with one no-op sync
  (and one async) observer against no observers, the cost of watching a run.
- W2: a chain of 200 no-op stages.
- W3: fan-out of one no-op stage over 10,000 items (max_concurrent_fan_out=100), plus the
  tracemalloc peak for 2,500 / 5,000 / 10,000 items.
- W4: a seeded random 40-stage DAG whose stages really sleep 5-40 ms; makespan against the
  critical-path bound, for the hand-written baseline and both scheduling policies.

Usage: python benchmarks/overhead.py [--quick] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import functools
import gc
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from pipeline.events import PipelineEvent

FAN = 200  # W1 width
CHAIN = 200  # W2 length
ITEMS = 10_000  # W3 items
CAP = 100  # W3 concurrency
MEM_SIZES = (2_500, 5_000, 10_000)
DAG_NODES = 40
DAG_SEED = 20240611

TARGET_US_PER_STAGE = 20.0
TARGET_US_PER_STAGE_OBSERVED = 10.0  # added by one no-op sync observer (3 events per stage)
TARGET_US_PER_ITEM = 8.0
TARGET_EAGER_RATIO = 1.05


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


# -- W1: source -> 200 parallel -> join ----------------------------------------------------------
async def w1_baseline() -> Any:
    source = await noop(0)
    outputs: dict[str, Any] = {}

    async def branch(key: str) -> None:
        outputs[key] = await noop(source)

    async with anyio.create_task_group() as tg:
        for i in range(FAN):
            tg.start_soon(branch, f"p{i}")
    return await noop({f"p{i}": outputs[f"p{i}"] for i in range(FAN)})


def w1_definition() -> PipelineDefinition:
    stage = NoOpStage()
    branches = [f"p{i}" for i in range(FAN)]
    return PipelineDefinition(
        name="w1",
        stages=[
            StageDefinition("source", stage),
            *(StageDefinition(b, stage, inputs=["source"]) for b in branches),
            StageDefinition("join", stage, inputs=branches),
        ],
    )


# -- W2: a chain of 200 ---------------------------------------------------------------------------
async def w2_baseline() -> Any:
    value: Any = 0
    for _ in range(CHAIN):
        value = await noop(value)
    return value


def w2_definition() -> PipelineDefinition:
    stage = NoOpStage()
    return PipelineDefinition(
        name="w2",
        stages=[
            StageDefinition(f"s{i}", stage, inputs=[f"s{i - 1}"] if i else []) for i in range(CHAIN)
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
) -> tuple[float, float]:
    """Medians (seconds) of interleaved runs, after one warm-up run of each."""
    await baseline()
    await candidate()
    base: list[float] = []
    cand: list[float] = []
    for _ in range(repeats):
        base.append(await timed(baseline))
        cand.append(await timed(candidate))
    return statistics.median(base), statistics.median(cand)


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


async def run(repeats: int, dag_repeats: int, backend: str) -> bool:
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
            )
        )

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
        )
    )

    print(
        f"pipeline overhead benchmark  backend={backend}  python={sys.version.split()[0]}  "
        f"repeats={repeats} (W4: {dag_repeats})  W4 critical path={ms(bound)}"
    )
    print("medians of interleaved runs; overhead = (pipeline - baseline) / stages or items\n")
    print_table(rows)
    return all(r.ok is not False for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (5, W4: 1)")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    repeats, dag_repeats = (5, 1) if args.quick else (15, 3)
    ok = anyio.run(run, repeats, dag_repeats, args.backend, backend=args.backend)
    print("\nall targets PASS" if ok else "\nsome targets FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Streaming (SPEC 11): source -> map -> map -> reduce, against hand-written anyio streams.

Shape, for N items: a source yields 0..N-1; `double` and `plus_one` are FAN_OUT stages over the
stream (max_concurrent_fan_out=4, default buffer); `total` sums its `AsyncIterator` input. The
baseline is the same shape written by hand: memory object streams (buffer 4) between a
generator, two pools of 4 worker tasks and a summing loop, all in one task group.

Each (implementation, size) runs in a fresh child process twice: once timed (and its peak RSS
read from `getrusage` when it ends: nothing else ran in that process), once under tracemalloc
for the peak of Python allocations. Targets: peak memory flat across sizes (the largest size
within 1.5x of the smallest, tracemalloc and RSS), per-item time within 3x of the baseline,
and the first item of `double` started before the source yields its second item.

Usage: python benchmarks/streaming.py [--quick] [--sizes 10000,100000,1000000]
       [--backend asyncio|trio]
The machine may be shared: absolute times are noisy; the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator  # noqa: TC003  # the stages' annotations are read at run time
from typing import Any

import anyio

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    stage,
)

CAP = 4
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (2_000, 20_000)
TARGET_MEMORY_GROWTH = 1.5
TARGET_TIME_RATIO = 3.0

first_item: dict[str, int] = {}
"""How many items the source had yielded when `double` started its first item."""
yielded = 0


# -- the pipeline ------------------------------------------------------------------------------
@stage
async def source(n: int, ctx: PipelineContext[Any]) -> AsyncIterator[int]:
    global yielded
    for i in range(n):
        yielded += 1
        yield i


@stage
async def double(x: int, ctx: PipelineContext[Any]) -> int:
    if not first_item:
        first_item["yielded"] = yielded
    return 2 * x


@stage
async def plus_one(x: int, ctx: PipelineContext[Any]) -> int:
    return x + 1


@stage
async def total(items: AsyncIterator[int], ctx: PipelineContext[Any]) -> int:
    acc = 0
    async for x in items:
        acc += x
    return acc


def definition() -> PipelineDefinition:
    fan = ExecutionPattern.FAN_OUT
    return PipelineDefinition(
        "stream-bench",
        [
            StageDefinition("source", source),
            StageDefinition(
                "double", double, pattern=fan, inputs=["source"], max_concurrent_fan_out=CAP
            ),
            StageDefinition(
                "plus_one", plus_one, pattern=fan, inputs=["double"], max_concurrent_fan_out=CAP
            ),
            StageDefinition("total", total, inputs=["plus_one"]),
        ],
    )


async def run_pipeline(n: int) -> int:
    result = await PipelineExecutor().execute(definition(), n)
    assert result.success, result.error
    out: int = result.outputs["total"]
    return out


# -- the same by hand ----------------------------------------------------------------------------
async def run_by_hand(n: int) -> int:
    async def produce(send: Any) -> None:
        async with send:
            for i in range(n):
                await send.send(i)

    async def work(fn: Any, receive: Any, send: Any) -> None:
        async with receive, send:
            async for x in receive:
                await send.send(await fn(x))

    async def dbl(x: int) -> int:
        return 2 * x

    async def inc(x: int) -> int:
        return x + 1

    acc = 0
    s1, r1 = anyio.create_memory_object_stream[int](CAP)
    s2, r2 = anyio.create_memory_object_stream[int](CAP)
    s3, r3 = anyio.create_memory_object_stream[int](CAP)
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce, s1)
        for _ in range(CAP):
            tg.start_soon(work, dbl, r1.clone(), s2.clone())
            tg.start_soon(work, inc, r2.clone(), s3.clone())
        r1.close()
        s2.close()
        r2.close()
        s3.close()
        async with r3:
            async for x in r3:
                acc += x
    return acc


# -- one measurement, in a child process --------------------------------------------------------
def child(impl: str, n: int, mode: str, backend: str) -> dict[str, Any]:
    fn = run_pipeline if impl == "pipeline" else run_by_hand
    if mode == "memory":
        tracemalloc.start()
    t0 = time.perf_counter()
    out = anyio.run(fn, n, backend=backend)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] if mode == "memory" else None
    assert out == sum(2 * i + 1 for i in range(n)), out
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "seconds": seconds,
        "peak": peak,
        "rss": rss_kib * 1024,
        "first_item_after": first_item.get("yielded"),
    }


def measure(impl: str, n: int, mode: str, backend: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", impl, str(n), mode, "--backend", backend],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--sizes", help="comma-separated item counts (default 10^4,10^5,10^6)")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, n, mode = args.child
        print(json.dumps(child(impl, int(n), mode, args.backend)))
        return
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    else:
        sizes = QUICK_SIZES if args.quick else SIZES
    print(f"source -> map -> map -> reduce, cap {CAP}, backend {args.backend}, one process each")
    header = (
        f"{'items':>9}  {'hand µs/item':>12}  {'pipeline µs/item':>16}  {'ratio':>6}  "
        f"{'hand peak (tm)':>14}  {'pipe peak (tm)':>14}  {'hand RSS':>10}  {'pipe RSS':>10}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    first_after = None
    for n in sizes:
        hand = measure("hand", n, "time", args.backend)
        pipe = measure("pipeline", n, "time", args.backend)
        hand_mem = measure("hand", n, "memory", args.backend)
        pipe_mem = measure("pipeline", n, "memory", args.backend)
        first_after = pipe["first_item_after"]
        hand_us = hand["seconds"] / n * 1e6
        pipe_us = pipe["seconds"] / n * 1e6
        rows.append((n, hand_us, pipe_us, hand_mem["peak"], pipe_mem["peak"], pipe["rss"]))
        print(
            f"{n:>9}  {hand_us:>12.2f}  {pipe_us:>16.2f}  {pipe_us / hand_us:>6.2f}  "
            f"{mib(hand_mem['peak']):>14}  {mib(pipe_mem['peak']):>14}  "
            f"{mib(hand['rss']):>10}  {mib(pipe['rss']):>10}"
        )
    verdicts = []
    small, large = rows[0], rows[-1]
    growth_tm = large[4] / small[4]
    growth_rss = large[5] / small[5]
    ok_mem = growth_tm <= TARGET_MEMORY_GROWTH and growth_rss <= TARGET_MEMORY_GROWTH
    verdicts.append(
        f"peak memory {small[0]} -> {large[0]} items: tracemalloc x{growth_tm:.2f}, "
        f"RSS x{growth_rss:.2f} (target <= {TARGET_MEMORY_GROWTH}x): "
        f"{'PASS' if ok_mem else 'FAIL'}"
    )
    worst = max(r[2] / r[1] for r in rows)
    verdicts.append(
        f"per-item time vs hand-written: worst x{worst:.2f} (target <= {TARGET_TIME_RATIO}x): "
        f"{'PASS' if worst <= TARGET_TIME_RATIO else 'FAIL'}"
    )
    verdicts.append(
        f"first `double` item started after the source yielded {first_after} item(s) "
        f"(target: 1): {'PASS' if first_after == 1 else 'FAIL'}"
    )
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()

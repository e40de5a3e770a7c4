"""CPU-bound fan-out: the same pipeline inline, on worker processes, or on a Dask cluster.

Run it with `python examples/cpu_fanout.py --runner processes` (or `inline`, `dask`). Each item
hashes a few kilobytes many times over: pure Python work that holds the GIL, so the event
loop or threads cannot run two items at once, while worker processes can. The script prints
how long the fan-out took on the runner you chose; compare the three.

`--items` and `--rounds` size the work; `--batch-size` sends that many items per runner call
(it matters for many small items, see benchmarks/runners.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from typing import Any

import anyio

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
)


def digest(seed: int, ctx: PipelineContext[Any]) -> str:
    """`rounds` chained SHA-256 of a 4 KiB block: milliseconds of pure CPU per item."""
    rounds = ctx.get_state("rounds", 2_000)
    block = seed.to_bytes(8, "little") * 512
    for _ in range(rounds):
        block = hashlib.sha256(block).digest() * 128
    ctx.increment_metric("hashed_items")
    return hashlib.sha256(block).hexdigest()[:12]


async def digest_on_the_loop(seed: int, ctx: PipelineContext[Any]) -> str:
    """`digest` as an async stage: "inline" runs it on the event loop itself."""
    return digest(seed, ctx)


def build(runner: str, batch_size: int | None) -> PipelineDefinition:
    """One fan-out stage on `runner`."""
    inline = runner == "inline"
    stage = StageDefinition(
        "digest",
        FunctionStage(digest_on_the_loop if inline else digest),
        pattern=ExecutionPattern.FAN_OUT,
        runner=runner,
        max_concurrent_fan_out=8,
        batch_size=None if inline else batch_size,
    )
    return PipelineDefinition("cpu_fanout", [stage])


def make_runners(runner: str, workers: int) -> dict[str, Any]:
    """The executor's runners for the choice ("inline" needs none)."""
    if runner == "processes":
        from pipeline.runners import ProcessRunner

        return {"processes": ProcessRunner(workers)}
    if runner == "dask":
        from pipeline.runners.dask import DaskRunner  # pip install 'wavepipe[dask]'

        return {"dask": DaskRunner(n_workers=workers)}
    return {}


async def main(runner: str, items: int, rounds: int, workers: int, batch_size: int | None) -> None:
    """Open the runner, run the fan-out once, print what it took."""
    runners = make_runners(runner, workers)
    executor = PipelineExecutor(runners=runners)
    definition = build(runner, batch_size)
    ctx: PipelineContext[Any] = PipelineContext(state={"rounds": rounds})
    pool = runners.get(runner)
    async with pool if pool is not None else _nothing():  # open it first: startup not timed
        t0 = time.perf_counter()
        result = await executor.execute(definition, list(range(items)), ctx)
        elapsed = time.perf_counter() - t0
    result.raise_for_failure()
    outputs = result.outputs["digest"]
    print(
        f"runner={runner:<9} items={items} rounds={rounds} workers={workers} "
        f"batch_size={batch_size}: {elapsed * 1000:.0f} ms "
        f"({elapsed * 1000 / items:.2f} ms/item, hashed {ctx.metrics['hashed_items']}, "
        f"first {outputs[0]})"
    )


class _nothing:  # a do-nothing async context manager, named like contextlib's
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runner", choices=["inline", "processes", "dask"], default="processes")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2_000, help="hash rounds per item")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    anyio.run(main, args.runner, args.items, args.rounds, args.workers, args.batch_size)

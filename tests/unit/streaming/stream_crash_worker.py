"""A streaming pipeline run in a child process by `test_stream_resume.py` (not a test module).

    stream_crash_worker.py DB LOG [KILL_AT]

`pages` yields 0..7 (logging `pages:i` as it yields); `square` maps over the stream, one item
at a time, logging `square:i` and caching each item's output; `total` sums the stream. At
`square:KILL_AT` the item prints "ready" and blocks, so the parent can SIGKILL the process
mid-stream. At the end the run's summary is printed as JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator  # noqa: TC003  # stages' annotations are read at run time
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
from pipeline.cache import SQLiteCache

ITEMS = 8


def _append(path: str, line: str) -> None:
    with open(path, "a") as log:  # a few bytes; the kernel keeps them through SIGKILL
        log.write(line + "\n")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def build(log: str, kill_at: int | None) -> PipelineDefinition:
    @stage
    async def pages(_: Any, ctx: PipelineContext[Any]) -> AsyncIterator[int]:
        for i in range(ITEMS):
            _append(log, f"pages:{i}")
            yield i

    @stage
    async def square(x: int, ctx: PipelineContext[Any]) -> int:
        _append(log, f"square:{x}")
        if x == kill_at:
            _say("ready")
            await anyio.sleep_forever()
        return x * x

    @stage
    async def total(items: AsyncIterator[int], ctx: PipelineContext[Any]) -> int:
        return sum([x async for x in items])

    return PipelineDefinition(
        "stream-crash",
        [
            StageDefinition("pages", pages),
            StageDefinition(
                "square",
                square,
                pattern=ExecutionPattern.FAN_OUT,
                inputs=["pages"],
                max_concurrent_fan_out=1,
            ),
            StageDefinition("total", total, inputs=["square"], cache=False),
        ],
    )


async def main(argv: list[str]) -> None:
    db, log, *rest = argv
    pipeline = build(log, int(rest[0]) if rest else None)
    async with SQLiteCache(db) as store:
        result = await PipelineExecutor(cache=store).execute(pipeline)
    stats = result.cache_stats.model_dump() if result.cache_stats else None
    summary = {
        "success": result.success,
        "stats": stats,
        "error": result.error,
        "total": result.outputs.get("total"),
        "cached_items": result.stage_runs["square"].cached_items,
    }
    _say(json.dumps(summary))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])

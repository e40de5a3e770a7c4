"""A pipeline run in a child process by `test_steps_crash.py` (not a test module itself).

    steps_crash_worker.py DB LOG [KILL_AFTER]

One stage makes five durable steps on a `SQLiteCache` at DB; every paid call appends its step
number to LOG (odd steps are async functions, even ones sync, run in a worker thread). With
KILL_AFTER = k the process SIGKILLs itself right after step k returned, so nothing after it
(other steps, the stage's end, the cache's close) happens. At the end the run's summary is
printed as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import anyio

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
)
from pipeline.cache import SQLiteCache

STEPS = 5


def _append(path: str, line: str) -> None:
    with open(path, "a") as log:  # a few bytes; the kernel keeps them through SIGKILL
        log.write(line + "\n")


def build(log: str, kill_after: int | None) -> PipelineDefinition:
    def pay_sync(k: int) -> int:
        _append(log, str(k))
        return k * k

    async def pay_async(k: int) -> int:
        _append(log, str(k))
        return k * k

    async def calls(input: Any, context: PipelineContext[Any]) -> int:
        total = 0
        for k in range(1, STEPS + 1):
            fn = pay_async if k % 2 else pay_sync
            total += await context.step(f"call{k}", fn, k)
            if k == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return total

    # The stage itself is cached too: only its steps may be replayed, never a partial stage.
    return PipelineDefinition("steps-crash", [StageDefinition("calls", FunctionStage(calls))])


async def main(argv: list[str]) -> None:
    db, log, *rest = argv
    definition = build(log, int(rest[0]) if rest else None)
    async with SQLiteCache(db) as store:
        result = await PipelineExecutor(cache=store).execute(definition)
    steps = [[s.name, s.cached, s.attempts] for s in result.stage_runs["calls"].steps]
    summary = {
        "success": result.success,
        "error": result.error,
        "outputs": result.outputs,
        "steps": steps,
        "stats": result.cache_stats.model_dump() if result.cache_stats else None,
    }
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])

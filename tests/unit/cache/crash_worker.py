"""A pipeline run in a child process by `test_crash_resume.py` (not a test module itself).

    crash_worker.py DB LOG run [KILL_AT]     A -> B -> C (fan-out over 8 items, one at a time) -> D
    crash_worker.py DB LOG fan START STOP    one fan-out stage over range(START, STOP), after "go"

Every execution appends its label to LOG. At KILL_AT the stage prints "ready" and blocks, so
the parent can SIGKILL it there. At the end the run's summary is printed as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)
from pipeline.cache import SQLiteCache

ITEMS = 8


def _append(path: str, line: str) -> None:
    with open(path, "a") as log:  # a few bytes; the kernel keeps them through SIGKILL
        log.write(line + "\n")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Step:
    """Logs `label` (or `label:item`), blocks at the kill point, returns its input plus one."""

    def __init__(self, name: str, log: str, kill_at: str | None, *, per_item: bool) -> None:
        self.name = name
        self.log = log
        self.kill_at = kill_at
        self.per_item = per_item

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[int]:
        label = f"{self.name}:{input}" if self.per_item else self.name
        _append(self.log, label)
        if label == self.kill_at:
            _say("ready")
            await anyio.sleep_forever()
        if self.per_item:
            return StageResult.success(input * 10)
        return StageResult.success(len(input) if isinstance(input, list) else 1)


class Items:
    name = "items"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[list[int]]:
        return StageResult.success(list(range(ITEMS)))


def chain(log: str, kill_at: str | None) -> PipelineDefinition:
    fan_out = ExecutionPattern.FAN_OUT
    return PipelineDefinition(
        "crash",
        [
            StageDefinition("A", Step("A", log, kill_at, per_item=False)),
            StageDefinition("B", Step("B", log, kill_at, per_item=False), inputs=["A"]),
            StageDefinition("items", Items(), inputs=["B"], cache=False),
            StageDefinition(
                "C",
                Step("C", log, kill_at, per_item=True),
                inputs=["items"],
                pattern=fan_out,
                max_concurrent_fan_out=1,
            ),
            StageDefinition("D", Step("D", log, kill_at, per_item=False), inputs=["C"]),
        ],
    )


def fan(log: str, start: int, stop: int) -> tuple[PipelineDefinition, list[int]]:
    stage = Step("C", log, None, per_item=True)
    definition = StageDefinition(
        "C", stage, pattern=ExecutionPattern.FAN_OUT, max_concurrent_fan_out=8
    )
    return PipelineDefinition("fan", [definition]), list(range(start, stop))


async def main(argv: list[str]) -> None:
    db, log, mode, *rest = argv
    if mode == "run":
        pipeline, initial = chain(log, rest[0] if rest else None), None
    else:
        pipeline, initial = fan(log, int(rest[0]), int(rest[1]))
        _say("waiting")
        await anyio.to_thread.run_sync(sys.stdin.readline)  # the parent's "go"
    async with SQLiteCache(db) as store:
        result = await PipelineExecutor(cache=store).execute(pipeline, initial)
    stats = result.cache_stats.model_dump() if result.cache_stats else None
    summary = {"success": result.success, "stats": stats, "error": result.error}
    _say(json.dumps(summary))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])

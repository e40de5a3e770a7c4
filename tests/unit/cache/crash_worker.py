"""A pipeline run in a child process by `test_crash_resume.py` (not a test module itself).

    crash_worker.py DB LOG run [KILL_AT]     A -> B -> C (fan-out over 8 items, one at a time) -> D
    crash_worker.py DB LOG fan START STOP    one fan-out stage over range(START, STOP), after "go"
    crash_worker.py DB LOG big [KILL_IN]     A -> Big (an output stored as an artifact) -> D

DB is a SQLite file or a `redis://` URL (namespace from $PIPELINE_TEST_NAMESPACE); artifacts
go to $PIPELINE_TEST_ARTIFACTS when set. Every execution appends its label to LOG. At KILL_AT
the stage prints "ready" and blocks, so the parent can SIGKILL it there; KILL_IN does the same
inside Big's artifact write: "partial" (half the bytes written), "rename" (temp file complete,
not yet committed) or "entry" (artifact committed, entry not yet written). At the end the
run's summary is printed as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import anyio

import pipeline.cache._artifacts as artifacts_module
from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)
from pipeline.cache import CacheStore, RedisCache, SQLiteCache

ITEMS = 8
BIG = 300_000  # characters of Big's output; the worker's artifact threshold is 100_000 bytes


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


class Big:
    name = "Big"

    def __init__(self, log: str) -> None:
        self.log = log

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[str]:
        _append(self.log, "Big")
        return StageResult.success("x" * BIG)


def big(log: str) -> PipelineDefinition:
    return PipelineDefinition(
        "big",
        [
            StageDefinition("A", Step("A", log, None, per_item=False)),
            StageDefinition("Big", Big(log), inputs=["A"]),
            StageDefinition("D", Step("D", log, None, per_item=False), inputs=["Big"]),
        ],
    )


def _block_forever() -> None:
    _say("ready")
    threading.Event().wait()  # a worker thread; the parent kills the process here


def kill_inside_artifact_write(where: str) -> None:
    """Make Big's artifact write stop at `where` (see the module docstring)."""
    if where == "partial":

        class HalfWriter:
            def __init__(self, path: str, mode: str) -> None:
                self.file = open(path, mode)  # noqa: SIM115  # closed by the kill

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: object) -> None:
                self.file.close()

            def write(self, data: bytes) -> None:
                self.file.write(data[: len(data) // 2])
                self.file.flush()
                _block_forever()

        artifacts_module.open = HalfWriter  # type: ignore[attr-defined]  # the module's open()
    elif where == "rename":
        real_replace = os.replace

        def replace_unless_artifact(src: Any, dst: Any) -> None:
            if str(src).endswith(".part"):
                _block_forever()
            real_replace(src, dst)

        os.replace = replace_unless_artifact  # type: ignore[assignment]  # this process only
    elif where == "entry":
        pack = artifacts_module.Artifacts.pack

        async def pack_then_stop(self: Any, value: bytes, key: str | None) -> bytes:
            stored = await pack(self, value, key)
            if self.takes(value):
                await anyio.to_thread.run_sync(_block_forever)
            return stored

        artifacts_module.Artifacts.pack = pack_then_stop  # type: ignore[method-assign]


def open_store(db: str) -> CacheStore:
    location = os.environ.get("PIPELINE_TEST_ARTIFACTS")
    options: dict[str, Any] = {"artifacts": location, "artifact_threshold_bytes": 100_000}
    if db.startswith("redis://"):
        namespace = os.environ.get("PIPELINE_TEST_NAMESPACE", "pipeline")
        return RedisCache(db, namespace=namespace, **options)
    return SQLiteCache(db, **options)


async def main(argv: list[str]) -> None:
    db, log, mode, *rest = argv
    if mode == "run":
        pipeline, initial = chain(log, rest[0] if rest else None), None
    elif mode == "big":
        pipeline, initial = big(log), None
        if rest:
            kill_inside_artifact_write(rest[0])
    else:
        pipeline, initial = fan(log, int(rest[0]), int(rest[1]))
        _say("waiting")
        await anyio.to_thread.run_sync(sys.stdin.readline)  # the parent's "go"
    async with open_store(db) as store:  # type: ignore[attr-defined]  # both stores are contexts
        result = await PipelineExecutor(cache=store).execute(pipeline, initial)
    stats = result.cache_stats.model_dump() if result.cache_stats else None
    summary = {"success": result.success, "stats": stats, "error": result.error}
    _say(json.dumps(summary))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])

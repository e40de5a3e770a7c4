"""Resume after failure: the second run serves finished stages from a SQLite cache.

Run it with `python examples/resume_after_failure.py`. The first run fails at `publish`
(a simulated outage); the second run, after the "fix", executes only `publish` while
`fetch` and `summarize` come from the cache. The cache lives in a fresh temp dir, so the
script shows both runs every time it is started.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    StageDefinition,
    StageResult,
)
from pipeline.cache import SQLiteCache


class Article(BaseModel):
    title: str
    words: list[str]


class Fetch:
    name = "fetch"

    async def execute(self, input: str, context: PipelineContext[Any]) -> StageResult[Article]:
        print("  executing fetch")
        return StageResult.success(Article(title=input, words=input.lower().split()))


class Summarize:
    name = "summarize"

    async def execute(self, input: Article, context: PipelineContext[Any]) -> StageResult[str]:
        print("  executing summarize")
        return StageResult.success(f"{input.title} ({len(input.words)} words)")


class Publish:
    name = "publish"

    def __init__(self) -> None:
        self.outage = True

    async def execute(self, input: str, context: PipelineContext[Any]) -> StageResult[str]:
        print("  executing publish")
        if self.outage:
            return StageResult.failure("publishing service unavailable")
        return StageResult.success(f"published: {input}")


def report(result: PipelineResult) -> None:
    for sid, run in result.stage_runs.items():
        origin = "cache" if run.cached else "executed"
        print(f"  {sid:<10} {run.status.value:<10} {origin}")
    print(f"  success={result.success} cache={result.cache_stats}")


async def main() -> None:
    publish = Publish()
    pipeline = PipelineDefinition(
        "articles",
        [
            StageDefinition("fetch", Fetch()),
            StageDefinition("summarize", Summarize(), inputs=["fetch"]),
            StageDefinition("publish", publish, inputs=["summarize"]),
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteCache(Path(tmp) / "pipeline-cache.db") as cache:
            executor = PipelineExecutor(cache=cache)

            print("run 1 (publish is down):")
            first = await executor.execute(pipeline, "Resume After Failure")
            report(first)
            assert not first.success

            publish.outage = False  # the fix
            print("run 2 (after the fix):")
            second = await executor.execute(pipeline, "Resume After Failure")
            report(second)
            assert second.success
            assert second.stage_runs["fetch"].cached
            assert second.stage_runs["summarize"].cached
            print(f"  output: {second.get_output('publish')}")


if __name__ == "__main__":
    anyio.run(main)

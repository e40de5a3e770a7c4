"""The examples of the README section "Testing your pipelines", written as a user would.

Keep the two in step: each test here is one snippet there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
    StageDefinition,
    StageStatus,
    stage,
)
from pipeline.testing import Delay, Fail, FakeClock, ScriptedStage, record_run, run_stage


# -- the code under test -----------------------------------------------------------------------
@dataclass
class Deps:
    stopwords: frozenset[str]


@stage
async def tokenize(text: str, ctx: PipelineContext[Deps]) -> list[str]:
    words = [w for w in text.lower().split() if w not in ctx.deps.stopwords]
    ctx.increment_metric("words", len(words))
    return words


@stage
def count(words: list[str], ctx: PipelineContext[Any]) -> dict[str, int]:  # runs in a thread
    counts: dict[str, int] = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    return counts


def word_count(fetch: Any) -> PipelineDefinition:
    return PipelineDefinition(
        "word-count",
        [
            StageDefinition(
                "fetch",
                fetch,
                retry_config=RetryConfig(max_attempts=3, initial_delay_ms=500),
                timeout_ms=2_000,
            ),
            StageDefinition("tokenize", tokenize, inputs=["fetch"]),
            StageDefinition("count", count, inputs=["tokenize"]),
        ],
    )


# -- 1. one stage, no pipeline ----------------------------------------------------------------
async def test_tokenize_drops_stopwords() -> None:
    result, ctx = await run_stage(tokenize, "The cat and the hat", deps=Deps(frozenset({"the"})))

    assert result.output == ["cat", "and", "hat"]
    assert ctx.metrics == {"words": 3}


# -- 2. retries without waiting ---------------------------------------------------------------
async def test_fetch_is_retried_with_backoff(
    pipeline_executor: PipelineExecutor, fake_clock: FakeClock
) -> None:
    fetch = ScriptedStage(ConnectionError("reset"), Fail("HTTP 503"), "a b a")
    context = PipelineContext(deps=Deps(frozenset()))

    result = await pipeline_executor.execute(word_count(fetch), "https://x", context)

    assert result.get_output("count") == {"a": 2, "b": 1}
    assert fetch.inputs == ["https://x"] * 3
    assert fake_clock.sleeps == [0.5, 1.0]  # 500 ms, then 1 s: no real waiting
    assert result.stage_runs["fetch"].attempts == 3


# -- 3. timeouts in virtual time ---------------------------------------------------------------
async def test_slow_fetch_times_out(fake_clock: FakeClock) -> None:
    executor = PipelineExecutor(clock=fake_clock)
    fetch = ScriptedStage(Delay(60, then="too late"), repeat_last=True, clock=fake_clock)

    result = await executor.execute(word_count(fetch), "https://x")

    assert result.failed_stages == ["fetch"]
    assert result.get_result("fetch").error == (
        "Failed after 3 attempts. Last error: Timeout: stage 'fetch' exceeded timeout_ms=2000"
    )


# -- 4. what ran, in which order ----------------------------------------------------------------
async def test_stages_run_in_order(pipeline_executor: PipelineExecutor) -> None:
    recorded, recorder = record_run(word_count(ScriptedStage("x y")))

    await pipeline_executor.execute(recorded, "https://x", PipelineContext(deps=Deps(frozenset())))

    assert recorder.started == ["fetch", "tokenize", "count"]
    assert recorder.statuses == dict.fromkeys(["fetch", "tokenize", "count"], StageStatus.SUCCEEDED)
    assert recorder.inputs("count") == [["x", "y"]]

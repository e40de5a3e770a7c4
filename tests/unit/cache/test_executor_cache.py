"""The executor with a cache: success-only writes, visible resume, and a cache that cannot fail a run."""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from pydantic import BaseModel

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
    skipped_result,
)
from pipeline.cache import CacheKey, CacheStore, MemoryCache, SQLiteCache
from pipeline.testing import FakeClock

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

StoreFactory = Callable[..., CacheStore]


class Counted:
    """A stage that counts its calls and applies `fn`, or fails while `broken` is set."""

    def __init__(self, name: str, fn: Callable[[Any], Any] = lambda x: x) -> None:
        self.name = name
        self.fn = fn
        self.calls = 0
        self.broken = False

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        self.calls += 1
        if self.broken:
            return StageResult.failure(f"{self.name} is broken")
        return StageResult.success(self.fn(input))


def chain(*stages: Counted, **options: Any) -> PipelineDefinition:
    defs = [
        StageDefinition(s.name, s, inputs=[stages[i - 1].name] if i else [], **options)
        for i, s in enumerate(stages)
    ]
    return PipelineDefinition("chain", defs)


def calls(*stages: Counted) -> list[int]:
    return [s.calls for s in stages]


async def test_rerun_after_fix_executes_only_the_failed_stage(make_store: StoreFactory) -> None:
    store = make_store()
    a, b, c = Counted("a", lambda x: x + 1), Counted("b", lambda x: x * 10), Counted("c", str)
    c.broken = True
    executor = PipelineExecutor(cache=store)
    pipeline = chain(a, b, c)

    first = await executor.execute(pipeline, 1)
    assert not first.success
    assert calls(a, b, c) == [1, 1, 1]
    assert first.cache_stats is not None
    assert (first.cache_stats.hits, first.cache_stats.misses, first.cache_stats.writes) == (0, 3, 2)

    c.broken = False  # "fix C"
    second = await executor.execute(pipeline, 1)
    assert second.success
    assert second.outputs == {"a": 2, "b": 20, "c": "20"}
    assert calls(a, b, c) == [1, 1, 2]
    assert {sid: run.cached for sid, run in second.stage_runs.items()} == {
        "a": True,
        "b": True,
        "c": False,
    }
    assert second.stage_runs["a"].attempts == 0
    assert second.stage_runs["a"].status is StageStatus.SUCCEEDED
    assert second.cache_stats is not None
    assert (second.cache_stats.hits, second.cache_stats.misses) == (2, 1)
    assert "cache_stats" not in second.metadata

    third = await executor.execute(pipeline, 1)
    assert third.outputs == second.outputs
    assert calls(a, b, c) == [1, 1, 2]
    await store.aclose()


async def test_no_cache_means_no_stats_and_no_change() -> None:
    a = Counted("a")
    result = await PipelineExecutor().execute(chain(a), 1)
    await PipelineExecutor().execute(chain(a), 1)
    assert result.cache_stats is None
    assert a.calls == 2
    assert not result.stage_runs["a"].cached


async def test_cache_false_opts_a_stage_out() -> None:
    store = MemoryCache()
    a, b = Counted("a"), Counted("b")
    pipeline = PipelineDefinition(
        "p", [StageDefinition("a", a), StageDefinition("b", b, inputs=["a"], cache=False)]
    )
    await PipelineExecutor(cache=store).execute(pipeline, 1)
    result = await PipelineExecutor(cache=store).execute(pipeline, 1)
    assert calls(a, b) == [1, 2]
    assert await store.count("b") == 0
    assert result.cache_stats is not None
    assert result.cache_stats.hits == 1
    assert result.cache_stats.misses == 0


async def test_version_input_and_invalidate_change_what_is_served() -> None:
    store = MemoryCache()
    a = Counted("a")
    executor = PipelineExecutor(cache=store)
    await executor.execute(chain(a), 1)
    await executor.execute(chain(a), 1)
    assert a.calls == 1
    await executor.execute(chain(a), 2)  # another input
    assert a.calls == 2
    await executor.execute(chain(a, cache_version=1), 1)  # another version
    assert a.calls == 3
    await executor.execute(chain(a, cache_version=1), 1)
    assert a.calls == 3
    assert await store.invalidate("a") == 3
    await executor.execute(chain(a, cache_version=1), 1)
    assert a.calls == 4
    await store.clear()
    await executor.execute(chain(a, cache_version=1), 1)
    assert a.calls == 5


async def test_ttl_expiry_recomputes(make_store: StoreFactory) -> None:
    now = [0.0]
    store = make_store(ttl_s=10, time_fn=lambda: now[0])
    a = Counted("a")
    executor = PipelineExecutor(cache=store)
    await executor.execute(chain(a), 1)
    now[0] = 10
    await executor.execute(chain(a), 1)
    assert a.calls == 1
    now[0] = 10.5
    await executor.execute(chain(a), 1)
    assert a.calls == 2
    await store.aclose()


class SelfSkipping:
    name = "self_skipping"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return skipped_result("nothing to do")


class SleepsOnClock:
    name = "slow"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await self.clock.sleep(5)  # past timeout_ms: the deadline fires
        await anyio.lowlevel.checkpoint()
        return StageResult.success("too late")


async def test_only_successes_are_written(make_store: StoreFactory) -> None:
    store = make_store()
    clock = FakeClock()
    broken = Counted("broken")
    broken.broken = True
    stages = [
        StageDefinition("ok", Counted("ok")),
        StageDefinition("non_critical", broken, critical=False),
        StageDefinition("skipped", Counted("skipped"), condition=lambda ctx: False),
        StageDefinition("self_skipping", SelfSkipping()),
        StageDefinition("timed_out", SleepsOnClock(clock), timeout_ms=10),
    ]
    pipeline = PipelineDefinition("p", stages, fail_fast=False)
    result = await PipelineExecutor(cache=store, clock=clock).execute(pipeline, 1)
    assert result.failed_stages == ["non_critical", "timed_out"]
    assert result.skipped_stages == ["skipped", "self_skipping"]
    assert await store.count() == 1
    assert await store.count("ok") == 1
    assert result.cache_stats is not None
    assert result.cache_stats.writes == 1
    await store.aclose()


async def test_cancelled_stages_write_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    started = anyio.Event()

    class Waits:
        name = "waits"

        async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            started.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    class FailsOnceStarted:
        name = "fails"

        async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            await started.wait()
            return StageResult.failure("boom")

    pipeline = PipelineDefinition(
        "p", [StageDefinition("waits", Waits()), StageDefinition("fails", FailsOnceStarted())]
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor(cache=store).execute(pipeline, 1)
    assert result.cancelled_stages == ["waits"]
    assert await store.count() == 0
    await store.aclose()


async def test_a_hit_makes_no_attempt_and_no_retry_wait() -> None:
    clock = FakeClock()

    class Flaky:
        name = "flaky"
        calls = 0

        async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[int]:
            Flaky.calls += 1
            if Flaky.calls == 1:
                return StageResult.failure("transient")
            return StageResult.success(42)

    pipeline = PipelineDefinition(
        "p", [StageDefinition("flaky", Flaky(), retry_config=RetryConfig(max_attempts=3))]
    )
    executor = PipelineExecutor(cache=MemoryCache(), clock=clock)
    first = await executor.execute(pipeline)
    assert first.stage_runs["flaky"].attempts == 2
    assert clock.sleeps == [1.0]
    second = await executor.execute(pipeline)
    assert second.outputs == {"flaky": 42}
    assert second.stage_runs["flaky"].attempts == 0
    assert second.stage_runs["flaky"].cached
    assert second.stage_results["flaky"].metadata == {"cached": True}
    assert Flaky.calls == 2
    assert clock.sleeps == [1.0]


class Opaque:
    """No JSON form: an input like this has no fingerprint."""


async def test_an_unfingerprintable_input_is_reported_and_not_cached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryCache()
    a = Counted("a", lambda x: "done")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        await PipelineExecutor(cache=store).execute(chain(a), Opaque())
        result = await PipelineExecutor(cache=store).execute(chain(a), Opaque())
    assert result.success
    assert a.calls == 2
    assert await store.count() == 0
    run = result.stage_runs["a"]
    assert not run.cached
    assert len(run.cache_warnings) == 1
    assert "cannot fingerprint input" in run.cache_warnings[0]
    assert "Opaque" in run.cache_warnings[0]
    assert result.cache_stats is not None
    assert result.cache_stats.uncacheable == 1
    assert result.cache_stats.misses == 0
    assert "cannot fingerprint input" in caplog.text


class BrokenStore:
    """A store whose every operation fails."""

    async def get(self, key: CacheKey) -> bytes | None:
        raise OSError("disk on fire")

    async def put(self, key: CacheKey, value: bytes) -> None:
        raise OSError("disk on fire")

    async def delete(self, key: CacheKey) -> bool:
        raise OSError("disk on fire")

    async def invalidate(self, stage_id: str) -> int:
        raise OSError("disk on fire")

    async def clear(self) -> None:
        raise OSError("disk on fire")

    async def count(self, stage_id: str | None = None) -> int:
        raise OSError("disk on fire")

    async def aclose(self) -> None:
        pass


async def test_cache_errors_never_fail_a_run(tmp_path: Any) -> None:
    a = Counted("a", lambda x: x + 1)
    result = await PipelineExecutor(cache=BrokenStore()).execute(chain(a), 1)
    assert result.success
    assert result.outputs == {"a": 2}
    run = result.stage_runs["a"]
    assert [e.split(":")[0] for e in run.cache_errors] == [
        "read failed, recomputing",
        "write failed",
    ]
    assert result.cache_stats is not None
    assert result.cache_stats.errors == 2

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"garbage" * 1000)
    store = SQLiteCache(corrupt)
    result = await PipelineExecutor(cache=store).execute(chain(a), 1)
    assert result.success
    assert "CacheError" in result.stage_runs["a"].cache_errors[0]
    await store.aclose()


async def test_an_unreadable_entry_is_recomputed_and_replaced() -> None:
    store = MemoryCache()
    a = Counted("a", lambda x: x + 1)
    executor = PipelineExecutor(cache=store)
    await executor.execute(chain(a), 1)
    for digest, (sid, created, _) in list(store._entries.items()):
        store._entries[digest] = (sid, created, b"json\n{not json")
    result = await executor.execute(chain(a), 1)
    assert a.calls == 2
    assert result.outputs == {"a": 2}
    assert "read failed" in result.stage_runs["a"].cache_errors[0]
    await executor.execute(chain(a), 1)
    assert a.calls == 2  # the rerun replaced the bad entry


class Tag(BaseModel):
    label: str


@dataclass
class Report:
    tags: list[Tag]
    score: float


class MakesReport:
    name = "report"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Report]:
        return StageResult.success(Report(tags=[Tag(label=str(input))], score=0.5))


class MakesTag:
    name = "tag"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(Tag(label=str(input)))


async def test_outputs_come_back_as_their_declared_types(make_store: StoreFactory) -> None:
    store = make_store()
    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("report", MakesReport()),
            StageDefinition(
                "tags",
                MakesTag(),
                inputs=["items"],
                output_type=Tag,
                pattern=ExecutionPattern.FAN_OUT,
            ),
            StageDefinition("items", Counted("items", lambda x: [1, 2, 3])),
        ],
    )
    executor = PipelineExecutor(cache=store)
    first = await executor.execute(pipeline, 7)
    second = await executor.execute(pipeline, 7)
    assert all(run.cached for run in second.stage_runs.values())
    assert second.outputs == first.outputs
    assert isinstance(second.outputs["report"], Report)
    assert all(isinstance(t, Tag) for t in second.outputs["tags"])
    await store.aclose()


async def test_an_undeclared_model_output_is_not_cached_and_says_why() -> None:
    pipeline = PipelineDefinition("p", [StageDefinition("tag", MakesTag())])
    result = await PipelineExecutor(cache=MemoryCache()).execute(pipeline, 1)
    assert result.success
    assert "declare output_type" in result.stage_runs["tag"].cache_warnings[0]
    assert result.cache_stats is not None
    assert result.cache_stats.uncacheable == 1


class ItemStage:
    """Squares items; fails the items in `bad`; records which items ran."""

    name = "items"

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.ran: list[int] = []
        self.succeeded: list[int] = []

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
        self.ran.append(input)
        await anyio.lowlevel.checkpoint()
        if input in self.bad:
            return StageResult.failure(f"item {input} is bad")
        self.succeeded.append(input)
        return StageResult.success(input * input)


def fan_out(stage: Any, cap: int | None = 4) -> PipelineDefinition:
    return PipelineDefinition(
        "fan",
        [
            StageDefinition(
                "items", stage, pattern=ExecutionPattern.FAN_OUT, max_concurrent_fan_out=cap
            )
        ],
    )


async def test_fan_out_rerun_executes_only_failed_and_unfinished_items(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    items = list(range(100))
    stage = ItemStage(bad={37})
    executor = PipelineExecutor(cache=store)
    first = await executor.execute(fan_out(stage), items)
    assert not first.success
    done_first = set(stage.succeeded)
    assert len(done_first) >= 30
    assert set(stage.ran) > done_first  # some items were cancelled mid-way
    assert await store.count("items") == len(done_first)  # nothing of the failed item

    stage.bad.clear()
    stage.ran.clear()
    second = await executor.execute(fan_out(stage), items)
    assert second.success
    assert second.outputs["items"] == [i * i for i in items]
    assert set(stage.ran) == set(items) - done_first
    assert 37 in stage.ran
    run = second.stage_runs["items"]
    assert run.cached_items == len(done_first)
    assert not run.cached
    assert second.stage_results["items"].metadata["cached_items"] == len(done_first)

    stage.ran.clear()
    third = await executor.execute(fan_out(stage), items)
    assert stage.ran == []
    assert third.stage_runs["items"].cached
    assert third.stage_runs["items"].cached_items == 100
    await store.aclose()


class SlowPutStore:
    """Wraps a store so a write spans many scheduler turns, and says when one begins."""

    def __init__(self, inner: MemoryCache) -> None:
        self.inner = inner
        self.put_started = anyio.Event()

    async def get(self, key: CacheKey) -> bytes | None:
        return await self.inner.get(key)

    async def put(self, key: CacheKey, value: bytes) -> None:
        self.put_started.set()
        for _ in range(50):  # a cancelled, unshielded write would die in here
            await anyio.lowlevel.checkpoint()
        await self.inner.put(key, value)

    async def delete(self, key: CacheKey) -> bool:
        return await self.inner.delete(key)

    async def invalidate(self, stage_id: str) -> int:
        return await self.inner.invalidate(stage_id)

    async def clear(self) -> None:
        await self.inner.clear()

    async def count(self, stage_id: str | None = None) -> int:
        return await self.inner.count(stage_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_succeeded_item_keeps_its_entry_when_a_sibling_cancels_the_stage() -> None:
    inner = MemoryCache()
    store = SlowPutStore(inner)

    class FailsAfterFirstWriteBegins:
        name = "items"

        async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
            if input == 0:
                return StageResult.success(0)
            await store.put_started.wait()
            return StageResult.failure("sibling failed")

    with anyio.fail_after(5):
        result = await PipelineExecutor(cache=store).execute(
            fan_out(FailsAfterFirstWriteBegins(), cap=None), [0, 1]
        )
    assert not result.success
    assert result.get_result("items").metadata["failed_items"] == [1]
    assert await inner.count("items") == 1


STAGE_SOURCE = """
from pipeline import StageResult


class Stage:
    name = "s"

    async def execute(self, input, context):
        return StageResult.success({body})
"""


def load_stage(tmp_path: Path, module: str, body: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh `Stage` class from its own file, whose source `inspect` can find."""
    path = tmp_path / f"{module}.py"
    path.write_text(STAGE_SOURCE.format(body=body))
    spec = importlib.util.spec_from_file_location(module, path)
    assert spec is not None
    assert spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module, loaded)
    spec.loader.exec_module(loaded)
    return loaded.Stage()


async def test_code_fingerprint_makes_an_edited_stage_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryCache()
    executor = PipelineExecutor(cache=store)

    async def output_of(stage: Any, *, code: bool) -> tuple[Any, bool]:
        definition = PipelineDefinition(
            "p", [StageDefinition("s", stage, cache_code_fingerprint=code)]
        )
        result = await executor.execute(definition, 1)
        return result.outputs["s"], result.stage_runs["s"].cached

    v1 = load_stage(tmp_path, "stage_v1", "input", monkeypatch)
    same = load_stage(tmp_path, "stage_same", "input", monkeypatch)
    edited = load_stage(tmp_path, "stage_v2", "input + 100", monkeypatch)
    assert await output_of(v1, code=True) == (1, False)
    assert await output_of(same, code=True) == (1, True)  # same source: a hit
    assert await output_of(edited, code=True) == (101, False)  # edited source: recomputed
    # Without the opt-in the key ignores the source, so the edit is not noticed.
    assert await output_of(v1, code=False) == (1, False)
    assert await output_of(edited, code=False) == (1, True)


async def test_code_fingerprint_without_source_is_not_cached_and_says_why() -> None:
    namespace: dict[str, Any] = {}
    exec(STAGE_SOURCE.format(body="input"), namespace)  # no file behind the class
    definition = PipelineDefinition(
        "p", [StageDefinition("s", namespace["Stage"](), cache_code_fingerprint=True)]
    )
    store = MemoryCache()
    result = await PipelineExecutor(cache=store).execute(definition, 1)
    assert result.success
    assert result.outputs == {"s": 1}
    assert await store.count() == 0
    assert "source unavailable" in result.stage_runs["s"].cache_warnings[0]
    assert result.cache_stats is not None
    assert result.cache_stats.uncacheable == 1


def test_resume_on_trio(tmp_path: Any) -> None:
    async def scenario() -> PipelineResult:
        async with SQLiteCache(tmp_path / "trio.db") as store:
            executor = PipelineExecutor(cache=store)
            await executor.execute(chain(a), 1)
            return await executor.execute(chain(a), 1)

    a = Counted("a", lambda x: x + 1)
    result: PipelineResult = anyio.run(scenario, backend="trio")
    assert a.calls == 1
    assert result.stage_runs["a"].cached

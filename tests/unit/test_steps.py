"""Durable steps (`context.step`): replay after a failure, retry per step, cache rules, records.

Pipelines run through `PipelineExecutor(cache=...)` on asyncio and trio, with a `MemoryCache`
and a `SQLiteCache` (reopened on the same file for a rerun, as a new process would). Paid calls
are counted by the step functions; waits are virtual (`FakeClock.sleeps`). The crash-and-resume
test across processes is `test_steps_crash.py`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel

from pipeline import (
    CircuitOpenError,
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    ResourceError,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline._steps import step_key, step_output_type
from pipeline.cache import CacheStore, MemoryCache, SQLiteCache
from pipeline.cache._key import fingerprint, make_key
from pipeline.errors import DefinitionError
from pipeline.events import PipelineEvent, ResourceWaited, StepFinished
from pipeline.resources import CircuitBreaker, Resource
from pipeline.testing import FakeClock, run_stage
from tests.unit._support import BACKENDS, on_both_backends

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from pipeline.cache._key import CacheKey

    OpenStore = Callable[[], CacheStore]
    """Opens the test's store: the same `MemoryCache`, or a new `SQLiteCache` on the same file."""


def on_both_stores(scenario: Callable[[OpenStore], Awaitable[None]]) -> Callable[..., None]:
    """A sync test running `scenario(open_store)` on both backends with both kinds of store."""

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("kind", ["memory", "sqlite"])
    def test(backend: str, kind: str, tmp_path: Path) -> None:
        opened: list[CacheStore] = []
        memory = MemoryCache()

        def open_store() -> CacheStore:
            store = memory if kind == "memory" else SQLiteCache(tmp_path / "cache.db")
            opened.append(store)
            return store

        async def main() -> None:
            try:
                await scenario(open_store)
            finally:
                for store in opened:
                    await store.aclose()

        anyio.run(main, backend=backend)

    test.__doc__ = scenario.__doc__
    return test


class Paid:
    """A priced call: records each call's argument; raises `errors[n]` on its n-th call if set."""

    def __init__(self, *errors: Exception | None) -> None:
        self.calls: list[Any] = []
        self.errors = list(errors)

    async def __call__(self, x: int) -> int:
        self.calls.append(x)
        if len(self.calls) <= len(self.errors):
            error = self.errors[len(self.calls) - 1]
            if error is not None:
                raise error
        return x * 10


class Recorder:
    """A sync observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent, /) -> None:
        self.events.append(event)


def one_stage(stage: Any, *, name: str = "steps", sid: str = "s", **kw: Any) -> PipelineDefinition:
    """A pipeline of one stage; the stage itself is not cached, so every run executes it."""
    return PipelineDefinition(name, [StageDefinition(sid, stage, cache=False, **kw)])


def flags(result: PipelineResult, sid: str = "s") -> list[tuple[str, bool, StageStatus]]:
    return [(s.name, s.cached, s.status) for s in result.stage_runs[sid].steps]


class RateLimitError(Exception):
    """What a rate-limited service raises."""


class TooManyRequests(RateLimitError):
    """A subclass, as client libraries have."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# -- replay --------------------------------------------------------------------------------------------


@on_both_stores
async def test_rerun_after_a_failed_step_replays_finished_steps_and_pays_from_the_failed_one(
    open_store: OpenStore,
) -> None:
    """A stage failing at step 3 of 5 keeps steps 1-2; the rerun replays them and pays 3-5."""
    paid = {k: Paid() for k in range(1, 6)}
    broken = {"on": True}

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        total = 0
        for k in range(1, 6):
            if k == 3 and broken["on"]:
                await context.step(f"call{k}", Paid(RuntimeError("service down")), k)
            total += await context.step(f"call{k}", paid[k], k)
        return StageResult.success(total)

    first = await PipelineExecutor(cache=open_store()).execute(one_stage(FunctionStage(body)))
    assert not first.success
    assert "RuntimeError: service down" in (first.get_result("s").error or "")
    assert [len(p.calls) for p in paid.values()] == [1, 1, 0, 0, 0]
    assert flags(first) == [
        ("call1", False, StageStatus.SUCCEEDED),
        ("call2", False, StageStatus.SUCCEEDED),
        ("call3", False, StageStatus.FAILED),
    ]
    assert first.stage_runs["s"].steps[2].error == "RuntimeError: service down"
    assert first.cache_stats is not None
    assert first.cache_stats.writes == 2

    broken["on"] = False
    second = await PipelineExecutor(cache=open_store()).execute(one_stage(FunctionStage(body)))
    assert second.success
    assert second.outputs == {"s": 150}
    assert [len(p.calls) for p in paid.values()] == [1, 1, 1, 1, 1]
    assert [cached for _, cached, _ in flags(second)] == [True, True, False, False, False]
    assert [s.attempts for s in second.stage_runs["s"].steps] == [0, 0, 1, 1, 1]
    assert second.cache_stats is not None
    assert (second.cache_stats.hits, second.cache_stats.writes) == (2, 3)


@on_both_stores
async def test_a_failed_step_is_never_stored(open_store: OpenStore) -> None:
    """Only successes are stored: a step that failed (after its retries) is paid again."""
    good, bad = Paid(), Paid(ValueError("no"), ValueError("no"))

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await context.step("good", good, 1)
        return StageResult.success(await context.step("bad", bad, 2))

    store = open_store()
    first = await PipelineExecutor(cache=store).execute(one_stage(FunctionStage(body)))
    assert not first.success
    assert await store.count("s") == 1  # "good" only
    second = await PipelineExecutor(cache=open_store()).execute(one_stage(FunctionStage(body)))
    assert not second.success
    assert (good.calls, bad.calls) == ([1], [2, 2])
    third = await PipelineExecutor(cache=open_store()).execute(one_stage(FunctionStage(body)))
    assert third.outputs == {"s": 20}
    assert bad.calls == [2, 2, 2]
    assert flags(third) == [
        ("good", True, StageStatus.SUCCEEDED),
        ("bad", False, StageStatus.SUCCEEDED),
    ]


@on_both_stores
async def test_same_step_name_with_other_arguments_is_a_new_call(open_store: OpenStore) -> None:
    """The key covers the arguments: changed arguments pay, unchanged ones replay."""
    paid = Paid()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success([await context.step("call", paid, x) for x in input])

    await PipelineExecutor(cache=open_store()).execute(one_stage(FunctionStage(body)), [1, 2])
    result = await PipelineExecutor(cache=open_store()).execute(
        one_stage(FunctionStage(body)), [2, 3]
    )
    assert result.outputs == {"s": [20, 30]}
    assert paid.calls == [1, 2, 3]


@on_both_backends
async def test_step_entries_are_per_pipeline_and_stage() -> None:
    """Two stages (or two pipelines) with the same step name and arguments never share an entry."""
    store, paid = MemoryCache(), Paid()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("call", paid, 1))

    two = PipelineDefinition(
        "p",
        [
            StageDefinition("a", FunctionStage(body), cache=False),
            StageDefinition("b", FunctionStage(body), cache=False),
        ],
    )
    await PipelineExecutor(cache=store).execute(two)
    await PipelineExecutor(cache=store).execute(
        one_stage(FunctionStage(body), name="other", sid="a")
    )
    assert paid.calls == [1, 1, 1]
    assert await store.count() == 3
    await PipelineExecutor(cache=store).execute(two)
    assert paid.calls == [1, 1, 1]


def test_step_keys_never_collide_with_stage_or_item_keys() -> None:
    """A step key is its own kind: not a stage/item key of any version, nor another step's."""
    fp = fingerprint((1,))
    key = step_key("p", "s", "call", fp)
    others = {
        make_key("s", fp, version=v, item=item, pipeline="p")
        for v in ("call", "step:call", 0)
        for item in (False, True)
    }
    assert key not in others
    assert key.stage_id == "s"  # so invalidate("s") drops the stage's steps too
    variants = {
        step_key("p", "s", "call2", fp),
        step_key("q", "s", "call", fp),
        step_key("p", "t", "call", fp),
        step_key("p", "s", "call", fingerprint((2,))),
    }
    assert key not in variants
    assert len(variants) == 4
    assert step_key("p", "s", "call", fp) == key  # stable


@on_both_backends
async def test_a_stage_served_from_the_cache_makes_no_steps() -> None:
    """A cached stage output is replayed whole: its steps are not even replayed."""
    store, paid = MemoryCache(), Paid()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(await context.step("call", paid, 1))

    cached = PipelineDefinition("p", [StageDefinition("s", FunctionStage(body))])
    await PipelineExecutor(cache=store).execute(cached)
    again = await PipelineExecutor(cache=store).execute(cached)
    assert again.stage_runs["s"].cached
    assert again.stage_runs["s"].steps == ()
    assert paid.calls == [1]


@on_both_backends
async def test_steps_are_paid_every_run_without_a_cache_or_with_cache_false() -> None:
    """`cache=False` on the step, or an executor without a cache: nothing is stored or replayed."""
    store, paid = MemoryCache(), Paid()
    options: dict[str, Any] = {"cache": False}

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("call", paid, 1, **options))

    for _ in range(2):
        result = await PipelineExecutor(cache=store).execute(one_stage(FunctionStage(body)))
        assert flags(result) == [("call", False, StageStatus.SUCCEEDED)]
    assert await store.count() == 0
    options.clear()
    for _ in range(2):
        result = await PipelineExecutor().execute(one_stage(FunctionStage(body)))
        assert flags(result) == [("call", False, StageStatus.SUCCEEDED)]
    assert paid.calls == [1, 1, 1, 1]


# -- cache rules (section 6) -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_arguments_without_a_fingerprint_run_uncached_with_a_warning(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An argument with no stable fingerprint: the step runs (every time), never fails the stage."""
    anyio.run(_unfingerprintable_arguments, caplog, backend=backend)


async def _unfingerprintable_arguments(caplog: pytest.LogCaptureFixture) -> None:
    store, calls = MemoryCache(), []

    class Client:
        """Not data: no JSON form."""

    async def send(client: Client, text: str) -> str:
        calls.append(text)
        return text.upper()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("send", send, Client(), "hi"))

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        for _ in range(2):
            result = await PipelineExecutor(cache=store).execute(one_stage(FunctionStage(body)))
            assert result.outputs == {"s": "HI"}
            assert result.cache_stats is not None
            assert result.cache_stats.uncacheable == 1
    assert calls == ["hi", "hi"]
    assert await store.count() == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("'send'" in m and "args[0]" in m and "'s'" in m for m in messages), messages


class Summary(BaseModel):
    """A structured result."""

    title: str
    words: int


async def summarize(text: str) -> Summary:
    return Summary(title=text[:3], words=len(text.split()))


@on_both_stores
async def test_results_replay_as_the_annotated_type(open_store: OpenStore) -> None:
    """The return annotation restores values: a model and a tuple come back as themselves."""
    seen: list[Any] = []

    async def pair(x: int) -> tuple[int, str]:
        return (x, str(x))

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        seen.append(await context.step("sum", summarize, "one two three"))
        seen.append(await context.step("pair", pair, 4))
        return StageResult.success(None)

    await PipelineExecutor(cache=open_store()).execute(one_stage(FunctionStage(body)))
    result = await PipelineExecutor(cache=open_store()).execute(one_stage(FunctionStage(body)))
    assert [cached for _, cached, _ in flags(result)] == [True, True]
    assert seen[2:] == [Summary(title="one", words=3), (4, "4")]
    assert type(seen[2]) is Summary
    assert type(seen[3]) is tuple
    assert step_output_type(summarize) is Summary


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_result_that_would_not_round_trip_is_not_stored(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Unannotated, a tuple would come back as a list: it is not stored (warning), paid again."""
    anyio.run(_unstorable_result, caplog, backend=backend)


async def _unstorable_result(caplog: pytest.LogCaptureFixture) -> None:
    store, calls = MemoryCache(), []

    async def pair(x):  # type: ignore[no-untyped-def]  # unannotated on purpose
        calls.append(x)
        return (x, x)

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("pair", pair, 1))

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        for _ in range(2):
            result = await PipelineExecutor(cache=store).execute(one_stage(FunctionStage(body)))
            assert result.outputs == {"s": (1, 1)}
            assert flags(result) == [("pair", False, StageStatus.SUCCEEDED)]
    assert calls == [1, 1]
    assert await store.count() == 0
    assert any(
        "'pair'" in r.getMessage() and "not cached" in r.getMessage() for r in caplog.records
    )


class BrokenStore:
    """A `CacheStore` whose reads and writes fail."""

    async def get(self, key: CacheKey) -> bytes | None:
        raise OSError("disk gone")

    async def put(self, key: CacheKey, value: bytes) -> None:
        raise OSError("disk full")

    async def delete(self, key: CacheKey) -> bool:
        return False

    async def invalidate(self, stage_id: str) -> int:
        return 0

    async def clear(self) -> None:
        pass

    async def count(self, stage_id: str | None = None) -> int:
        return 0

    async def aclose(self) -> None:
        pass


@on_both_backends
async def test_a_failing_store_never_fails_the_step() -> None:
    """A store that raises: the step is paid, the run succeeds, the errors are counted."""
    paid = Paid()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("call", paid, 2))

    result = await PipelineExecutor(cache=BrokenStore()).execute(one_stage(FunctionStage(body)))
    assert result.outputs == {"s": 20}
    assert result.cache_stats is not None
    assert result.cache_stats.errors == 2
    assert paid.calls == [2]


# -- retry and calls -----------------------------------------------------------------------------------


@on_both_backends
async def test_retry_on_matches_subclasses_and_waits_on_the_clock() -> None:
    """`retry_on=(RateLimitError,)` retries a subclass with backoff waits on the FakeClock."""
    clock = FakeClock()
    paid = Paid(TooManyRequests("slow down"), TooManyRequests("slow down"))
    retry = RetryConfig(max_attempts=4, initial_delay_ms=100, retry_on=(RateLimitError,))

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("call", paid, 3, retry=retry))

    result = await PipelineExecutor(clock=clock, cache=MemoryCache()).execute(
        one_stage(FunctionStage(body))
    )
    assert result.outputs == {"s": 30}
    assert clock.sleeps == [0.1, 0.2]
    assert paid.calls == [3, 3, 3]
    (step,) = result.stage_runs["s"].steps
    assert (step.attempts, step.status, step.error) == (3, StageStatus.SUCCEEDED, None)
    assert step.duration_ms == pytest.approx(300.0)
    assert result.stage_runs["s"].attempts == 1  # the stage itself was tried once


@on_both_backends
async def test_an_exception_retry_on_does_not_match_is_raised_at_once() -> None:
    """A `ValueError` under `retry_on=(RateLimitError,)` is not retried; the stage fails with it."""
    clock = FakeClock()
    paid = Paid(ValueError("bad prompt"))
    retry = RetryConfig(max_attempts=4, initial_delay_ms=100, retry_on=(RateLimitError,))

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("call", paid, 3, retry=retry))

    result = await PipelineExecutor(clock=clock).execute(one_stage(FunctionStage(body)))
    assert not result.success
    assert result.get_result("s").error == "ValueError: bad prompt"
    assert clock.sleeps == []
    assert paid.calls == [3]
    assert flags(result) == [("call", False, StageStatus.FAILED)]


@on_both_backends
async def test_retry_after_sets_the_next_wait() -> None:
    """An exception's `retry_after_s` replaces the backoff (capped by max_delay_ms)."""
    clock = FakeClock()
    paid = Paid(TooManyRequests("wait", retry_after_s=7.5), TooManyRequests("wait", 99.0))
    retry = RetryConfig(max_attempts=3, initial_delay_ms=100, max_delay_ms=20_000)

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("call", paid, 1, retry=retry))

    result = await PipelineExecutor(clock=clock).execute(one_stage(FunctionStage(body)))
    assert result.success
    assert clock.sleeps == [7.5, 20.0]


@on_both_backends
async def test_the_last_exception_is_raised_into_the_stage_which_may_catch_it() -> None:
    """Once retries are spent the stage gets fn's last exception; catching it keeps the stage."""
    clock = FakeClock()
    errors = [RateLimitError(f"call {n}") for n in (1, 2, 3)]
    paid = Paid(*errors)
    caught: list[BaseException] = []

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        try:
            await context.step(
                "call", paid, 1, retry=RetryConfig(max_attempts=3, initial_delay_ms=10)
            )
        except RateLimitError as exc:
            caught.append(exc)
            return StageResult.success("fallback")
        return StageResult.success("paid")

    recorder = Recorder()
    executor = PipelineExecutor(clock=clock, cache=MemoryCache(), observers=[recorder])
    result = await executor.execute(one_stage(FunctionStage(body)))
    assert result.outputs == {"s": "fallback"}
    assert caught == [errors[2]]
    (step,) = result.stage_runs["s"].steps
    assert step.status is StageStatus.FAILED
    assert step.error == "Failed after 3 attempts. Last error: RateLimitError: call 3"
    assert step.attempts == 3
    (event,) = [e for e in recorder.events if isinstance(e, StepFinished)]
    assert (event.status, event.attempts, event.error) == (StageStatus.FAILED, 3, step.error)


@on_both_backends
async def test_a_sync_function_runs_in_a_worker_thread() -> None:
    """A sync `fn` is called off the event loop (and retried on the clock); an async one on it."""
    clock, threads = FakeClock(), []
    loop_thread = threading.get_ident()

    def blocking(x: int) -> int:
        threads.append(threading.get_ident())
        if len(threads) == 1:
            raise ConnectionError("reset")
        return x + 1

    async def on_loop() -> int:
        return threading.get_ident()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        retry = RetryConfig(max_attempts=2, initial_delay_ms=50)
        value = await context.step("sync", blocking, 1, retry=retry)
        return StageResult.success((value, await context.step("async", on_loop)))

    result = await PipelineExecutor(clock=clock).execute(one_stage(FunctionStage(body)))
    assert result.outputs == {"s": (2, loop_thread)}  # an async fn stays on the event loop
    assert len(threads) == 2
    assert loop_thread not in threads
    assert clock.sleeps == [0.05]


@on_both_backends
async def test_a_sync_function_returning_an_awaitable_is_awaited() -> None:
    """`context.step("x", lambda: client.get(1))` gives the coroutine's result."""
    paid = Paid()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("lambda", lambda: paid(4)))

    result = await PipelineExecutor().execute(one_stage(FunctionStage(body)))
    assert result.outputs == {"s": 40}


@on_both_backends
async def test_bad_arguments_fail_the_stage_naming_the_step_and_the_fix() -> None:
    """Bad step arguments raise `DefinitionError` naming the step, its stage, the field, the fix."""
    seen: list[DefinitionError] = []
    cases: list[tuple[Any, Any, dict[str, Any]]] = [
        ("", Paid(), {}),
        ("call", 42, {}),
        ("call", Paid(), {"uses": {"llm": 0}}),
        ("call", Paid(), {"retry": {"max_attempts": 3}}),
        ("call", Paid(), {"cache": "yes"}),
    ]

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        for name, fn, kw in cases:
            try:
                await context.step(name, fn, 1, **kw)
            except DefinitionError as exc:
                seen.append(exc)
        return StageResult.success(None)

    await PipelineExecutor().execute(one_stage(FunctionStage(body)))
    assert [e.field for e in seen] == ["name", "fn", "uses", "retry", "cache"]
    assert all("in stage 's'" in e.owner for e in seen)
    assert seen[2].owner == "context.step('call') in stage 's'"
    assert "weight >= 1" in str(seen[2])


# -- resources -----------------------------------------------------------------------------------------


@on_both_backends
async def test_uses_holds_the_resource_around_each_call() -> None:
    """Steps of concurrent fan-out items share `max_in_flight=1`; each attempt's wait is an event."""
    clock, recorder = FakeClock(), Recorder()
    in_flight, most = 0, 0

    async def call(x: int) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await clock.sleep(1.0)
        in_flight -= 1
        return x

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("call", call, input, uses={"llm": 1}))

    executor = PipelineExecutor(
        clock=clock, resources={"llm": Resource(max_in_flight=1)}, observers=[recorder]
    )
    definition = one_stage(FunctionStage(body), pattern=ExecutionPattern.FAN_OUT)
    result = await executor.execute(definition, [1, 2, 3])
    assert result.outputs == {"s": [1, 2, 3]}
    assert most == 1
    assert clock.now() == pytest.approx(3.0)
    waits = [e for e in recorder.events if isinstance(e, ResourceWaited)]
    assert sorted(e.wait_s for e in waits) == pytest.approx([0.0, 1.0, 2.0])
    assert {(e.resource, e.attempt) for e in waits} == {("llm", 1)}


@on_both_backends
async def test_an_unknown_resource_is_raised_at_once_and_never_retried() -> None:
    """`uses` naming no resource of the executor: `ResourceError`, fn never called, no retry."""
    clock, paid = FakeClock(), Paid()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        retry = RetryConfig(max_attempts=3)
        return StageResult.success(
            await context.step("call", paid, 1, uses={"gpu": 1}, retry=retry)
        )

    result = await PipelineExecutor(clock=clock).execute(one_stage(FunctionStage(body)))
    assert not result.success
    assert "ResourceError" in (result.get_result("s").error or "")
    assert "'gpu'" in (result.get_result("s").error or "")
    assert paid.calls == []
    assert clock.sleeps == []
    assert flags(result) == [("call", False, StageStatus.FAILED)]


@on_both_backends
async def test_failed_calls_count_against_the_resource_circuit_breaker() -> None:
    """Each failed call of a step is a failure for the breaker; once open, the next is refused."""
    clock = FakeClock()
    paid = Paid(*[ConnectionError("down")] * 5)
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=60.0)
    caught: list[BaseException] = []

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        # max_delay_ms caps the open circuit's Retry-After (60 s) so attempt 4 comes too early
        # for the half-open trial and is refused like attempt 3.
        retry = RetryConfig(max_attempts=4, initial_delay_ms=100, max_delay_ms=1000)
        try:
            await context.step("call", paid, 1, uses={"llm": 1}, retry=retry)
        except CircuitOpenError as exc:
            caught.append(exc)
        return StageResult.success(None)

    executor = PipelineExecutor(clock=clock, resources={"llm": Resource(breaker=breaker)})
    result = await executor.execute(one_stage(FunctionStage(body)))
    assert result.success
    assert paid.calls == [1, 1]  # the third and fourth attempts never reached the service
    assert len(caught) == 1
    (step,) = result.stage_runs["s"].steps
    assert step.attempts == 4
    assert "CircuitOpenError" in (step.error or "")


# -- records and events --------------------------------------------------------------------------------


@on_both_backends
async def test_steps_are_on_the_run_record_and_in_events() -> None:
    """Each step is a `StepRun` on its stage and a `StepFinished` event, with `cached` set."""
    store = MemoryCache()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        a = await context.step("a", Paid(), 1)
        b = await context.step("b", Paid(), 2)
        return StageResult.success(a + b)

    records = []
    for _ in range(2):
        recorder = Recorder()
        result = await PipelineExecutor(cache=store, observers=[recorder]).execute(
            one_stage(FunctionStage(body))
        )
        events = [e for e in recorder.events if isinstance(e, StepFinished)]
        assert [(e.stage_id, e.name, e.item) for e in events] == [
            ("s", "a", None),
            ("s", "b", None),
        ]
        records.append(
            ([s.cached for s in result.stage_runs["s"].steps], [e.cached for e in events])
        )
    assert records == [([False, False], [False, False]), ([True, True], [True, True])]


@on_both_stores
async def test_fan_out_items_make_their_own_steps(open_store: OpenStore) -> None:
    """Each item's steps carry its index; a rerun replays every item's finished steps."""
    paid = Paid()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("double", paid, input))

    definition = one_stage(FunctionStage(body), pattern=ExecutionPattern.FAN_OUT)
    first = await PipelineExecutor(cache=open_store()).execute(definition, [5, 6, 7])
    assert first.outputs == {"s": [50, 60, 70]}
    assert sorted((s.item, s.cached) for s in first.stage_runs["s"].steps) == [
        (0, False),
        (1, False),
        (2, False),
    ]
    second = await PipelineExecutor(cache=open_store()).execute(definition, [5, 6, 7])
    assert second.outputs == {"s": [50, 60, 70]}
    assert sorted((s.item, s.cached) for s in second.stage_runs["s"].steps) == [
        (0, True),
        (1, True),
        (2, True),
    ]
    assert sorted(paid.calls) == [5, 6, 7]


@dataclass
class SlowPut:
    """A store whose write signals `putting`, then takes many scheduler rounds to finish."""

    inner: MemoryCache
    putting: anyio.Event
    sibling_failed: bool = False
    failed_during_write: bool = False

    async def get(self, key: CacheKey) -> bytes | None:
        return await self.inner.get(key)

    async def put(self, key: CacheKey, value: bytes) -> None:
        self.putting.set()
        for _ in range(50):  # every checkpoint would raise if the write were not shielded
            await anyio.lowlevel.checkpoint()
        self.failed_during_write = self.sibling_failed
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


@on_both_backends
async def test_a_finished_step_is_kept_while_a_sibling_failure_cancels_its_stage() -> None:
    """Item 0's step write outlives the cancellation item 1's failure causes; the rerun replays it."""
    inner, paid = MemoryCache(), Paid()
    slow = SlowPut(inner, anyio.Event())
    broken = {"on": True}

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        if input == 1 and broken["on"]:
            with anyio.fail_after(5):
                await slow.putting.wait()
            slow.sibling_failed = True
            return StageResult.failure("sibling failed")
        return StageResult.success(await context.step("pay", paid, input))

    definition = one_stage(FunctionStage(body), pattern=ExecutionPattern.FAN_OUT)
    first = await PipelineExecutor(cache=slow).execute(definition, [0, 1])
    assert not first.success
    assert slow.failed_during_write  # the cancellation really came while writing
    assert await inner.count() == 1
    broken["on"] = False
    second = await PipelineExecutor(cache=inner).execute(definition, [0, 1])
    assert second.outputs == {"s": [0, 10]}
    assert paid.calls == [0, 1]
    assert sorted((s.item, s.cached) for s in second.stage_runs["s"].steps) == [
        (0, True),
        (1, False),
    ]


# -- outside a run ---------------------------------------------------------------------------------------


@on_both_backends
async def test_outside_a_run_a_step_is_a_plain_retried_call() -> None:
    """Under `run_stage` (no executor): no cache, retry on the real clock, `uses` is refused."""
    paid = Paid(RateLimitError("once"))

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        retry = RetryConfig(max_attempts=2, initial_delay_ms=0)
        first = await context.step("call", paid, input, retry=retry)
        second = await context.step("call", paid, input, retry=retry)
        try:
            await context.step("limited", paid, input, uses={"llm": 1})
        except ResourceError as exc:
            return StageResult.success((first, second, str(exc)))
        return StageResult.failure("uses was accepted outside a run")

    result, _ = await run_stage(FunctionStage(body), 2)
    assert result.success
    assert result.output is not None
    first, second, error = result.output
    assert (first, second) == (20, 20)
    assert paid.calls == [2, 2, 2]  # one failure, one retry, then paid again: nothing replayed
    assert "outside a pipeline run" in error


@on_both_backends
async def test_bumping_the_stage_cache_version_pays_its_steps_again() -> None:
    """After a prompt is fixed, `cache_version` must not replay the old answers (review)."""
    store = MemoryCache()
    paid = Paid()

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(await context.step("call", paid, 1))

    for version in (1, 1, 2):
        definition = one_stage(FunctionStage(body), cache_version=version)
        result = await PipelineExecutor(cache=store).execute(definition)
        assert result.success
    assert paid.calls == [1, 1]  # paid at version 1, replayed at 1, paid again at 2

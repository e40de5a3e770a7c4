"""Events, timings and the summary through the real executor (time is a `FakeClock`)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    RetryConfig,
    Scheduling,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline.cache import MemoryCache
from pipeline.events import (
    AttemptFailed,
    AttemptStarted,
    FanOutItemFinished,
    PipelineEvent,
    RetryScheduled,
    RunFinished,
    RunStarted,
    StageCacheHit,
    StageFinished,
    StageStarted,
    WaveStarted,
)
from pipeline.observers import LoggingObserver
from pipeline.testing import FakeClock


# -- stages and observers --------------------------------------------------------------------------
class Echo:
    """Hands its input back without awaiting anything; counts its calls."""

    name = "echo"

    def __init__(self) -> None:
        self.calls = 0

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        self.calls += 1
        return StageResult.success(input)


class Work:
    """Takes `seconds` of virtual time; fails (raising `error`) on the first `fails` calls."""

    name = "work"

    def __init__(self, clock: FakeClock, seconds: float = 0.0, *, fails: int = 0) -> None:
        self.clock = clock
        self.seconds = seconds
        self.fails = fails
        self.calls = 0

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        self.calls += 1
        if self.seconds:
            await self.clock.advance(self.seconds)  # advance, so `clock.sleeps` holds backoffs only
        if self.calls <= self.fails:
            raise ValueError(f"flaky call {self.calls}")
        return StageResult.success(input)


class Boom:
    name = "boom"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        raise ValueError("kaboom")


class FlakyItems:
    """Fan-out body: item value 2 fails once, the others succeed at once."""

    name = "flaky_items"

    def __init__(self) -> None:
        self.seen: set[Any] = set()

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        if input == 2 and input not in self.seen:
            self.seen.add(input)
            return StageResult.failure("rate_limit: try again")
        return StageResult.success(input * 10)


class Recorder:
    """A sync observer that keeps every event."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent, /) -> None:
        self.events.append(event)


class AsyncRecorder:
    """An async observer that yields before recording, so delivery really is asynchronous."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    async def on_event(self, event: PipelineEvent, /) -> None:
        await anyio.lowlevel.checkpoint()
        self.events.append(event)


class Raising:
    """A sync observer that raises on every event."""

    def __init__(self) -> None:
        self.calls = 0

    def on_event(self, event: PipelineEvent, /) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")


def stage_key(event: PipelineEvent) -> tuple[str, str | None]:
    """`(kind, lineage_id)`; the lineage is None for run-level events."""
    return event.kind, getattr(event, "lineage_id", None)


def of_stage(events: list[PipelineEvent], stage_id: str) -> list[PipelineEvent]:
    return [e for e in events if getattr(e, "stage_id", None) == stage_id]


async def run(
    definition: PipelineDefinition,
    initial: Any = None,
    *,
    clock: FakeClock | None = None,
    **executor: Any,
) -> tuple[PipelineResult, list[PipelineEvent]]:
    recorder = Recorder()
    observers = [recorder, *executor.pop("observers", [])]
    ex = PipelineExecutor(clock=clock or FakeClock(), observers=observers, **executor)
    with anyio.fail_after(5):
        result = await ex.execute(definition, initial)
    return result, recorder.events


def chain(*stages: tuple[str, Any], **options: Any) -> PipelineDefinition:
    """Stages in a row, each taking the previous one's output."""
    defs = [
        StageDefinition(sid, stage, inputs=[stages[i - 1][0]] if i else [])
        for i, (sid, stage) in enumerate(stages)
    ]
    return PipelineDefinition("chain", defs, **options)


# -- order -----------------------------------------------------------------------------------------
async def test_event_order_of_a_small_pipeline() -> None:
    definition = PipelineDefinition(
        "small",
        [
            StageDefinition("a", Echo()),
            StageDefinition("b", Echo(), inputs=["a"]),
            StageDefinition("c", Echo(), inputs=["b"]),
        ],
    )
    result, events = await run(definition, 1)
    assert result.success
    assert [stage_key(e) for e in events] == [
        ("run_started", None),
        ("wave_started", None),
        ("stage_started", "a"),
        ("attempt_started", "a"),
        ("stage_finished", "a"),
        ("wave_started", None),
        ("stage_started", "b"),
        ("attempt_started", "b"),
        ("stage_finished", "b"),
        ("wave_started", None),
        ("stage_started", "c"),
        ("attempt_started", "c"),
        ("stage_finished", "c"),
        ("run_finished", None),
    ]
    assert result.run_id is not None
    assert {e.run_id for e in events} == {result.run_id}
    started, finished = events[0], events[-1]
    assert isinstance(started, RunStarted)
    assert started.pipeline_name == "small"
    assert started.stage_ids == ("a", "b", "c")
    assert started.waves == (("a",), ("b",), ("c",))
    assert [e.wave for e in events if isinstance(e, WaveStarted)] == [0, 1, 2]
    assert [e.wave for e in events if isinstance(e, StageStarted)] == [0, 1, 2]
    assert all(e.attempt == 1 and e.item is None for e in events if isinstance(e, AttemptStarted))
    done = [e for e in events if isinstance(e, StageFinished)]
    assert all(e.status is StageStatus.SUCCEEDED and e.attempts == 1 for e in done)
    assert isinstance(finished, RunFinished)
    assert finished.success
    assert finished.failed_stages == ()
    assert all(e.at_s == 0.0 for e in events)  # nothing took virtual time


async def test_eager_scheduling_emits_no_wave_events() -> None:
    result, events = await run(chain(("a", Echo()), ("b", Echo())), scheduling="eager")
    assert result.success
    assert not any(isinstance(e, WaveStarted) for e in events)
    started = events[0]
    assert isinstance(started, RunStarted)
    assert started.scheduling == "eager"


async def test_timestamps_follow_the_clock_and_never_go_back() -> None:
    clock = FakeClock(start=100.0)
    definition = chain(("a", Work(clock, 0.5)), ("b", Work(clock, 0.25)))
    result, events = await run(definition, clock=clock)
    assert result.success
    times = [e.at_s for e in events]
    assert times == sorted(times)
    finished = {e.stage_id: e for e in events if isinstance(e, StageFinished)}
    assert finished["a"].at_s == 0.5
    assert finished["a"].duration_s == 0.5
    assert finished["b"].at_s == 0.75
    assert finished["b"].duration_s == 0.25
    assert isinstance(events[-1], RunFinished)
    assert events[-1].duration_s == 0.75


# -- retries ---------------------------------------------------------------------------------------
async def test_retry_events_carry_attempts_errors_and_the_clock_delays() -> None:
    clock = FakeClock()
    retry = RetryConfig(max_attempts=3, initial_delay_ms=1000, backoff_multiplier=2.0)
    definition = PipelineDefinition(
        "retry", [StageDefinition("x", Work(clock, 0.5, fails=2), retry_config=retry)]
    )
    result, events = await run(definition, clock=clock)
    assert result.success
    assert clock.sleeps == [1.0, 2.0]
    x = of_stage(events, "x")
    assert [e.kind for e in x] == [
        "stage_started",
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "attempt_started",
        "stage_finished",
    ]
    assert [(e.attempt, e.at_s) for e in x if isinstance(e, AttemptStarted)] == [
        (1, 0.0),
        (2, 1.5),
        (3, 4.0),
    ]
    failed = [e for e in x if isinstance(e, AttemptFailed)]
    assert [(e.attempt, e.will_retry, e.exception_type) for e in failed] == [
        (1, True, "ValueError"),
        (2, True, "ValueError"),
    ]
    assert failed[0].error == "ValueError: flaky call 1"
    retries = [e for e in x if isinstance(e, RetryScheduled)]
    assert [(e.attempt, e.delay_s, e.at_s) for e in retries] == [(2, 1.0, 0.5), (3, 2.0, 2.0)]
    end = x[-1]
    assert isinstance(end, StageFinished)
    assert (end.status, end.attempts, end.duration_s) == (StageStatus.SUCCEEDED, 3, 4.5)


async def test_last_failed_attempt_and_a_non_retryable_error_say_no_retry() -> None:
    clock = FakeClock()
    definition = PipelineDefinition(
        "give_up",
        [
            StageDefinition(
                "out",
                Work(clock, fails=9),
                retry_config=RetryConfig(max_attempts=2, initial_delay_ms=10),
                critical=False,
            ),
            StageDefinition(
                "picky",
                Work(clock, fails=9),
                retry_config=RetryConfig(max_attempts=5, retryable_errors=["timeout"]),
                critical=False,
            ),
        ],
    )
    result, events = await run(definition, clock=clock)
    assert result.failed_stages == ["out", "picky"]
    out = [e for e in of_stage(events, "out") if isinstance(e, AttemptFailed)]
    assert [(e.attempt, e.will_retry) for e in out] == [(1, True), (2, False)]
    picky = of_stage(events, "picky")
    assert [(e.attempt, e.will_retry) for e in picky if isinstance(e, AttemptFailed)] == [
        (1, False)
    ]
    assert not any(isinstance(e, RetryScheduled) for e in picky)
    end = picky[-1]
    assert isinstance(end, StageFinished)
    assert end.status is StageStatus.FAILED


async def test_attempt_runs_record_backoff_start_duration_and_error() -> None:
    clock = FakeClock()
    retry = RetryConfig(max_attempts=3, initial_delay_ms=1000, backoff_multiplier=2.0)
    definition = PipelineDefinition(
        "retry", [StageDefinition("x", Work(clock, 0.5, fails=2), retry_config=retry)]
    )
    result, _ = await run(definition, clock=clock)
    record = result.stage_runs["x"]
    assert record.attempts == 3
    assert [
        (a.attempt, a.backoff_ms, a.started_ms, a.duration_ms, a.error) for a in record.attempt_runs
    ] == [
        (1, 0.0, 0.0, 500.0, "ValueError: flaky call 1"),
        (2, 1000.0, 1500.0, 500.0, "ValueError: flaky call 2"),
        (3, 2000.0, 4000.0, 500.0, None),
    ]
    assert (record.started_ms, record.finished_ms, record.duration_ms) == (0.0, 4500.0, 4500.0)


class SilentFailure:
    """Returns a failed result without any error text."""

    name = "silent"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult(success=False)


@pytest.mark.parametrize("retry", [None, RetryConfig(max_attempts=2, initial_delay_ms=10)])
async def test_a_failure_without_error_text_still_emits_attempt_failed(
    retry: RetryConfig | None,
) -> None:
    definition = PipelineDefinition(
        "silent", [StageDefinition("s", SilentFailure(), retry_config=retry)]
    )
    result, events = await run(definition)
    assert result.failed_stages == ["s"]
    failed = [e for e in events if isinstance(e, AttemptFailed)]
    attempts = 1 if retry is None else 2
    assert [(e.attempt, e.will_retry) for e in failed] == [
        (n, n < attempts) for n in range(1, attempts + 1)
    ]


@pytest.mark.parametrize("observed", [False, True])
async def test_attempt_runs_of_single_attempts_with_and_without_observers(observed: bool) -> None:
    clock = FakeClock()
    definition = PipelineDefinition(
        "once",
        [
            StageDefinition("a", Work(clock, 0.25)),
            StageDefinition("b", Boom(), inputs=["a"], critical=False),
            StageDefinition(
                "never", Echo(), inputs=["a"], condition=lambda ctx: False, critical=False
            ),
        ],
    )
    observers = [Recorder()] if observed else []
    executor = PipelineExecutor(clock=clock, observers=observers)
    result = await executor.execute(definition)
    assert (result.run_id is not None) is observed
    a, b, never = (result.stage_runs[s] for s in ("a", "b", "never"))
    assert [(r.attempt, r.started_ms, r.duration_ms, r.error) for r in a.attempt_runs] == [
        (1, 0.0, 250.0, None)
    ]
    assert [(r.attempt, r.error) for r in b.attempt_runs] == [(1, "ValueError: kaboom")]
    assert never.status is StageStatus.SKIPPED
    assert never.attempt_runs == ()


# -- fan-out ---------------------------------------------------------------------------------------
async def test_fan_out_items_have_their_own_events_and_lineage_ids() -> None:
    retry = RetryConfig(max_attempts=2, initial_delay_ms=100)
    definition = PipelineDefinition(
        "fan",
        [
            StageDefinition(
                "f",
                FlakyItems(),
                pattern=ExecutionPattern.FAN_OUT,
                max_concurrent_fan_out=1,
                retry_config=retry,
            )
        ],
    )
    result, events = await run(definition, [1, 2, 3])
    assert result.outputs["f"] == [10, 20, 30]
    f = of_stage(events, "f")
    first, last = f[0], f[-1]
    assert isinstance(first, StageStarted)
    assert first.items == 3
    assert first.item is None
    assert first.lineage_id == "f"
    assert isinstance(last, StageFinished)
    assert (last.items, last.attempts, last.lineage_id) == (3, 2, "f")
    # One item at a time, so the per-item sequence is exact.
    assert [stage_key(e) for e in f[1:-1]] == [
        ("attempt_started", "f[0]"),
        ("fan_out_item_finished", "f[0]"),
        ("attempt_started", "f[1]"),
        ("attempt_failed", "f[1]"),
        ("retry_scheduled", "f[1]"),
        ("attempt_started", "f[1]"),
        ("fan_out_item_finished", "f[1]"),
        ("attempt_started", "f[2]"),
        ("fan_out_item_finished", "f[2]"),
    ]
    items = [e for e in f if isinstance(e, FanOutItemFinished)]
    assert [(e.item, e.attempts, e.status) for e in items] == [
        (0, 1, StageStatus.SUCCEEDED),
        (1, 2, StageStatus.SUCCEEDED),
        (2, 1, StageStatus.SUCCEEDED),
    ]
    assert all(e.model_dump()["lineage_id"] == f"f[{e.item}]" for e in items)
    assert result.stage_runs["f"].attempt_runs == ()  # attempts are per item, not per stage


# -- cache -----------------------------------------------------------------------------------------
async def test_second_run_emits_cache_hits_instead_of_attempts() -> None:
    cache = MemoryCache()
    counter = Echo()
    definition = PipelineDefinition(
        "cached",
        [
            StageDefinition("a", counter),
            StageDefinition("f", Echo(), pattern=ExecutionPattern.FAN_OUT, inputs=["a"]),
        ],
    )
    first, first_events = await run(definition, [1, 2], cache=cache)
    assert first.success
    assert not any(isinstance(e, StageCacheHit) for e in first_events)
    second, events = await run(definition, [1, 2], cache=cache)
    assert second.outputs == first.outputs
    assert counter.calls == 1
    assert not any(isinstance(e, AttemptStarted | AttemptFailed) for e in events)
    hits = [e for e in events if isinstance(e, StageCacheHit)]
    assert [e.lineage_id for e in hits] == ["a", "f[0]", "f[1]"]
    assert all(e.key for e in hits)
    assert [stage_key(e) for e in of_stage(events, "a")] == [
        ("stage_started", "a"),
        ("stage_cache_hit", "a"),
        ("stage_finished", "a"),
    ]
    finished = {e.stage_id: e for e in events if isinstance(e, StageFinished)}
    assert finished["a"].cached
    assert finished["a"].attempts == 0
    assert finished["f"].cached
    items = [e for e in events if isinstance(e, FanOutItemFinished)]
    assert all(e.cached and e.attempts == 0 for e in items)
    summary = second.summary()
    assert next(line for line in summary.splitlines() if line.startswith("a ")).endswith("hit")


# -- stages that never start -----------------------------------------------------------------------
async def test_not_started_stages_emit_only_stage_finished() -> None:
    after = Echo()
    definition = chain(("a", Boom()), ("b", after), ("c", Echo()))
    result, events = await run(definition)
    assert result.cancelled_stages == ["b", "c"]
    assert after.calls == 0
    for sid in ("b", "c"):
        only = of_stage(events, sid)
        assert len(only) == 1
        assert isinstance(only[0], StageFinished)
        assert only[0].status is StageStatus.CANCELLED
        assert only[0].error == "[CANCELLED] not started"
    assert [e.wave for e in events if isinstance(e, WaveStarted)] == [0]  # none after the stop
    end = events[-1]
    assert isinstance(end, RunFinished)
    assert (end.success, end.failed_stages) == (False, ("a",))


async def test_upstream_failed_skips_emit_only_stage_finished() -> None:
    definition = chain(("a", Boom()), ("b", Echo()), ("c", Echo()), fail_fast=False)
    result, events = await run(definition)
    assert result.skipped_stages == ["b", "c"]
    for sid in ("b", "c"):
        only = of_stage(events, sid)
        assert [e.kind for e in only] == ["stage_finished"]
        assert isinstance(only[0], StageFinished)
        assert only[0].status is StageStatus.SKIPPED


async def test_a_condition_skip_starts_but_makes_no_attempt() -> None:
    definition = PipelineDefinition(
        "cond", [StageDefinition("c", Echo(), condition=lambda ctx: False)]
    )
    _, events = await run(definition)
    assert [e.kind for e in of_stage(events, "c")] == ["stage_started", "stage_finished"]


async def test_a_stage_launched_before_a_fail_fast_stop_never_runs() -> None:
    # Both are entry points; `bad` fails before `sibling`'s task gets to run (asyncio runs
    # tasks in start order). A stage with no checkpoint would otherwise run to completion.
    sibling = Echo()
    definition = PipelineDefinition(
        "race", [StageDefinition("bad", Boom()), StageDefinition("sibling", sibling)]
    )
    result, events = await run(definition)
    assert sibling.calls == 0
    assert result.stage_runs["sibling"].error == "[CANCELLED] not started"
    assert [e.kind for e in of_stage(events, "sibling")] == ["stage_finished"]


async def test_an_invalid_definition_still_starts_and_finishes_a_run() -> None:
    definition = PipelineDefinition("bad", [StageDefinition("a", Echo(), inputs=["nowhere"])])
    result, events = await run(definition)
    assert result.failed_stages == ["validation"]
    assert [e.kind for e in events] == ["run_started", "run_finished"]
    end = events[-1]
    assert isinstance(end, RunFinished)
    assert end.error is not None
    assert "nowhere" in end.error
    assert result.run_id == end.run_id


# -- observers that misbehave, async observers, trio -----------------------------------------------
async def test_a_raising_observer_is_logged_once_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def make(clock: FakeClock) -> PipelineDefinition:
        return chain(("a", Work(clock, 0.5)), ("b", Boom()), fail_fast=False)

    quiet_clock, clock = FakeClock(), FakeClock()
    quiet = await PipelineExecutor(clock=quiet_clock).execute(make(quiet_clock))
    raising = Raising()
    with caplog.at_level(logging.DEBUG, logger="pipeline"):
        result, events = await run(make(clock), clock=clock, observers=[raising])
    assert raising.calls == len(events)  # it kept receiving events, and so did the others
    assert result.success == quiet.success
    assert result.failed_stages == quiet.failed_stages
    assert result.outputs == quiet.outputs
    assert result.stage_runs["a"].duration_ms == quiet.stage_runs["a"].duration_ms
    errors = [r for r in caplog.records if r.name == "pipeline" and r.levelno >= logging.WARNING]
    assert len(errors) == 1
    assert "observer" in errors[0].getMessage()
    assert errors[0].exc_info is not None


async def test_an_async_observer_receives_every_event_in_order() -> None:
    clock = FakeClock()
    slow = AsyncRecorder()
    definition = PipelineDefinition(
        "async",
        [
            StageDefinition("a", Work(clock, 0.5)),
            StageDefinition("f", Echo(), pattern=ExecutionPattern.FAN_OUT, inputs=["a"]),
            StageDefinition("b", Work(clock, fails=1), inputs=["a"], critical=False),
        ],
    )
    _, events = await run(definition, [1, 2, 3], clock=clock, observers=[slow])
    assert slow.events == events  # all of them, in order, before `execute` returned
    assert isinstance(slow.events[-1], RunFinished)


def test_events_on_trio() -> None:
    async def scenario() -> tuple[PipelineResult, list[PipelineEvent], list[PipelineEvent]]:
        clock = FakeClock()
        later = AsyncRecorder()
        retry = RetryConfig(max_attempts=2, initial_delay_ms=250)
        definition = PipelineDefinition(
            "trio",
            [
                StageDefinition("a", Work(clock, 0.5, fails=1), retry_config=retry),
                StageDefinition("f", Echo(), pattern=ExecutionPattern.FAN_OUT, inputs=["a"]),
            ],
        )
        result, events = await run(definition, [1, 2], clock=clock, observers=[later])
        return result, events, later.events

    result, events, async_events = anyio.run(scenario, backend="trio")
    assert result.success
    assert async_events == events
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    assert kinds.count("retry_scheduled") == 1
    assert kinds.count("fan_out_item_finished") == 2
    lineages = {stage_key(e)[1] for e in events if getattr(e, "item", None) is not None}
    assert lineages == {"f[0]", "f[1]"}
    assert result.stage_runs["a"].attempt_runs[1].backoff_ms == 250.0


# -- built-in observers through the executor -------------------------------------------------------
async def test_logging_observer_through_the_executor(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    retry = RetryConfig(max_attempts=2, initial_delay_ms=100)
    definition = PipelineDefinition(
        "logged",
        [
            StageDefinition("a", Work(clock, 0.5)),
            StageDefinition("b", Work(clock, fails=1), inputs=["a"], retry_config=retry),
        ],
    )
    with caplog.at_level(logging.DEBUG, logger="pipeline"):
        result, events = await run(definition, clock=clock, observers=[LoggingObserver()])
    records = [r for r in caplog.records if r.name == "pipeline"]
    assert [r.__dict__["pipeline_kind"] for r in records] == [e.kind for e in events]
    assert {r.__dict__["pipeline_run_id"] for r in records} == {result.run_id}
    finished = [r for r in records if r.__dict__["pipeline_kind"] == "stage_finished"]
    assert [r.__dict__["pipeline_stage_id"] for r in finished] == ["a", "b"]
    assert finished[1].__dict__["pipeline_event"]["attempts"] == 2
    assert all(r.levelno == logging.INFO for r in finished)
    retried = next(r for r in records if r.__dict__["pipeline_kind"] == "retry_scheduled")
    assert retried.getMessage() == "stage 'b': attempt 2 in 0.100 s"


async def test_opentelemetry_observer_through_the_executor() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from pipeline.observers.otel import OpenTelemetryObserver

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    anchor = 1_700_000_000_000_000_000
    observer = OpenTelemetryObserver(provider, time_ns=lambda: anchor)
    clock = FakeClock()
    retry = RetryConfig(max_attempts=2, initial_delay_ms=1000)
    definition = PipelineDefinition(
        "traced",
        [
            StageDefinition("a", Work(clock, 0.5, fails=1), retry_config=retry),
            StageDefinition("f", Echo(), pattern=ExecutionPattern.FAN_OUT, inputs=["a"]),
        ],
    )
    result, _ = await run(definition, [1, 2], clock=clock, observers=[observer])
    assert result.success
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == sorted(
        [
            "pipeline traced",
            "stage a",
            "stage f",
            "attempt a#1",
            "attempt a#2",
            "attempt f[0]#1",
            "attempt f[1]#1",
        ]
    )
    root = spans["pipeline traced"]
    assert root.parent is None
    assert {s.context.trace_id for s in spans.values() if s.context} == {root.context.trace_id}

    def parent_of(name: str) -> int | None:
        parent = spans[name].parent
        return None if parent is None else parent.span_id

    assert parent_of("stage a") == root.context.span_id
    assert parent_of("stage f") == root.context.span_id
    stage_a, stage_f = spans["stage a"].context.span_id, spans["stage f"].context.span_id
    assert parent_of("attempt a#1") == parent_of("attempt a#2") == stage_a
    assert parent_of("attempt f[0]#1") == parent_of("attempt f[1]#1") == stage_f

    def seconds(name: str) -> float:
        span = spans[name]
        assert span.start_time is not None
        assert span.end_time is not None
        return (span.end_time - span.start_time) / 1e9

    assert seconds("stage a") == 2.0  # 0.5 + 1.0 backoff + 0.5
    assert seconds("attempt a#1") == 0.5
    assert spans["attempt a#1"].status.status_code is StatusCode.ERROR
    assert spans["stage a"].attributes is not None
    assert spans["stage a"].attributes["pipeline.stage.attempts"] == 2
    assert spans["attempt f[1]#1"].attributes is not None
    assert spans["attempt f[1]#1"].attributes["pipeline.lineage_id"] == "f[1]"
    assert root.attributes is not None
    assert root.attributes["pipeline.run_id"] == result.run_id


# -- timings, summary, critical path ---------------------------------------------------------------
def barrier_pipeline(clock: FakeClock) -> PipelineDefinition:
    """a -> quick -> d and a -> slow (3 s): d's input is done at 0 s, its wave opens at 3 s.

    (`Work` advances the `FakeClock` itself, so stages that overlap would add up their virtual
    time: only `slow` takes any here, which keeps every number exact.)
    """
    return PipelineDefinition(
        "barrier",
        [
            StageDefinition("a", Echo()),
            StageDefinition("quick", Echo(), inputs=["a"]),
            StageDefinition("slow", Work(clock, 3.0), inputs=["a"]),
            StageDefinition("d", Echo(), inputs=["quick"]),
        ],
    )


@pytest.mark.parametrize(("scheduling", "wait_ms"), [("waves", 3000.0), ("eager", 0.0)])
async def test_queue_wait_is_the_wave_barrier(scheduling: Scheduling, wait_ms: float) -> None:
    clock = FakeClock()
    result = await PipelineExecutor(clock=clock, scheduling=scheduling).execute(
        barrier_pipeline(clock)
    )
    runs = result.stage_runs
    assert runs["quick"].finished_ms == 0.0
    assert runs["d"].queue_wait_ms == wait_ms
    assert runs["d"].started_ms == wait_ms
    assert runs["a"].queue_wait_ms == 0.0
    assert runs["slow"].queue_wait_ms == 0.0
    assert runs["slow"].duration_ms == 3000.0
    assert result.total_duration_ms == 3000.0


async def test_summary_table_has_every_stage_wait_cache_and_the_critical_path() -> None:
    clock = FakeClock()
    result = await PipelineExecutor(clock=clock).execute(barrier_pipeline(clock))
    lines = result.summary().splitlines()
    assert lines[0].split() == ["stage", "status", "attempts", "wait", "duration", "cache"]
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert sorted(rows) == ["a", "d", "quick", "slow"]
    assert rows["d"] == ["d", "succeeded", "1", "3.00", "s", "0.0", "ms", "-"]
    assert rows["slow"] == ["slow", "succeeded", "1", "0.0", "ms", "3.00", "s", "-"]
    assert "pipeline 'barrier' succeeded in 3.00 s (4 succeeded)" in lines
    assert "critical path: a -> slow (3.00 s)" in lines


async def test_critical_path_of_the_finished_run() -> None:
    clock = FakeClock()
    definition = PipelineDefinition(
        "cp",
        [
            StageDefinition("a", Work(clock, 1.0)),
            StageDefinition("b", Work(clock, 2.0), inputs=["a"]),
            StageDefinition("c", Echo(), inputs=["a"]),  # `Work.advance`s would add up: none in c
            StageDefinition("d", Work(clock, 0.25), inputs=["b", "c"]),
        ],
    )
    result = await PipelineExecutor(clock=clock).execute(definition)
    assert result.critical_path() == (["a", "b", "d"], 3250.0)
    assert result.plan is not None
    assert result.plan.order == ("a", "b", "c", "d")


async def test_an_invalid_run_has_no_plan_and_an_empty_critical_path() -> None:
    definition = PipelineDefinition("bad", [StageDefinition("a", Echo(), inputs=["a"])])
    result = await PipelineExecutor().execute(definition)
    assert result.plan is None
    assert result.critical_path() == ([], 0.0)
    assert "pipeline 'bad' failed" in result.summary()

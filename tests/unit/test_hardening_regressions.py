"""Regressions found by the adversarial review of the SPEC 7 hardening, one test per finding."""

from __future__ import annotations

import asyncio  # noqa: TID251  # foreign asyncio cancellation is what several tests inject
import collections
import enum
from typing import Any

import anyio
import pytest

from pipeline import (
    DefinitionError,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline.cache import JsonSerializer, MemoryCache, UncacheableOutputError
from pipeline.testing import Delay, FakeClock, ScriptedStage
from tests.unit._support import on_both_backends


class Color(enum.StrEnum):
    RED = "red"


# -- a pipeline timeout that cut nothing short ----------------------------------------------------


@on_both_backends
async def test_a_deadline_at_the_instant_the_last_stage_ends_is_not_a_timeout() -> None:
    """The stage's task is woken by the same tick that fires the deadline; it still finished."""
    clock = FakeClock()
    half_second = ScriptedStage(Delay(0.5, then="done"), clock=clock, repeat_last=True)
    pipeline = PipelineDefinition("tie", [StageDefinition("a", half_second)])
    executor = PipelineExecutor(clock=clock, timeout_ms=500)
    for _ in range(5):  # the wake-up order varies between runs on trio
        with anyio.fail_after(5):
            result = await executor.execute(pipeline)
        assert result.success, result.error
        assert result.outputs == {"a": "done"}


@on_both_backends
async def test_a_deadline_between_stages_is_still_a_timeout() -> None:
    clock = FakeClock()
    second = ScriptedStage(Delay(1, then="late"), clock=clock)
    pipeline = PipelineDefinition(
        "cut",
        [StageDefinition("a", ScriptedStage(1)), StageDefinition("b", second, inputs=["a"])],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor(clock=clock, timeout_ms=500).execute(pipeline)
    assert not result.success
    assert result.error == "Timeout: pipeline 'cut' exceeded timeout_ms=500"
    assert result.stage_runs["b"].status is StageStatus.CANCELLED


# -- foreign cancellation ---------------------------------------------------------------------------


async def test_a_foreign_task_cancel_of_a_stage_fails_the_run() -> None:
    """asyncio only: `Task.cancel()` by someone else is not the run's cancellation."""
    tasks: dict[str, asyncio.Task[Any]] = {}
    started = anyio.Event()

    async def waits(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        task = asyncio.current_task()
        assert task is not None
        tasks["a"] = task
        started.set()
        await anyio.sleep_forever()
        return StageResult.success("never")

    after = ScriptedStage("after")
    pipeline = PipelineDefinition(
        "foreign",
        [StageDefinition("a", FunctionStage(waits)), StageDefinition("b", after, inputs=["a"])],
    )

    async def killer() -> None:
        await started.wait()
        tasks["a"].cancel()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            result = await PipelineExecutor().execute(pipeline)
    assert not result.success
    assert result.failed_stages == ["a"]
    assert (result.get_result("a").error or "").startswith("CancelledError")
    assert after.call_count == 0


@on_both_backends
async def test_another_backends_cancellation_or_a_user_base_exception_fails_the_stage() -> None:
    """On trio an asyncio CancelledError can only be stray; a group holding one too."""
    foreign_cancel = ScriptedStage(asyncio.CancelledError("from a library"))
    group = ScriptedStage(BaseExceptionGroup("g", [ValueError("v"), asyncio.CancelledError()]))
    pipeline = PipelineDefinition(
        "odd",
        [
            StageDefinition("c", foreign_cancel, critical=False),
            StageDefinition("g", group, critical=False),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor().execute(pipeline)
    assert result.failed_stages == ["c", "g"]
    assert (result.get_result("c").error or "").startswith("CancelledError")
    assert (result.get_result("g").error or "").startswith("BaseExceptionGroup")


# -- cache values -----------------------------------------------------------------------------------


@on_both_backends
async def test_a_generator_output_reaches_dependents_whole_with_a_cache() -> None:
    """Serialising would consume it: it is not cached, and the dependent sees every item."""
    numbers = ScriptedStage(x for x in range(3))

    async def collect(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(list(input))

    pipeline = PipelineDefinition(
        "gen",
        [
            StageDefinition("g", numbers),
            StageDefinition("c", FunctionStage(collect), inputs=["g"], cache=False),
        ],
    )
    store = MemoryCache()
    with anyio.fail_after(5):
        result = await PipelineExecutor(cache=store).execute(pipeline)
    assert result.outputs["c"] == [0, 1, 2]
    assert "iterator" in result.stage_runs["g"].cache_warnings[0]
    assert await store.count() == 0


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(frozenset({(1, Color.RED)}), id="enum-inside-a-set-member"),
        pytest.param(collections.defaultdict(list, a=[1]), id="defaultdict"),
        pytest.param([1, iter([2])], id="nested-iterator"),
    ],
)
def test_values_that_would_not_come_back_the_same_are_refused(value: Any) -> None:
    with pytest.raises(UncacheableOutputError):
        JsonSerializer().dumps(value, Any)


def test_an_iterator_inside_an_output_is_refused_before_it_is_consumed() -> None:
    inner = iter([2, 3])
    with pytest.raises(UncacheableOutputError, match="list_iterator"):
        JsonSerializer().dumps({"page": [1, inner]}, Any)
    assert list(inner) == [2, 3]


def test_a_large_list_of_scalars_still_round_trips() -> None:
    value = list(range(200_000))
    data = JsonSerializer().dumps(value, Any)
    assert JsonSerializer().loads(data, Any) == value


# -- configuration ----------------------------------------------------------------------------------


def test_backoff_never_overflows_even_when_cap_over_initial_does() -> None:
    config = RetryConfig(max_attempts=2, initial_delay_ms=1e-10, max_delay_ms=1e300)
    assert config.delay_ms(1030) == 1e300
    assert config.delay_ms(10**18) == 1e300
    assert config.delay_ms(2) == pytest.approx(2e-10)


def test_a_mapping_of_retryable_errors_and_a_set_of_stages_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="retryable_errors"):
        RetryConfig(retryable_errors={"timeout": 1})  # type: ignore[arg-type]  # under test
    stage = StageDefinition("a", ScriptedStage(1))
    with pytest.raises(DefinitionError, match="stages"):
        PipelineDefinition("p", {stage})  # type: ignore[arg-type]  # under test


def test_a_long_cycle_is_shown_short_but_kept_whole_on_the_issue() -> None:
    stages = [StageDefinition("root", ScriptedStage(0))] + [
        StageDefinition(f"s{i}", ScriptedStage(i), inputs=[f"s{(i - 1) % 500}"]) for i in range(500)
    ]
    (issue,) = PipelineDefinition("ring", stages).issues
    assert issue.message.startswith("Circular dependency detected: ")
    assert "more) ..." in issue.message
    assert len(issue.message) < 300
    assert len(issue.cycle) == 501


def test_only_the_first_few_unknown_inputs_get_suggestions() -> None:
    stages = [StageDefinition("load", ScriptedStage(0))] + [
        StageDefinition(f"use{i}", ScriptedStage(i), inputs=["lodr"]) for i in range(10)
    ]
    messages = PipelineDefinition("typos", stages).validate_pipeline()
    assert len(messages) == 10
    assert sum("did you mean 'load'?" in m for m in messages) == 3


class _One:
    """A picklable stage (module level, no lock)."""

    name = "one"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(1)


def test_a_stage_definition_pickles_and_deep_copies_after_a_run() -> None:
    """The executor keeps a built attempt chain on the definition; it never travels with it."""
    import copy
    import pickle

    from pipeline import Resource

    sd = StageDefinition("a", _One(), uses={"r": 1})
    definition = PipelineDefinition("p", [sd])
    PipelineExecutor(resources={"r": Resource(max_in_flight=2)}).run_sync(definition)
    assert "_pipeline_attempt_chain" in sd.__dict__  # kept for the next run
    restored = pickle.loads(pickle.dumps(sd))
    assert "_pipeline_attempt_chain" not in restored.__dict__
    assert restored.uses == {"r": 1}
    copied = copy.deepcopy(definition)
    assert "_pipeline_attempt_chain" not in copied.stages[0].__dict__
    assert PipelineExecutor(resources={"r": Resource(max_in_flight=2)}).run_sync(copied).success


@on_both_backends
async def test_a_kept_observed_chain_reports_to_each_run() -> None:
    """The attempt chain is kept across runs; its events still go to the run that made them."""
    from pipeline import Resource
    from pipeline.events import AttemptStarted, PipelineEvent, ResourceWaited

    events: list[PipelineEvent] = []

    class Collect:
        def on_event(self, event: PipelineEvent) -> None:
            events.append(event)

    definition = PipelineDefinition(
        "kept", [StageDefinition("a", ScriptedStage(1, repeat_last=True), uses={"r": 1})]
    )
    executor = PipelineExecutor(observers=[Collect()], resources={"r": Resource(max_in_flight=1)})
    with anyio.fail_after(5):
        first = await executor.execute(definition)
        second = await executor.execute(definition)
    for kind in (AttemptStarted, ResourceWaited):
        run_ids = [e.run_id for e in events if isinstance(e, kind)]
        assert run_ids == [first.run_id, second.run_id]

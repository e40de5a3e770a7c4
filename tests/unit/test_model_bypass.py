"""Every record and event the library builds without validation is what validation would build.

The hot paths skip pydantic: events come from `trusted_model` (`pipeline._reporter`), stage
records from `trusted_model` / `fast_model` (`pipeline._run`), `StageResult.success` from
`fast_model`, a result's stage name from `copy_with` (`pipeline._invoke`), a retry's final
error from `model_copy` (`pipeline._retry`) and the run's `PipelineResult` from
`model_construct` (`pipeline._run`, `pipeline.executor`); the `ExecutionPlan` from `fast_model`
(`pipeline.plan.build_plan`). For each, the instance must equal
`Model.model_validate(same data)`: same dump, same field types (a float field holds a float,
a tuple field a tuple), every field present.

Two layers: each bypass on representative values (defaults included), per model; then every
model instance a real run emits or returns, checked against validation of its own field values.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

import pipeline.events
import pipeline.plan
import pipeline.result
from pipeline import (
    AttemptRun,
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageRun,
    StageStatus,
    StepRun,
    stage,
)
from pipeline._model import copy_with, fast_model, trusted_model
from pipeline.cache import CacheStats, MemoryCache
from pipeline.events import (
    AttemptFailed,
    AttemptStarted,
    FanOutItemFinished,
    PipelineEvent,
    ResourceWaited,
    RetryScheduled,
    RunFinished,
    RunStarted,
    StageCacheHit,
    StageFinished,
    StageStarted,
    StepFinished,
    WaveStarted,
)
from pipeline.plan import ExecutionPlan
from pipeline.resources import Resource
from pipeline.testing import Block, Delay, Fail, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend

# -- comparing a built instance with the validated one --------------------------------------------


def _kind(cls: type[Any]) -> type[Any]:
    """`StageResult[Any]` is `StageResult`: validation re-creates a nested plain one as that."""
    meta = getattr(cls, "__pydantic_generic_metadata__", None)
    if meta and meta["origin"] is not None and all(arg is Any for arg in meta["args"]):
        return meta["origin"]  # type: ignore[no-any-return]  # pydantic's metadata is untyped
    return cls


def _shape(value: Any) -> Any:
    """The type of `value` and, recursively, of every field, item and entry inside it."""
    if isinstance(value, BaseModel):
        fields = {name: _shape(value.__dict__.get(name)) for name in type(value).model_fields}
        return (_kind(type(value)), fields)
    if isinstance(value, dict):
        return (type(value), {key: _shape(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return (type(value), [_shape(item) for item in value])
    return type(value)


def _fields(model: BaseModel) -> dict[str, Any]:
    return {name: model.__dict__[name] for name in type(model).model_fields}


def assert_as_validated(built: BaseModel, data: Mapping[str, Any]) -> None:
    """`built` is exactly what `type(built).model_validate(data)` builds."""
    cls = type(built)
    validated = cls.model_validate(dict(data))
    missing = set(cls.model_fields) - set(built.__dict__)
    extra = set(built.__dict__) - set(cls.model_fields)
    assert (missing, extra) == (set(), set()), f"{cls.__name__}: fields missing/extra"
    assert built.model_dump() == validated.model_dump()
    assert built.model_dump(mode="json") == validated.model_dump(mode="json")
    assert _shape(built) == _shape(validated), f"{cls.__name__}: field types differ"
    assert built == validated


# -- layer 1: each bypass, per model, on representative values ------------------------------------

STAMP: dict[str, Any] = {"run_id": "0123456789ab", "at_s": 0.25}
"""What `RunReporter` adds to every event."""

EVENT_FIELDS: dict[type[BaseModel], tuple[dict[str, Any], dict[str, Any]]] = {
    # (only the required fields, as many fields as the reporter passes)
    RunStarted: (
        {"pipeline_name": "p"},
        {
            "pipeline_name": "p",
            "stage_ids": ("a", "b"),
            "waves": (("a",), ("b",)),
            "scheduling": "eager",
        },
    ),
    WaveStarted: ({"wave": 1}, {"wave": 1, "stage_ids": ("b", "c")}),
    StageStarted: ({"stage_id": "a"}, {"stage_id": "a", "wave": 0, "items": 3}),
    AttemptStarted: ({"stage_id": "a", "attempt": 1}, {"stage_id": "a", "item": 2, "attempt": 1}),
    AttemptFailed: (
        {"stage_id": "a", "attempt": 1},
        {
            "stage_id": "a",
            "item": None,
            "attempt": 2,
            "error": "ValueError: boom",
            "exception_type": "ValueError",
            "will_retry": True,
        },
    ),
    RetryScheduled: (
        {"stage_id": "a", "attempt": 2, "delay_s": 0.5},
        {"stage_id": "a", "item": 1, "attempt": 2, "delay_s": 0.5},
    ),
    StageCacheHit: ({"stage_id": "a"}, {"stage_id": "a", "item": 0, "key": "f" * 64}),
    FanOutItemFinished: (
        {"stage_id": "a", "item": 0, "status": StageStatus.SUCCEEDED},
        {
            "stage_id": "a",
            "item": 4,
            "status": StageStatus.FAILED,
            "attempts": 2,
            "cached": False,
            "error": "boom",
            "resource_wait_s": 0.25,
        },
    ),
    StageFinished: (
        {"stage_id": "a", "status": StageStatus.CANCELLED},
        {
            "stage_id": "a",
            "status": StageStatus.SUCCEEDED,
            "attempts": 1,
            "cached": True,
            "error": None,
            "duration_s": 0.125,
            "items": 3,
        },
    ),
    ResourceWaited: (
        {"stage_id": "a", "resource": "llm"},
        {"stage_id": "a", "item": 2, "attempt": 1, "resource": "llm", "weight": 2, "wait_s": 0.5},
    ),
    StepFinished: (
        {"stage_id": "a", "name": "call", "status": StageStatus.SUCCEEDED},
        {
            "stage_id": "a",
            "item": None,
            "name": "call",
            "status": StageStatus.FAILED,
            "cached": False,
            "attempts": 2,
            "error": "ValueError: boom",
        },
    ),
    RunFinished: (
        {"pipeline_name": "p", "success": True},
        {
            "pipeline_name": "p",
            "success": False,
            "duration_s": 1.5,
            "error": "cancelled: stop",
            "failed_stages": ("a", "b"),
        },
    ),
}

ATTEMPT = {
    "attempt": 2,
    "backoff_ms": 10.0,
    "started_ms": 12.5,
    "duration_ms": 3.25,
    "error": "ValueError: boom",
    "resource_wait_ms": 7.5,
    "remote_stopped": False,
    "remote_traceback": "Traceback (most recent call last): ...",
}
STEP = {
    "name": "call",
    "item": 1,
    "status": StageStatus.SUCCEEDED,
    "cached": True,
    "attempts": 0,
    "duration_ms": 0.5,
    "error": None,
}
STAGE_RUN_MINIMAL: dict[str, Any] = {
    "stage_id": "c",
    "status": StageStatus.CANCELLED,
    "error": "[CANCELLED] not started",
}
STAGE_RUN_FULL: dict[str, Any] = {
    "stage_id": "a",
    "status": StageStatus.FAILED,
    "attempts": 2,
    "cached": False,
    "cached_items": 1,
    "cache_warnings": ("cannot fingerprint input: it contains a reference cycle",),
    "cache_errors": ("write failed: CacheError: locked",),
    "started_ms": 1.0,
    "finished_ms": 5.5,
    "duration_ms": 4.5,
    "queue_wait_ms": 0.5,
    "attempt_runs": (AttemptRun.model_validate(ATTEMPT),),
    "items": 3,
    "error": "Failed after 2 attempts. Last error: ValueError: boom",
    "exception_type": "ValueError",
    "traceback": "Traceback (most recent call last): ...",
    "steps": (StepRun.model_validate(STEP),),
}
SUCCESS = {
    # what `StageResult.success(value)` hands `fast_model`
    "success": True,
    "stage_name": "unknown",
    "output": {"rows": [1, 2]},
    "error": None,
    "metadata": {"count": 2},
    "status": StageStatus.SUCCEEDED,
}
PLAN = ExecutionPlan(
    order=("a", "b"),
    waves=(("a",), ("b",)),
    wave_of={"a": 0, "b": 1},
    predecessors={"a": (), "b": ("a",)},
    successors={"a": ("b",), "b": ()},
)
FINISHED_RUN: dict[str, Any] = {
    # what `RunState.build` hands `model_construct`: every field
    "pipeline_name": "p",
    "success": False,
    "outputs": {"a": 1},
    "stage_results": {
        "a": StageResult.success(1, stage_name="a"),
        "b": StageResult.failure("boom", stage_name="b"),
    },
    "failed_stages": ["b"],
    "skipped_stages": [],
    "cancelled_stages": [],
    "total_duration_ms": 7.0,
    "metadata": {"rows": 2},
    "stage_runs": {
        "a": StageRun.model_validate({"stage_id": "a", "status": StageStatus.SUCCEEDED}),
        "b": StageRun.model_validate(STAGE_RUN_FULL | {"stage_id": "b"}),
    },
    "error": None,
    "scheduling": "waves",
    "cache_stats": CacheStats(hits=1, misses=1, writes=1),
    "run_id": "0123456789ab",
    "plan": PLAN,
}
INVALID_RUN: dict[str, Any] = {
    # what `PipelineExecutor` hands `model_construct` for an invalid definition (no cache, no plan)
    "pipeline_name": "p",
    "success": False,
    "failed_stages": ["validation"],
    "metadata": {"validation_errors": ["Duplicate stage IDs: a"]},
    "error": "invalid pipeline definition: Duplicate stage IDs: a",
    "scheduling": "eager",
    "outputs": {},
    "stage_results": {},
    "skipped_stages": [],
    "cancelled_stages": [],
    "total_duration_ms": 0.0,
    "stage_runs": {},
    "run_id": None,
}


def _diamond() -> PipelineDefinition:
    return PipelineDefinition(
        "diamond",
        [
            StageDefinition("a", ScriptedStage(0)),
            StageDefinition("b", ScriptedStage(0), inputs=["a"]),
            StageDefinition("c", ScriptedStage(0), inputs=["a"]),
            StageDefinition("d", ScriptedStage(0), inputs=["b", "c", "b"]),
        ],
    )


Case = tuple[Callable[[], BaseModel], dict[str, Any]]
"""How the library builds an instance, and the data `model_validate` gets instead."""


def _event_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for cls, (required, full) in EVENT_FIELDS.items():
        for label, fields in (("defaults", required), ("full", full)):
            data = STAMP | fields
            cases[f"{cls.__name__}-trusted_model-{label}"] = (
                functools.partial(trusted_model, cls, **data),
                data,
            )
    return cases


def _record_cases() -> dict[str, Case]:
    failed = StageResult.failure("boom", metadata={"k": 1})
    retried_error = "Failed after 3 attempts. Last error: boom"
    return {
        "AttemptRun-fast_model": (lambda: fast_model(AttemptRun, dict(ATTEMPT)), ATTEMPT),
        "StepRun-trusted_model": (lambda: trusted_model(StepRun, **STEP), STEP),
        "StageRun-trusted_model-defaults": (
            lambda: trusted_model(StageRun, **STAGE_RUN_MINIMAL),
            STAGE_RUN_MINIMAL,
        ),
        "StageRun-trusted_model-full": (
            lambda: trusted_model(StageRun, **STAGE_RUN_FULL),
            STAGE_RUN_FULL,
        ),
        "StageRun-fast_model-full": (
            lambda: fast_model(StageRun, dict(STAGE_RUN_FULL)),
            STAGE_RUN_FULL,
        ),
        "ExecutionPlan-build_plan": (lambda: _diamond().plan, _fields(_diamond().plan)),
        "StageResult-success-fast_model": (
            lambda: StageResult.success({"rows": [1, 2]}, metadata={"count": 2}),
            SUCCESS,
        ),
        "StageResult-success-fast_model-defaults": (
            lambda: StageResult.success(None),
            {"success": True, "output": None},
        ),
        "StageResult-copy_with-stage_name": (
            lambda: copy_with(StageResult.success(3), stage_name="s"),
            {"success": True, "output": 3, "stage_name": "s"},
        ),
        "StageResult-model_copy-error": (
            lambda: failed.model_copy(update={"error": retried_error}),
            _fields(failed) | {"error": retried_error},
        ),
        "PipelineResult-model_construct-finished": (
            lambda: PipelineResult.model_construct(**FINISHED_RUN),
            FINISHED_RUN,
        ),
        "PipelineResult-model_construct-invalid": (
            lambda: PipelineResult.model_construct(**INVALID_RUN),
            INVALID_RUN,
        ),
    }


CASES = _event_cases() | _record_cases()

VALIDATED_ONLY = {CacheStats}
"""Models the library builds with validation only (`CacheTally.snapshot`): nothing to compare."""


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bypass_builds_what_validation_builds(case: str) -> None:
    build, data = CASES[case]
    assert_as_validated(build(), data)


def test_every_record_and_event_model_has_a_case() -> None:
    models = {
        obj
        for module in (pipeline.events, pipeline.result, pipeline.plan)
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseModel)
        and obj.__module__ == module.__name__
        and not name.startswith("_")
        and "[" not in name
    }
    covered = {name.split("-")[0] for name in CASES}
    assert {m.__name__ for m in models - VALIDATED_ONLY} <= covered
    assert len(models) >= 15


# -- layer 2: everything a real run builds ---------------------------------------------------------


class Collect:
    """A sync observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent) -> None:
        self.events.append(event)


@stage
async def double(x: int, ctx: PipelineContext[Any]) -> int:
    return 2 * x


def _never(ctx: PipelineContext[Any]) -> bool:
    return False


async def _triple(x: int) -> int:
    return 3 * x


@stage
async def with_step(x: Any, ctx: PipelineContext[Any]) -> int:
    return await ctx.step("triple", _triple, 2)


def _busy_definition(clock: FakeClock) -> PipelineDefinition:
    """Every event kind: waves, retries, a fan-out, a skip, a failure, a timeout."""
    retry = RetryConfig(max_attempts=3, initial_delay_ms=10)
    return PipelineDefinition(
        "busy",
        [
            StageDefinition("load", ScriptedStage([1, 2, 3], repeat_last=True)),
            StageDefinition(
                "flaky",
                ScriptedStage(ValueError("boom"), Fail("again"), 5, repeat_last=True),
                inputs=["load"],
                retry_config=retry,
            ),
            StageDefinition("each", double, inputs=["load"], pattern=ExecutionPattern.FAN_OUT),
            StageDefinition("skipped", ScriptedStage(0), condition=_never),
            StageDefinition(
                "broken",
                ScriptedStage(RuntimeError("bad"), repeat_last=True),
                critical=False,
                cache=False,
            ),
            StageDefinition(
                "slow",
                ScriptedStage(Delay(1.0, then=1), repeat_last=True, clock=clock),
                timeout_ms=5,
                critical=False,
            ),
            StageDefinition("after", ScriptedStage(0, repeat_last=True), inputs=["flaky"]),
            StageDefinition("stepped", with_step, uses={"llm": 1}),
        ],
    )


def _fail_fast_definition() -> PipelineDefinition:
    """A critical failure cancels a stage in flight and one never started."""
    return PipelineDefinition(
        "stopped",
        [
            StageDefinition("fails", ScriptedStage(Fail("down"))),
            StageDefinition("held", ScriptedStage(Block())),
            StageDefinition("later", ScriptedStage(0), inputs=["held"]),
        ],
    )


def _invalid_definition() -> PipelineDefinition:
    return PipelineDefinition(
        "invalid", [StageDefinition("a", ScriptedStage(0)), StageDefinition("a", ScriptedStage(0))]
    )


async def _runs() -> tuple[list[PipelineResult], list[PipelineEvent]]:
    collect = Collect()
    clock = FakeClock()
    cache = MemoryCache()
    busy = _busy_definition(clock)
    llm = {"llm": Resource(max_in_flight=1)}
    results = []
    with anyio.fail_after(10):
        for definition, executor in (
            (busy, PipelineExecutor(clock=clock, cache=cache, observers=[collect], resources=llm)),
            (busy, PipelineExecutor(clock=clock, cache=cache, observers=[collect], resources=llm)),
            (_fail_fast_definition(), PipelineExecutor(clock=clock, observers=[collect])),
            (_invalid_definition(), PipelineExecutor(clock=clock, observers=[collect])),
        ):
            results.append(await executor.execute(definition, None))
    return results, collect.events


def _built_by_a_run(results: list[PipelineResult]) -> list[BaseModel]:
    built: list[BaseModel] = []
    for result in results:
        built.append(result)
        if result.plan is not None:
            built.append(result.plan)
        built.extend(result.stage_results.values())
        built.extend(result.stage_runs.values())
        for record in result.stage_runs.values():
            built.extend(record.attempt_runs)
            built.extend(record.steps)
        if result.cache_stats is not None:
            built.append(result.cache_stats)
    return built


@pytest.mark.parametrize("backend", BACKENDS)
def test_everything_a_run_builds_is_what_validation_builds(backend: Backend) -> None:
    results, events = anyio.run(_runs, backend=backend)
    kinds = {event.kind for event in events}
    assert kinds == set(typing.get_args(pipeline.events.EventKind))  # every kind ran
    statuses = {run.status for result in results for run in result.stage_runs.values()}
    assert statuses == set(StageStatus)
    assert any(run.attempt_runs for result in results for run in result.stage_runs.values())
    for model in [*_built_by_a_run(results), *events]:
        assert_as_validated(model, _fields(model))

"""What cannot cross a process boundary (SPEC section 9): validation before the run, failures during.

Stage objects and conditions routed to a runner that pickles are checked by validation (issue
`unpicklable`, naming the stage and the part that failed); inputs, outputs, context values
and exceptions are checked as they are sent, and fail the stage naming what did not pickle.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    PipelineValidationError,
    StageDefinition,
    StageResult,
    UnpicklableError,
)

if TYPE_CHECKING:
    from pipeline.runners import RemoteRunner

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests

pytestmark = pytest.mark.anyio

GUARD_S = 20


class LockedStage:
    """A stage object holding a lock: it cannot be pickled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    @property
    def name(self) -> str:
        return "locked"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


class Unpicklable(Exception):
    """An exception carrying a lock: it cannot travel back."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def echo(x: Any, ctx: PipelineContext[Any]) -> Any:
    return x


def returns_a_lock(x: Any, ctx: PipelineContext[Any]) -> Any:
    return {"ok": 1, "lock": threading.Lock()}


def raises_unpicklable(x: Any, ctx: PipelineContext[Any]) -> Any:
    raise Unpicklable(f"cannot travel {x}")


def writes_a_lock(x: Any, ctx: PipelineContext[Any]) -> Any:
    ctx.set_state("held", threading.Lock())
    return x


def definition(*stages: StageDefinition) -> PipelineDefinition:
    return PipelineDefinition("p", list(stages))


async def run(
    runner: RemoteRunner, *stages: StageDefinition, initial: Any = None, **kw: Any
) -> PipelineResult:
    executor = PipelineExecutor(runners={"remote": runner})
    with anyio.fail_after(GUARD_S):
        return await executor.execute(definition(*stages), initial, **kw)


# -- before the run: validation -------------------------------------------------------------------
async def test_an_unpicklable_stage_object_is_a_validation_issue_naming_what_failed(
    remote: RemoteRunner,
) -> None:
    bad = StageDefinition("s", LockedStage(), runner="remote")
    executor = PipelineExecutor(runners={"remote": remote})
    with pytest.raises(PipelineValidationError) as info:
        executor.validate(definition(bad))
    (issue,) = info.value.issues
    assert (issue.code, issue.stage_id) == ("unpicklable", "s")
    assert "Stage 's' runs on 'remote'" in issue.message
    assert "attribute 'lock'" in issue.message
    assert "_thread.lock" in issue.message
    result = await executor.execute(definition(bad))
    assert result.failed_stages == ["validation"]
    assert "cannot be pickled" in result.metadata["validation_errors"][0]


async def test_an_unpicklable_condition_is_a_validation_issue(remote: RemoteRunner) -> None:
    lock = threading.Lock()

    def condition(ctx: PipelineContext[Any]) -> bool:
        with lock:
            return True

    bad = StageDefinition("s", FunctionStage(echo), runner="remote", condition=condition)
    with pytest.raises(PipelineValidationError) as info:
        PipelineExecutor(runners={"remote": remote}).validate(definition(bad))
    (issue,) = info.value.issues
    assert (issue.code, issue.stage_id) == ("unpicklable", "s")
    assert "its condition cannot be pickled" in issue.message
    assert "closure variable 'lock'" in issue.message


def test_the_same_stage_on_a_local_runner_is_not_checked(remote: RemoteRunner) -> None:
    executor = PipelineExecutor(runners={"remote": remote})
    executor.validate(definition(StageDefinition("s", LockedStage())))  # inline: fine


def test_an_unknown_runner_names_the_stage_and_the_runners_there_are(
    remote: RemoteRunner,
) -> None:
    bad = StageDefinition("s", FunctionStage(echo), runner="gpu")
    with pytest.raises(PipelineValidationError) as info:
        PipelineExecutor(runners={"remote": remote}).validate(definition(bad))
    (issue,) = info.value.issues
    assert (issue.code, issue.stage_id) == ("unknown_runner", "s")
    assert "'gpu'" in issue.message
    assert "'remote'" in issue.message


# -- during the run: values -------------------------------------------------------------------------
async def test_an_unpicklable_input_fails_the_stage_naming_it(remote: RemoteRunner) -> None:
    stage = StageDefinition("s", FunctionStage(echo), runner="remote")
    result = await run(remote, stage, initial={"lock": threading.Lock()})
    error = result.stage_results["s"].error or ""
    assert error.startswith("UnpicklableError: stage 's': input cannot be pickled")
    assert "input -> ['lock']" in error
    assert result.stage_runs["s"].exception_type == "UnpicklableError"


async def test_an_unpicklable_output_fails_the_stage_naming_it(remote: RemoteRunner) -> None:
    stage = StageDefinition("s", FunctionStage(returns_a_lock), runner="remote")
    result = await run(remote, stage)
    error = result.stage_results["s"].error or ""
    assert error.startswith("UnpicklableError: stage 's': output cannot be pickled")
    assert "['lock']" in error


async def test_an_unpicklable_fan_out_item_output_names_the_item(remote: RemoteRunner) -> None:
    def some_locked(x: int, ctx: PipelineContext[Any]) -> Any:
        return threading.Lock() if x == 2 else x

    stage = StageDefinition(
        "s",
        FunctionStage(some_locked),
        runner="remote",
        pattern=ExecutionPattern.FAN_OUT,
        batch_size=2,
    )
    result = await run(remote, stage, initial=[0, 1, 2, 3])
    error = result.stage_results["s"].error or ""
    assert "FAN_OUT item(s) [2] of 4 failed" in error
    assert "output of item 2 cannot be pickled" in error


async def test_an_unpicklable_context_state_fails_the_stage_naming_the_key(
    remote: RemoteRunner,
) -> None:
    ctx: PipelineContext[Any] = PipelineContext(state={"fine": 1, "conn": threading.Lock()})
    stage = StageDefinition("s", FunctionStage(echo), runner="remote")
    result = await run(remote, stage, initial=1, context=ctx)
    error = result.stage_results["s"].error or ""
    assert "context state 'conn' cannot be pickled" in error


async def test_an_unpicklable_remote_write_fails_the_stage_naming_it(remote: RemoteRunner) -> None:
    stage = StageDefinition("s", FunctionStage(writes_a_lock), runner="remote")
    result = await run(remote, stage, initial=1)
    error = result.stage_results["s"].error or ""
    assert "context write set_state('held') cannot be pickled" in error


async def test_an_unpicklable_exception_comes_back_as_its_type_name_and_text(
    remote: RemoteRunner,
) -> None:
    stage = StageDefinition("s", FunctionStage(raises_unpicklable), runner="remote")
    result = await run(remote, stage, initial=7)
    assert result.stage_results["s"].error == "Unpicklable: cannot travel 7"
    record = result.stage_runs["s"]
    assert record.exception_type == "Unpicklable"
    (attempt,) = record.attempt_runs
    assert attempt.remote_traceback is not None
    assert "raises_unpicklable" in attempt.remote_traceback


async def test_services_that_do_not_pickle_stay_behind(remote: RemoteRunner) -> None:
    def reads_services(x: Any, ctx: PipelineContext[Any]) -> Any:
        return ctx.config, ctx.provider

    ctx: PipelineContext[Any] = PipelineContext(config={"k": 1}, provider=threading.Lock())
    stage = StageDefinition("s", FunctionStage(reads_services), runner="remote")
    result = await run(remote, stage, context=ctx)
    assert result.outputs["s"] == ({"k": 1}, None)


async def test_run_by_hand_returns_the_result_or_names_an_unpicklable_stage(
    remote: RemoteRunner,
) -> None:
    ctx: PipelineContext[Any] = PipelineContext()
    result = await remote.run(FunctionStage(echo), {"x": 1}, ctx)
    assert isinstance(result, StageResult)
    assert result.output == {"x": 1}
    with pytest.raises(
        UnpicklableError, match="stage 'locked': the stage object cannot be pickled"
    ):
        await remote.run(LockedStage(), 1, ctx)

"""Runners (pipeline.runners): inline and threads, runner validation, custom runners.

A runner only runs an attempt's body; retries, timeouts and the cache stay in the executor,
so a custom runner sees each attempt once and never a cache hit. Every scenario runs on
asyncio and trio; time is a `FakeClock`, threads are ordered with events, nothing sleeps.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import pytest
import sniffio

from pipeline import (
    DefinitionError,
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    PipelineValidationError,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
    stage,
)
from pipeline.cache import MemoryCache
from pipeline.runners import (
    INLINE,
    THREADS,
    InlineRunner,
    ThreadRunner,
    default_runner_name,
    sync_body,
)
from pipeline.testing import Block, Fail, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends

if TYPE_CHECKING:
    from pipeline.protocol import PipelineStage


# -- stages and runners used below -------------------------------------------------------------------
def where(x: Any, ctx: PipelineContext[Any]) -> int:
    """A sync stage body: the thread it ran in."""
    return threading.get_ident()


async def where_async(x: Any, ctx: PipelineContext[Any]) -> tuple[int, str]:
    """An async stage body: the thread and the event loop library it ran under."""
    return threading.get_ident(), sniffio.current_async_library()


class Recording:
    """A custom runner recording each call, then running the stage (or `reply`)."""

    def __init__(self, reply: Any = None, *, raises: BaseException | None = None) -> None:
        self.calls: list[tuple[PipelineStage[Any, Any], Any, PipelineContext[Any]]] = []
        self.reply = reply
        self.raises = raises

    async def run(
        self, stage: PipelineStage[Any, Any], input: Any, context: PipelineContext[Any]
    ) -> Any:
        self.calls.append((stage, input, context))
        if self.raises is not None:
            raise self.raises
        if self.reply is not None:
            return self.reply
        return await stage.execute(input, context)


def one(sdef: StageDefinition) -> PipelineDefinition:
    return PipelineDefinition("p", [sdef])


async def execute(
    definition: PipelineDefinition,
    initial: Any = None,
    *,
    context: PipelineContext[Any] | None = None,
    **kw: Any,
) -> PipelineResult:
    kw.setdefault("clock", FakeClock())
    with anyio.fail_after(10):
        return await PipelineExecutor(**kw).execute(definition, initial, context)


# -- which runner by default -------------------------------------------------------------------------
def test_default_runner_is_threads_for_sync_functions_and_inline_otherwise() -> None:
    sync_stage = FunctionStage(where)
    assert default_runner_name(sync_stage) == THREADS
    assert sync_body(sync_stage) is where
    assert default_runner_name(FunctionStage(where_async)) == INLINE
    assert sync_body(FunctionStage(where_async)) is None
    assert default_runner_name(ScriptedStage(1)) == INLINE


def test_every_executor_has_inline_and_threads_plus_what_it_is_given() -> None:
    custom = Recording()
    executor = PipelineExecutor(runners={"custom": custom})
    assert isinstance(executor.runners[INLINE], InlineRunner)
    assert isinstance(executor.runners[THREADS], ThreadRunner)
    assert executor.runners["custom"] is custom


@pytest.mark.parametrize(
    ("runners", "field"),
    [({"x": object()}, "runners['x']"), ({3: Recording()}, "runners[3]")],
)
def test_a_runner_that_is_not_one_is_rejected_naming_it(
    runners: dict[Any, Any], field: str
) -> None:
    with pytest.raises(DefinitionError) as info:
        PipelineExecutor(runners=runners)
    message = str(info.value)
    assert "PipelineExecutor" in message
    assert field in message
    assert "async run(stage, input, context)" in message


# -- InlineRunner and ThreadRunner, directly ---------------------------------------------------------
@on_both_backends
async def test_inline_runner_awaits_execute_on_the_loop_and_lets_errors_through() -> None:
    runner, ctx = InlineRunner(), PipelineContext()
    result = await runner.run(FunctionStage(where_async), None, ctx)
    assert result.output == (threading.get_ident(), sniffio.current_async_library())
    with pytest.raises(ValueError, match="raw"):
        await runner.run(ScriptedStage(ValueError("raw")), None, ctx)


@on_both_backends
async def test_thread_runner_calls_a_sync_body_in_a_worker_thread() -> None:
    limiter = anyio.CapacityLimiter(1)
    borrowed: list[float] = []

    def body(x: int, ctx: PipelineContext[Any]) -> tuple[int, int]:
        borrowed.append(limiter.borrowed_tokens)
        return threading.get_ident(), x + 1

    result = await ThreadRunner(limiter=limiter).run(FunctionStage(body), 1, PipelineContext())
    thread, value = result.output
    assert thread != threading.get_ident()
    assert value == 2
    assert borrowed == [1]  # it ran on the runner's limiter


@on_both_backends
async def test_thread_runner_returns_a_stage_result_as_is_and_raises_the_body_error() -> None:
    def gives_result(x: Any, ctx: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.failure("said no")

    def raises(x: Any, ctx: PipelineContext[Any]) -> int:
        raise KeyError("k")

    runner = ThreadRunner()
    result = await runner.run(FunctionStage(gives_result), None, PipelineContext())
    assert (result.status, result.error) == (StageStatus.FAILED, "said no")
    with pytest.raises(KeyError):
        await runner.run(FunctionStage(raises), None, PipelineContext())


@on_both_backends
async def test_thread_runner_runs_an_async_stage_under_its_own_loop_in_a_thread() -> None:
    result = await ThreadRunner().run(FunctionStage(where_async), None, PipelineContext())
    thread, library = result.output
    assert thread != threading.get_ident()
    assert library == sniffio.current_async_library()  # its own loop, on the run's backend


# -- through the executor ----------------------------------------------------------------------------
@on_both_backends
async def test_a_sync_stage_runs_in_a_worker_thread_by_default() -> None:
    result = await execute(one(StageDefinition("s", stage(where))))
    assert result.success is True
    assert result.outputs["s"] != threading.get_ident()


@on_both_backends
async def test_an_async_stage_runs_inline_by_default() -> None:
    result = await execute(one(StageDefinition("s", stage(where_async))))
    assert result.outputs["s"] == (threading.get_ident(), sniffio.current_async_library())


@on_both_backends
async def test_an_async_stage_on_threads_runs_under_its_own_loop_in_a_thread() -> None:
    ctx: PipelineContext[Any] = PipelineContext()

    async def body(x: int, c: PipelineContext[Any]) -> tuple[int, str, bool]:
        return threading.get_ident(), sniffio.current_async_library(), c is ctx

    sdef = StageDefinition("s", FunctionStage(body), runner=THREADS)
    result = await execute(one(sdef), 1, context=ctx)
    thread, library, same_context = result.outputs["s"]
    assert thread != threading.get_ident()
    assert library == sniffio.current_async_library()  # a loop of its own, on the run's backend
    assert same_context is True


# -- validation ---------------------------------------------------------------------------------------
def test_inline_on_a_sync_function_stage_is_an_invalid_stage_naming_it() -> None:
    definition = one(StageDefinition("load", stage(where), runner=INLINE))
    definition.validate()  # the definition alone does not know the executor: no issue
    with pytest.raises(PipelineValidationError) as info:
        PipelineExecutor().validate(definition)
    [issue] = info.value.issues
    assert (issue.code, issue.stage_id) == ("invalid_stage", "load")
    assert "'load'" in issue.message
    assert "'inline'" in issue.message
    assert "runner='threads'" in issue.message


def test_inline_on_an_async_stage_is_fine() -> None:
    PipelineExecutor().validate(one(StageDefinition("s", stage(where_async), runner=INLINE)))
    PipelineExecutor().validate(one(StageDefinition("s", ScriptedStage(1), runner=INLINE)))


def test_an_unknown_runner_names_the_stage_and_the_known_runners() -> None:
    definition = PipelineDefinition(
        "p",
        [
            StageDefinition("a", ScriptedStage(1)),
            StageDefinition("b", ScriptedStage(1), runner="gpu"),
        ],
    )
    definition.validate()  # no issue without an executor
    executor = PipelineExecutor(runners={"cpu": Recording()})
    with pytest.raises(PipelineValidationError) as info:
        executor.validate(definition)
    [issue] = info.value.issues
    assert (issue.code, issue.stage_id) == ("unknown_runner", "b")
    assert "'gpu'" in issue.message
    assert "'cpu', 'inline', 'threads'" in issue.message
    assert "PipelineExecutor(runners=" in issue.message
    assert "'b'" in str(info.value)


def test_definition_issues_come_before_runner_issues() -> None:
    """A broken definition reports its own problems (its plan cannot be trusted yet)."""
    definition = PipelineDefinition(
        "p",
        [
            StageDefinition("a", ScriptedStage(1)),
            StageDefinition("s", ScriptedStage(1), inputs=["nope"], runner="gpu"),
        ],
    )
    with pytest.raises(PipelineValidationError) as info:
        PipelineExecutor().validate(definition)
    assert [i.code for i in info.value.issues] == ["unknown_input"]


@on_both_backends
async def test_execute_reports_runner_issues_as_a_validation_failure() -> None:
    ran: ScriptedStage[Any, Any] = ScriptedStage(1)
    definition = PipelineDefinition(
        "p", [StageDefinition("ok", ran), StageDefinition("s", ScriptedStage(1), runner="gpu")]
    )
    result = await execute(definition)
    assert result.success is False
    assert result.failed_stages == ["validation"]
    [message] = result.metadata["validation_errors"]
    assert "'gpu'" in message
    assert ran.call_count == 0


# -- custom runners ----------------------------------------------------------------------------------
@on_both_backends
async def test_a_custom_runner_receives_stage_input_and_context() -> None:
    runner = Recording()
    ctx: PipelineContext[Any] = PipelineContext()
    target: ScriptedStage[Any, Any] = ScriptedStage("done")
    definition = PipelineDefinition(
        "p",
        [
            StageDefinition("a", ScriptedStage(41)),
            StageDefinition("b", target, inputs=["a"], runner="mine"),
        ],
    )
    result = await execute(definition, context=ctx, runners={"mine": runner})
    assert result.outputs == {"a": 41, "b": "done"}
    [(got_stage, got_input, got_context)] = runner.calls
    assert got_stage is target
    assert got_input == 41
    assert got_context is ctx


@on_both_backends
async def test_what_a_custom_runner_returns_is_the_stages_result() -> None:
    runner = Recording(reply=StageResult.success("from the runner"))
    target: ScriptedStage[Any, Any] = ScriptedStage("from the stage")
    result = await execute(one(StageDefinition("s", target, runner="r")), runners={"r": runner})
    assert result.outputs == {"s": "from the runner"}
    assert result.get_result("s").stage_name == "s"
    assert target.call_count == 0


@on_both_backends
async def test_a_custom_runner_error_is_the_stages_failure() -> None:
    runner = Recording(raises=RuntimeError("worker lost"))
    result = await execute(
        one(StageDefinition("s", ScriptedStage(1), runner="r")), runners={"r": runner}
    )
    assert result.failed_stages == ["s"]
    assert result.get_result("s").error == "RuntimeError: worker lost"
    assert result.stage_runs["s"].exception_type == "RuntimeError"


@on_both_backends
async def test_a_custom_runner_returning_a_non_result_fails_naming_the_stage() -> None:
    runner = Recording(reply=42)
    result = await execute(
        one(StageDefinition("s", ScriptedStage(1), runner="r")), runners={"r": runner}
    )
    error = result.get_result("s").error
    assert error is not None
    assert error.startswith("stage 's' returned int, expected StageResult")


@on_both_backends
async def test_retries_stay_in_the_executor_a_custom_runner_sees_each_attempt_once() -> None:
    clock, runner = FakeClock(), Recording()
    retry = RetryConfig(max_attempts=3, initial_delay_ms=100, backoff_multiplier=2.0)
    target: ScriptedStage[Any, Any] = ScriptedStage(Fail("a"), ValueError("b"), "ok")
    sdef = StageDefinition("s", target, retry_config=retry, runner="r")
    result = await execute(one(sdef), "in", clock=clock, runners={"r": runner})
    assert result.outputs == {"s": "ok"}
    assert [c[1] for c in runner.calls] == ["in", "in", "in"]
    assert target.call_count == 3
    assert clock.sleeps == [0.1, 0.2]
    assert [a.error for a in result.stage_runs["s"].attempt_runs] == ["a", "ValueError: b", None]


@on_both_backends
async def test_timeouts_stay_in_the_executor_with_a_custom_runner() -> None:
    clock, runner = FakeClock(), Recording()
    retry = RetryConfig(max_attempts=2, initial_delay_ms=0, retryable_errors=["timeout"])
    sdef = StageDefinition(
        "s", ScriptedStage(Block(), "late"), timeout_ms=100, retry_config=retry, runner="r"
    )
    result = await execute(one(sdef), clock=clock, runners={"r": runner})
    assert result.outputs == {"s": "late"}
    assert len(runner.calls) == 2
    [timed_out, ok] = result.stage_runs["s"].attempt_runs
    assert timed_out.error == "Timeout: stage 's' exceeded timeout_ms=100"
    assert timed_out.duration_ms == 100.0
    assert ok.error is None


@on_both_backends
async def test_a_cache_hit_never_reaches_a_custom_runner() -> None:
    runner, store = Recording(), MemoryCache()
    definition = one(StageDefinition("s", ScriptedStage(7, repeat_last=True), runner="r"))
    executor = PipelineExecutor(clock=FakeClock(), cache=store, runners={"r": runner})
    first = await executor.execute(definition, "in")
    second = await executor.execute(definition, "in")
    assert first.outputs == second.outputs == {"s": 7}
    assert len(runner.calls) == 1
    assert (second.stage_runs["s"].cached, second.stage_runs["s"].attempts) == (True, 0)


@on_both_backends
async def test_fan_out_items_each_go_through_the_custom_runner() -> None:
    runner = Recording()
    sdef = StageDefinition(
        "f", ScriptedStage(10, 20, 30), pattern=ExecutionPattern.FAN_OUT, runner="r",
        max_concurrent_fan_out=1,
    )  # fmt: skip
    result = await execute(one(sdef), ["a", "b", "c"], runners={"r": runner})
    assert result.outputs == {"f": [10, 20, 30]}
    assert [c[1] for c in runner.calls] == ["a", "b", "c"]


# -- a blocked thread and a timeout ------------------------------------------------------------------
async def _time_out_a_blocked_thread(*, abandon: bool) -> tuple[PipelineResult, bool]:
    """Time out a sync stage blocked in its thread; return the result and whether the run
    ended while the thread was still blocked."""
    clock = FakeClock()
    started = anyio.Event()
    release = threading.Event()

    def blocked(x: int, ctx: PipelineContext[Any]) -> int:
        anyio.from_thread.run_sync(started.set)
        release.wait(10)
        return x

    sdef = StageDefinition("s", FunctionStage(blocked, abandon_on_cancel=abandon), timeout_ms=100)
    results: list[PipelineResult] = []
    done = anyio.Event()

    async def run() -> None:
        results.append(await PipelineExecutor(clock=clock).execute(one(sdef), 1))
        done.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            await clock.advance(1)  # the attempt's deadline passes in virtual time
            if abandon:
                await done.wait()  # hangs (and fails after 10 s) if the run waits for the thread
            else:
                await anyio.wait_all_tasks_blocked()  # the run had every chance to end
            ended_while_blocked = done.is_set()
            release.set()
    return results[0], ended_while_blocked


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("abandon", [True, False])
def test_abandon_on_cancel_reports_the_timeout_without_waiting_for_the_thread(
    backend: Backend, abandon: bool
) -> None:
    async def main() -> tuple[PipelineResult, bool]:
        return await _time_out_a_blocked_thread(abandon=abandon)

    result, ended_while_blocked = anyio.run(main, backend=backend)
    assert ended_while_blocked is abandon
    assert result.success is False
    assert result.get_result("s").error == "Timeout: stage 's' exceeded timeout_ms=100"
    assert result.stage_runs["s"].exception_type == "StageTimeoutError"

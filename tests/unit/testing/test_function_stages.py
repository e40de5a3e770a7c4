"""Function stages: `@stage`, `FunctionStage`, sync functions in threads, timeouts."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.from_thread
import pytest

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineStage,
    StageDefinition,
    StageResult,
    StageStatus,
    stage,
)
from pipeline.testing import FakeClock, run_stage


@stage
async def double(x: int, ctx: PipelineContext[Any]) -> int:
    return 2 * x


@stage(name="parse")
async def parse_number(text: str, ctx: PipelineContext[Any]) -> StageResult[int]:
    if not text.isdigit():
        return StageResult.failure(f"not a number: {text!r}")
    return StageResult.success(int(text), metadata={"digits": len(text)})


@stage
def add_one_in_thread(x: int, ctx: PipelineContext[Any]) -> int:
    ctx.increment_metric("thread_calls")
    ctx.set_state("thread", threading.current_thread().name)
    return x + 1


async def test_bare_decorator_wraps_value_in_success() -> None:
    result, _ = await run_stage(double, 21)
    assert result.success
    assert result.output == 42
    assert result.stage_name == "double"
    assert isinstance(double, FunctionStage)
    assert isinstance(double, PipelineStage)


async def test_named_decorator_passes_stage_results_through() -> None:
    assert parse_number.name == "parse"
    ok, _ = await run_stage(parse_number, "123")
    assert ok.output == 123
    assert ok.metadata == {"digits": 3}
    bad, _ = await run_stage(parse_number, "x1")
    assert bad.status is StageStatus.FAILED
    assert bad.error == "not a number: 'x1'"


async def test_plain_function_stage_and_original_function_kept() -> None:
    async def shout(text: str, ctx: PipelineContext[Any]) -> str:
        """Upper-case the text."""
        return text.upper()

    s = FunctionStage(shout, name="loud")
    assert s.name == "loud"
    assert s.fn is shout
    assert s.__doc__ == "Upper-case the text."
    assert FunctionStage(shout).name == "shout"
    assert repr(s) == "FunctionStage('loud')"
    assert (await run_stage(s, "hi")).output == "HI"


async def test_sync_function_runs_in_worker_thread_with_thread_safe_context() -> None:
    assert not add_one_in_thread.is_async
    result, ctx = await run_stage(add_one_in_thread, 1)
    assert result.output == 2
    assert ctx.metrics == {"thread_calls": 1}
    assert ctx.get_state("thread") != threading.current_thread().name


async def test_sync_function_does_not_block_the_event_loop() -> None:
    entered = anyio.Event()
    release = threading.Event()

    def blocking(x: int, ctx: PipelineContext[Any]) -> int:
        anyio.from_thread.run_sync(entered.set)
        release.wait(10)
        return x

    async def unblock() -> None:
        await entered.wait()  # the loop runs while the thread is blocked
        release.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(unblock)
            result, _ = await run_stage(FunctionStage(blocking), 5)
    assert result.output == 5


async def test_many_threads_increment_metrics_consistently(
    pipeline_executor: PipelineExecutor,
) -> None:
    @stage
    def count(items: int, ctx: PipelineContext[Any]) -> int:
        for _ in range(200):
            ctx.increment_metric("n")
        return items

    from pipeline import ExecutionPattern

    definition = PipelineDefinition(
        "threads",
        [
            StageDefinition(
                "count", count, pattern=ExecutionPattern.FAN_OUT, max_concurrent_fan_out=8
            )
        ],
    )
    result = await pipeline_executor.execute(definition, list(range(16)))
    assert result.success
    assert result.metadata["n"] == 16 * 200


async def test_exception_in_function_becomes_failed_result(
    pipeline_executor: PipelineExecutor,
) -> None:
    @stage
    async def broken(x: int, ctx: PipelineContext[Any]) -> int:
        raise ValueError("bad input")

    definition = PipelineDefinition("p", [StageDefinition("broken", broken)])
    result = await pipeline_executor.execute(definition, 1)
    assert result.failed_stages == ["broken"]
    assert result.stage_results["broken"].error == "ValueError: bad input"
    with pytest.raises(ValueError, match="bad input"):
        await run_stage(broken, 1)  # run_stage lets the exception through


async def test_async_callable_object_and_partial_are_detected() -> None:
    import functools

    class Scale:
        async def __call__(self, x: int, ctx: PipelineContext[Any]) -> int:
            return x * 3

    async def mul(factor: int, x: int, ctx: PipelineContext[Any]) -> int:
        return x * factor

    scale = FunctionStage(Scale())
    assert scale.is_async
    assert scale.name == "Scale"
    triple = FunctionStage(functools.partial(mul, 3))
    assert triple.is_async
    assert triple.name == "mul"
    assert (await run_stage(scale, 2)).output == 6
    assert (await run_stage(triple, 2)).output == 6


async def test_sync_callable_returning_a_coroutine_is_awaited() -> None:
    async def later(x: int) -> int:
        return x + 100

    s: FunctionStage[int, Any] = FunctionStage(lambda x, ctx: later(x))
    assert (await run_stage(s, 1)).output == 101


def test_non_callable_is_rejected() -> None:
    with pytest.raises(TypeError, match="needs a callable"):
        FunctionStage(42)  # type: ignore[call-overload]  # the runtime check under test


async def _thread_timeout(*, abandon: bool) -> tuple[StageResult[Any], bool]:
    """Time out a blocked sync stage; return its result and whether the run ended first."""
    clock = FakeClock()
    executor = PipelineExecutor(clock=clock)
    started = anyio.Event()
    release = threading.Event()

    def slow(x: int, ctx: PipelineContext[Any]) -> int:
        anyio.from_thread.run_sync(started.set)
        release.wait(10)
        return x

    definition = PipelineDefinition(
        "t",
        [StageDefinition("slow", FunctionStage(slow, abandon_on_cancel=abandon), timeout_ms=100)],
    )
    results: list[Any] = []
    done = anyio.Event()
    ended_before_release = False

    async def run() -> None:
        results.append(await executor.execute(definition, 1))
        done.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            await clock.advance(1)  # the stage's deadline passes in virtual time
            if abandon:
                await done.wait()
            else:
                await anyio.wait_all_tasks_blocked()  # the run had every chance to end
            ended_before_release = done.is_set()
            release.set()
    return results[0].stage_results["slow"], ended_before_release


async def test_timeout_on_sync_stage_waits_for_thread_then_reports_timeout() -> None:
    result, ended_early = await _thread_timeout(abandon=False)
    assert not ended_early
    assert result.status is StageStatus.FAILED
    assert result.error is not None
    assert "Timeout" in result.error


async def test_timeout_on_sync_stage_with_abandon_on_cancel_stops_waiting() -> None:
    result, ended_early = await _thread_timeout(abandon=True)
    assert ended_early
    assert result.error is not None
    assert "Timeout" in result.error


def test_function_stages_on_trio() -> None:
    async def main() -> tuple[Any, Any]:
        executor = PipelineExecutor(clock=FakeClock())
        definition = PipelineDefinition(
            "trio",
            [
                StageDefinition("double", double),
                StageDefinition("inc", add_one_in_thread, inputs=["double"]),
            ],
        )
        result = await executor.execute(definition, 4)
        return result.outputs, result.metadata

    outputs, metadata = anyio.run(main, backend="trio")
    assert outputs == {"double": 8, "inc": 9}
    assert metadata == {"thread_calls": 1}

"""Cancellation: through the context (cancel(), cancel_token) and of the awaiting task.

Scenarios run on asyncio and trio.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.to_thread
import pytest

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    Scheduling,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline.testing import Block, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends


def blocker(started: anyio.Event, finished: list[str], name: str) -> FunctionStage[Any, Any]:
    """Signals `started`, then waits forever; records `name` in `finished` when unwound."""

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        started.set()
        try:
            await anyio.Event().wait()
        finally:
            finished.append(name)
        return StageResult.success("never")

    return FunctionStage(body)


def running_task_ids() -> set[int]:
    return {task.id for task in anyio.get_running_tasks()}


# -- through the context -------------------------------------------------------------------------------


@on_both_backends
async def test_cancel_from_inside_a_stage() -> None:
    """A stage calling context.cancel() stops the run: in-flight siblings and later stages."""
    sibling_started = anyio.Event()
    unwound: list[str] = []

    async def stopper(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await sibling_started.wait()
        context.cancel("user pressed stop")
        return StageResult.success("stopped")

    later = ScriptedStage("later")
    pipeline = PipelineDefinition(
        "c",
        [
            StageDefinition("stopper", FunctionStage(stopper)),
            StageDefinition("sibling", blocker(sibling_started, unwound, "sibling")),
            StageDefinition("later", later, inputs=["stopper"]),
        ],
    )
    ctx = PipelineContext()
    with anyio.fail_after(2):
        result = await PipelineExecutor().execute(pipeline, None, ctx)
    assert result.success is False
    assert unwound == ["sibling"]
    assert later.call_count == 0
    assert result.cancelled_stages == ["sibling", "later"]
    assert result.get_result("later").error == "[CANCELLED] not started"
    assert result.metadata["cancellation"] == {"reason": "user pressed stop"}
    assert result.outputs == {"stopper": "stopped"}
    assert ctx.is_cancelled()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduling", ["waves", "eager"])
def test_cancel_from_another_task(backend: Backend, scheduling: Scheduling) -> None:
    async def scenario() -> None:
        started = anyio.Event()
        unwound: list[str] = []
        later = ScriptedStage("later")
        pipeline = PipelineDefinition(
            "c",
            [
                StageDefinition("first", ScriptedStage(1)),
                StageDefinition("slow", blocker(started, unwound, "slow"), inputs=["first"]),
                StageDefinition("later", later, inputs=["slow"]),
            ],
        )
        ctx = PipelineContext()
        results: list[PipelineResult] = []

        async def run() -> None:
            results.append(await PipelineExecutor(scheduling=scheduling).execute(pipeline, 0, ctx))

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await started.wait()
                ctx.cancel("operator abort")
        (result,) = results
        assert result.success is False
        assert unwound == ["slow"]
        assert result.cancelled_stages == ["slow", "later"]
        assert result.get_result("slow").status is StageStatus.CANCELLED
        assert later.call_count == 0
        assert result.metadata["cancellation"]["reason"] == "operator abort"
        assert result.outputs == {"first": 1}

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_cancel_from_a_worker_thread() -> None:
    """A sync stage running in a worker thread may cancel the run through the context."""
    started = anyio.Event()
    unwound: list[str] = []

    async def stopper(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await started.wait()
        await anyio.to_thread.run_sync(context.cancel, "from thread")
        return StageResult.success(None)

    pipeline = PipelineDefinition(
        "c",
        [
            StageDefinition("stopper", FunctionStage(stopper)),
            StageDefinition("slow", blocker(started, unwound, "slow")),
        ],
    )
    with anyio.fail_after(2):
        result = await PipelineExecutor().execute(pipeline, None, PipelineContext())
    assert result.success is False
    assert unwound == ["slow"]
    assert result.cancelled_stages == ["slow"]
    assert result.metadata["cancellation"] == {"reason": "from thread"}


@on_both_backends
async def test_anyio_event_token_set_by_another_task() -> None:
    """Setting an anyio.Event cancel_token cancels the stages in flight at once."""
    token = anyio.Event()
    started = anyio.Event()
    unwound: list[str] = []
    later = ScriptedStage("later")
    pipeline = PipelineDefinition(
        "c",
        [
            StageDefinition("slow", blocker(started, unwound, "slow")),
            StageDefinition("later", later, inputs=["slow"]),
        ],
    )
    ctx = PipelineContext(cancel_token=token)
    results: list[PipelineResult] = []

    async def run() -> None:
        results.append(await PipelineExecutor().execute(pipeline, None, ctx))

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            token.set()
    (result,) = results
    assert result.success is False
    assert unwound == ["slow"]
    assert result.cancelled_stages == ["slow", "later"]
    assert "cancellation" in result.metadata
    assert later.call_count == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduling", ["waves", "eager"])
def test_threading_event_token_checked_at_stage_boundaries(
    backend: Backend, scheduling: Scheduling
) -> None:
    async def scenario() -> None:
        token = threading.Event()

        async def first(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            token.set()  # e.g. a signal handler in another thread
            return StageResult.success("first")

        second, third = ScriptedStage("second"), ScriptedStage("third")
        pipeline = PipelineDefinition(
            "c",
            [
                StageDefinition("first", FunctionStage(first)),
                StageDefinition("second", second, inputs=["first"]),
                StageDefinition("third", third, inputs=["second"]),
            ],
        )
        ctx = PipelineContext(cancel_token=token)
        with anyio.fail_after(2):
            result = await PipelineExecutor(scheduling=scheduling).execute(pipeline, None, ctx)
        assert result.success is False
        assert result.outputs == {"first": "first"}
        assert result.cancelled_stages == ["second", "third"]
        assert second.call_count == third.call_count == 0
        assert "cancellation" in result.metadata

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_token_already_set_runs_nothing() -> None:
    """A run whose token is set before it starts runs no stage."""
    token = threading.Event()
    token.set()
    stage = ScriptedStage(1)
    pipeline = PipelineDefinition("c", [StageDefinition("a", stage)])
    result = await PipelineExecutor().execute(pipeline, None, PipelineContext(cancel_token=token))
    assert result.success is False
    assert stage.call_count == 0
    assert result.cancelled_stages == ["a"]
    assert "cancellation" in result.metadata


# -- cancelling the caller -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern", [ExecutionPattern.SEQUENTIAL, ExecutionPattern.FAN_OUT])
def test_cancelling_the_caller_propagates_and_leaves_no_task(
    backend: Backend, pattern: ExecutionPattern
) -> None:
    async def scenario() -> None:
        running = 0
        entered = 0
        unwound: list[int] = []
        all_started = anyio.Event()
        expected = 3 if pattern is ExecutionPattern.FAN_OUT else 2

        async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            nonlocal running, entered
            running += 1
            entered += 1
            if entered == expected:
                all_started.set()
            try:
                await anyio.Event().wait()
            finally:
                running -= 1
                unwound.append(1)
            return StageResult.success(input)

        stage = FunctionStage(body)
        stages = [StageDefinition("a", stage, pattern=pattern, max_concurrent_fan_out=None)]
        if pattern is ExecutionPattern.SEQUENTIAL:
            stages.append(StageDefinition("b", stage))
        pipeline = PipelineDefinition("c", stages)
        outcome: list[str] = []
        tasks_before = running_task_ids()

        async def run() -> None:
            try:
                await PipelineExecutor().execute(pipeline, [1, 2, 3])
            except anyio.get_cancelled_exc_class():
                outcome.append("cancelled")
                raise
            outcome.append("returned")  # pragma: no cover - must not happen

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await all_started.wait()
                tg.cancel_scope.cancel()
        assert outcome == ["cancelled"]
        assert running == 0
        assert len(unwound) == expected
        assert running_task_ids() == tasks_before  # no stage, worker or watchdog task left

    anyio.run(scenario, backend=backend)


async def test_cancel_scope_around_execute() -> None:
    """A caller's cancel scope cancels the run and execute does not return a result."""
    started = anyio.Event()
    unwound: list[str] = []
    pipeline = PipelineDefinition("c", [StageDefinition("slow", blocker(started, unwound, "s"))])
    results: list[PipelineResult] = []
    with anyio.fail_after(2), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def cancel_when_started() -> None:
                await started.wait()
                scope.cancel()

            tg.start_soon(cancel_when_started)
            results.append(await PipelineExecutor().execute(pipeline))
    assert scope.cancelled_caught
    assert results == []
    assert unwound == ["s"]


# -- interrupts, foreign tokens, observers of a cancelled caller -----------------------------------


@pytest.mark.parametrize("interrupt", [SystemExit(3), KeyboardInterrupt("stop")], ids=repr)
@pytest.mark.parametrize(
    ("backend", "pattern"),
    [
        ("asyncio", ExecutionPattern.SEQUENTIAL),
        ("trio", ExecutionPattern.SEQUENTIAL),
        # asyncio itself stops its loop on SystemExit and abandons the other fan-out workers
        # unawaited (a warning at garbage collection), so the nested case runs on trio only.
        ("trio", ExecutionPattern.FAN_OUT),
    ],
)
def test_interrupts_in_a_stage_reach_the_caller_unwrapped(
    backend: Backend, pattern: ExecutionPattern, interrupt: BaseException
) -> None:
    leave = ScriptedStage(interrupt, repeat_last=True)  # a fan-out calls it once per item
    definition = PipelineDefinition("exit", [StageDefinition("leave", leave, pattern=pattern)])

    async def scenario() -> None:
        await PipelineExecutor().execute(definition, [1, 2])

    with pytest.raises(type(interrupt)) as caught:
        anyio.run(scenario, backend=backend)
    assert caught.value is interrupt


@on_both_backends
async def test_a_threading_event_token_cancels_stages_in_flight() -> None:
    """A token that cannot be awaited is polled: blocked stages are cancelled, not waited for."""
    token = threading.Event()
    a, b = ScriptedStage(Block()), ScriptedStage(Block())
    definition = PipelineDefinition("tok", [StageDefinition("a", a), StageDefinition("b", b)])
    holder: list[PipelineResult] = []
    tasks_before = running_task_ids()

    async def run() -> None:
        context = PipelineContext(cancel_token=token)
        holder.append(await PipelineExecutor().execute(definition, None, context))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await a.wait_for_calls()
            token.set()
    result = holder[0]
    assert not result.success
    assert result.cancelled_stages == ["a", "b"]
    assert result.metadata["cancellation"] == {"reason": "cancel_token is set"}
    assert running_task_ids() == tasks_before  # the token poller ended with the run


async def test_an_asyncio_event_token_set_by_another_task_cancels_the_run() -> None:
    """SPEC 5 names an asyncio.Event as a cancel token (asyncio only, by nature)."""
    import asyncio  # noqa: TID251  # interop with asyncio's own Event is what is tested

    token = asyncio.Event()
    started = anyio.Event()
    unwound: list[str] = []
    later = ScriptedStage("later")
    pipeline = PipelineDefinition(
        "c",
        [
            StageDefinition("slow", blocker(started, unwound, "slow")),
            StageDefinition("later", later, inputs=["slow"]),
        ],
    )
    holder: list[PipelineResult] = []

    async def run() -> None:
        holder.append(
            await PipelineExecutor().execute(pipeline, None, PipelineContext(cancel_token=token))
        )

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            token.set()
    (result,) = holder
    assert result.success is False
    assert unwound == ["slow"]
    assert result.cancelled_stages == ["slow", "later"]
    assert later.call_count == 0
    assert "cancellation" in result.metadata


@on_both_backends
async def test_observers_see_the_end_of_a_run_whose_caller_was_cancelled() -> None:
    """Cancelling the awaiting task still closes every stage and the run for observers."""
    events: list[Any] = []

    class Collect:
        def on_event(self, event: Any) -> None:
            events.append(event)

    a = ScriptedStage(Block())
    definition = PipelineDefinition(
        "caller",
        [StageDefinition("a", a), StageDefinition("after", ScriptedStage(1), inputs=["a"])],
    )
    executor = PipelineExecutor(observers=[Collect()])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(executor.execute, definition)
            await a.wait_for_calls()
            tg.cancel_scope.cancel()
    finished = {e.stage_id: e.status for e in events if e.kind == "stage_finished"}
    assert finished == {"a": StageStatus.CANCELLED, "after": StageStatus.CANCELLED}
    assert events[-1].kind == "run_finished"
    assert events[-1].success is False


# -- stray cancellation (SPEC 7) -------------------------------------------------------------------


async def test_a_stray_cancelled_error_fails_its_stage_and_the_run() -> None:
    """A CancelledError nobody aimed at the stage (a cancelled future it awaited) is a failure."""
    import asyncio  # noqa: TID251  # the stray CancelledError under test is asyncio's

    async def awaits_cancelled_future(
        input: Any, context: PipelineContext[Any]
    ) -> StageResult[Any]:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
        return StageResult.success("unreachable")

    downstream = ScriptedStage("never")
    pipeline = PipelineDefinition(
        "stray",
        [
            StageDefinition("fetch", FunctionStage(awaits_cancelled_future)),
            StageDefinition("use", downstream, inputs=["fetch"]),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor().execute(pipeline)
    assert not result.success
    assert result.failed_stages == ["fetch"]
    assert (result.get_result("fetch").error or "").startswith("CancelledError")
    assert result.stage_runs["use"].error == "[CANCELLED] not started"
    assert downstream.call_count == 0


async def test_a_stray_cancel_racing_a_fail_fast_stop_is_reported_as_cancelled_by_it() -> None:
    """Raised while fail-fast is cancelling it, a stray CancelledError must not escape its scope.

    The stage ran, so it is cancelled by the stop, never "not started" (found by the
    fault-injection property test).
    """
    import asyncio  # noqa: TID251  # the stray CancelledError under test is asyncio's

    from pipeline.testing import Delay, Fail, FakeClock

    clock = FakeClock()
    fails_at_5 = ScriptedStage(Delay(5, then=Fail("boom")), clock=clock)
    stray_at_5 = ScriptedStage(Delay(5, then=asyncio.CancelledError("stray")), clock=clock)
    pipeline = PipelineDefinition(
        "race",
        [
            StageDefinition("a", fails_at_5),
            StageDefinition("b", stray_at_5, critical=False),
        ],
    )
    with anyio.fail_after(5):
        result = await PipelineExecutor(clock=clock).execute(pipeline)
    assert not result.success
    assert result.stage_runs["b"].status is StageStatus.CANCELLED
    assert result.stage_runs["b"].started_ms == 0.0
    assert result.stage_runs["b"].error == "[CANCELLED] stage 'a' failed (fail_fast)"


@on_both_backends
async def test_a_stage_queued_for_a_worker_when_the_caller_cancels_is_cancelled() -> None:
    """Batched spawns queue released stages for a worker; a queued one is in flight already.

    When the caller's cancellation lands before a worker took it, observers see it end as
    cancelled with the caller's reason, never as "not started" (a stage that was released).
    """
    from pipeline.events import StageFinished

    finished: dict[str, str | None] = {}

    class Collect:
        def on_event(self, event: Any) -> None:
            if isinstance(event, StageFinished):
                finished[event.stage_id] = event.error

    caller = anyio.CancelScope()

    async def cancels_the_caller(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        caller.cancel()  # lands before the helper worker that would take "second" starts
        await anyio.sleep_forever()
        return StageResult.success("never")

    second = ScriptedStage("never")
    pipeline = PipelineDefinition(
        "queued",
        [
            StageDefinition("src", ScriptedStage(1)),
            StageDefinition("first", FunctionStage(cancels_the_caller), inputs=["src"]),
            StageDefinition("second", second, inputs=["src"]),
        ],
    )
    with anyio.fail_after(5), caller:
        await PipelineExecutor(observers=[Collect()]).execute(pipeline)
    assert caller.cancelled_caught
    reason = "[CANCELLED] execute() was cancelled by its caller"
    assert finished["first"] == reason
    assert finished["second"] == reason

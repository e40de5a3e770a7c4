"""Executor basics: inputs, concurrency, waves vs eager, run records, metadata, run_sync.

Every scenario runs on asyncio and trio (sync tests calling `anyio.run`).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pipeline import (
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    Scheduling,
    StageDefinition,
    StageResult,
    StageStatus,
    stage,
)
from pipeline.testing import Delay, FakeClock, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends


@stage
async def echo(input: Any, context: PipelineContext[Any]) -> Any:
    """Return the input unchanged."""
    return input


# -- inputs ------------------------------------------------------------------------------------------


@on_both_backends
async def test_inputs_none_one_several() -> None:
    """No inputs: initial input; one: that output; several: dict in declared order."""
    a, b, c, d = ScriptedStage("A"), ScriptedStage("B"), ScriptedStage("C"), ScriptedStage("D")
    pipeline = PipelineDefinition(
        "inputs",
        [
            StageDefinition("a", a),
            StageDefinition("b", b),
            StageDefinition("c", c, inputs=["a"]),
            StageDefinition("d", d, inputs=["c", "b", "a"]),
        ],
    )
    result = await PipelineExecutor().execute(pipeline, "seed")
    assert result.success
    assert a.inputs == ["seed"]
    assert b.inputs == ["seed"]
    assert c.inputs == ["A"]
    (d_input,) = d.inputs
    assert d_input == {"c": "C", "b": "B", "a": "A"}
    assert list(d_input) == ["c", "b", "a"]
    assert result.outputs == {"a": "A", "b": "B", "c": "C", "d": "D"}


@on_both_backends
async def test_initial_input_defaults_to_none_and_context_is_created() -> None:
    """Without initial input and context, entry stages get None and a fresh context."""
    seen: list[Any] = []

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        seen.append((input, isinstance(context, PipelineContext)))
        return StageResult.success(1)

    result = await PipelineExecutor().execute(
        PipelineDefinition("p", [StageDefinition("a", FunctionStage(body))])
    )
    assert result.success
    assert seen == [(None, True)]


@on_both_backends
async def test_every_stage_sees_the_same_context() -> None:
    """The context passed in is the one stages receive; state flows downstream."""
    ctx = PipelineContext()

    async def producer(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        assert context is ctx
        context.set_state("has_lyrics", True)
        return StageResult.success(None)

    async def consumer(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(context.get_state("has_lyrics"))

    pipeline = PipelineDefinition(
        "p",
        [
            StageDefinition("p", FunctionStage(producer)),
            StageDefinition("c", FunctionStage(consumer), inputs=["p"]),
        ],
    )
    result = await PipelineExecutor().execute(pipeline, None, ctx)
    assert result.outputs["c"] is True


# -- concurrency -----------------------------------------------------------------------------------------


def _rendezvous_pipeline(log: list[str]) -> PipelineDefinition:
    left_in, right_in = anyio.Event(), anyio.Event()

    def meet(mine: anyio.Event, other: anyio.Event, name: str) -> FunctionStage[Any, Any]:
        async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            mine.set()
            await other.wait()  # deadlocks unless the sibling runs at the same time
            log.append(name)
            return StageResult.success(name)

        return FunctionStage(body)

    return PipelineDefinition(
        "siblings",
        [
            StageDefinition("root", ScriptedStage(0)),
            StageDefinition("left", meet(left_in, right_in, "left"), inputs=["root"]),
            StageDefinition("right", meet(right_in, left_in, "right"), inputs=["root"]),
            StageDefinition("join", echo, inputs=["left", "right"]),
        ],
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduling", ["waves", "eager"])
def test_siblings_run_concurrently(backend: str, scheduling: Scheduling) -> None:
    async def scenario() -> None:
        log: list[str] = []
        with anyio.fail_after(2):
            result = await PipelineExecutor(scheduling=scheduling).execute(
                _rendezvous_pipeline(log)
            )
        assert result.success
        assert sorted(log) == ["left", "right"]
        assert result.outputs["join"] == {"left": "left", "right": "right"}

    anyio.run(scenario, backend=backend)


def _waves_probe_pipeline(observed: dict[str, bool]) -> PipelineDefinition:
    """`slow` (wave 0) is still running when `fast` (wave 0) has finished; `next` is wave 1."""
    fast_done = anyio.Event()
    next_started = anyio.Event()

    async def slow(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await fast_done.wait()
        await anyio.wait_all_tasks_blocked()  # let the executor start whatever it will
        observed["next_started_while_slow_ran"] = next_started.is_set()
        return StageResult.success("slow")

    async def fast(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        fast_done.set()
        return StageResult.success("fast")

    async def nxt(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        next_started.set()
        return StageResult.success(input)

    return PipelineDefinition(
        "probe",
        [
            StageDefinition("slow", FunctionStage(slow)),
            StageDefinition("fast", FunctionStage(fast)),
            StageDefinition("next", FunctionStage(nxt), inputs=["fast"]),
        ],
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("scheduling", "started_early"), [("waves", False), ("eager", True)])
def test_waves_wait_for_previous_wave_eager_does_not(
    backend: str, scheduling: Scheduling, started_early: bool
) -> None:
    async def scenario() -> None:
        observed: dict[str, bool] = {}
        pipeline = _waves_probe_pipeline(observed)
        assert pipeline.plan.waves == (("slow", "fast"), ("next",))
        with anyio.fail_after(2):
            result = await PipelineExecutor(scheduling=scheduling).execute(pipeline)
        assert result.success
        assert result.scheduling == scheduling
        assert observed == {"next_started_while_slow_ran": started_early}
        assert result.outputs == {"slow": "slow", "fast": "fast", "next": "fast"}

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_default_scheduling_is_waves() -> None:
    """Without `scheduling=`, a wave starts only after the previous one has finished."""
    observed: dict[str, bool] = {}
    with anyio.fail_after(2):
        result = await PipelineExecutor().execute(_waves_probe_pipeline(observed))
    assert result.scheduling == "waves"
    assert observed == {"next_started_while_slow_ran": False}


@on_both_backends
async def test_eager_starts_stage_while_other_wave_runs() -> None:
    """In eager mode a wave-1 stage may unblock a still-running wave-0 stage."""
    next_started = anyio.Event()

    async def slow(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await next_started.wait()  # would deadlock under waves scheduling
        return StageResult.success("slow")

    async def nxt(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        next_started.set()
        return StageResult.success("next")

    pipeline = PipelineDefinition(
        "eager",
        [
            StageDefinition("slow", FunctionStage(slow)),
            StageDefinition("fast", ScriptedStage(1)),
            StageDefinition("next", FunctionStage(nxt), inputs=["fast"]),
        ],
    )
    with anyio.fail_after(2):
        result = await PipelineExecutor(scheduling="eager").execute(pipeline)
    assert result.success


def test_unknown_scheduling_is_rejected() -> None:
    from pipeline import DefinitionError

    with pytest.raises(DefinitionError, match="scheduling"):
        PipelineExecutor(scheduling="fastest")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout_ms", [0, -1, float("nan")])
def test_bad_pipeline_timeout_is_rejected(timeout_ms: float) -> None:
    from pipeline import DefinitionError

    with pytest.raises(DefinitionError, match="timeout_ms"):
        PipelineExecutor(timeout_ms=timeout_ms)


# -- stage names, outputs, metadata ---------------------------------------------------------------------


@on_both_backends
async def test_unknown_stage_name_is_filled_with_stage_id() -> None:
    """A result left with stage_name "unknown" gets the stage id; a given name is kept."""
    named = ScriptedStage(StageResult.success(1, stage_name="custom"))
    pipeline = PipelineDefinition(
        "names",
        [StageDefinition("anon", ScriptedStage(1)), StageDefinition("named", named)],
    )
    result = await PipelineExecutor().execute(pipeline)
    assert result.get_result("anon").stage_name == "anon"
    assert result.get_result("named").stage_name == "custom"


@on_both_backends
async def test_metadata_is_a_copy_of_context_metrics() -> None:
    """`result.metadata` holds the metrics the stages recorded, copied at the end."""

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        context.add_metric("duration_ms", 1234)
        context.increment_metric("calls")
        return StageResult.success(None)

    ctx = PipelineContext(metrics={"preexisting": 1})
    pipeline = PipelineDefinition("m", [StageDefinition("a", FunctionStage(body))])
    result = await PipelineExecutor().execute(pipeline, None, ctx)
    assert result.metadata == {"preexisting": 1, "duration_ms": 1234, "calls": 1}
    ctx.add_metric("later", 2)
    assert "later" not in result.metadata


@on_both_backends
async def test_result_lists_and_get_output() -> None:
    """Outputs hold succeeded stages only; status lists are in plan order."""
    pipeline = PipelineDefinition(
        "lists",
        [
            StageDefinition("a", ScriptedStage(1)),
            StageDefinition("skip", ScriptedStage(2), condition=lambda ctx: False, inputs=["a"]),
            StageDefinition("b", echo, inputs=["skip"]),
        ],
    )
    result = await PipelineExecutor().execute(pipeline)
    assert result.success
    assert result.outputs == {"a": 1, "b": None}
    assert result.skipped_stages == ["skip"]
    assert result.failed_stages == []
    assert result.cancelled_stages == []
    assert list(result.stage_results) == ["a", "skip", "b"]
    assert result.get_output("a") == 1
    with pytest.raises(KeyError, match="skipped"):
        result.get_output("skip")


# -- run records --------------------------------------------------------------------------------------------


@on_both_backends
async def test_run_records_use_the_clock() -> None:
    """Start, finish and duration come from the executor's clock, in ms from the run start."""
    clock = FakeClock(start=100.0)
    pipeline = PipelineDefinition(
        "timed",
        [
            StageDefinition("a", ScriptedStage(Delay(1.0, then="a"), clock=clock)),
            StageDefinition("b", ScriptedStage(Delay(2.0, then="b"), clock=clock), inputs=["a"]),
        ],
    )
    result = await PipelineExecutor(clock=clock).execute(pipeline)
    a, b = result.stage_runs["a"], result.stage_runs["b"]
    assert (a.status, a.attempts, a.started_ms, a.finished_ms, a.duration_ms) == (
        StageStatus.SUCCEEDED,
        1,
        0.0,
        1000.0,
        1000.0,
    )
    assert (b.started_ms, b.finished_ms, b.duration_ms) == (1000.0, 3000.0, 2000.0)
    assert a.stage_id == "a"
    assert a.cached is False
    assert a.error is None
    assert result.total_duration_ms == 3000.0
    assert list(result.stage_runs) == ["a", "b"]


@on_both_backends
async def test_invalid_definition_gives_validation_failure() -> None:
    """An invalid definition is not run: success False, failed_stages == ["validation"]."""
    stage = ScriptedStage(1)
    ctx = PipelineContext(metrics={"m": 1})
    pipeline = PipelineDefinition(
        "bad", [StageDefinition("a", stage, inputs=["ghost"]), StageDefinition("b", stage)]
    )
    result = await PipelineExecutor().execute(pipeline, None, ctx)
    assert result.success is False
    assert result.failed_stages == ["validation"]
    assert result.metadata["validation_errors"] == pipeline.validate_pipeline()
    assert any("ghost" in m for m in result.metadata["validation_errors"])
    assert result.metadata["m"] == 1
    assert result.outputs == {}
    assert stage.call_count == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_sync(backend: Backend) -> None:
    pipeline = PipelineDefinition(
        "sync", [StageDefinition("a", echo), StageDefinition("b", echo, inputs=["a"])]
    )
    result = PipelineExecutor().run_sync(pipeline, 5, backend=backend)
    assert result.success
    assert result.outputs == {"a": 5, "b": 5}


def test_run_sync_passes_context() -> None:
    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(context.provider)

    pipeline = PipelineDefinition("sync", [StageDefinition("a", FunctionStage(body))])
    result = PipelineExecutor().run_sync(pipeline, None, PipelineContext(provider="llm"))
    assert result.outputs == {"a": "llm"}


async def test_plain_async_test_on_asyncio() -> None:
    pipeline = PipelineDefinition("p", [StageDefinition("a", ScriptedStage([1, 2]))])
    result = await PipelineExecutor().execute(pipeline)
    assert result.outputs == {"a": [1, 2]}


@on_both_backends
async def test_queue_wait_is_never_negative_for_stages_run_back_to_back() -> None:
    """A stage run by the task that just finished its input still waited >= 0 ms (real clock)."""
    stages = [StageDefinition("s0", echo)]
    stages += [StageDefinition(f"s{i}", echo, inputs=[f"s{i - 1}"]) for i in range(1, 20)]
    for scheduling in ("waves", "eager"):
        result = await PipelineExecutor(scheduling=scheduling).execute(
            PipelineDefinition("chain", stages), 1
        )
        waits = [run.queue_wait_ms for run in result.stage_runs.values()]
        assert all(wait is not None and wait >= 0 for wait in waits), waits

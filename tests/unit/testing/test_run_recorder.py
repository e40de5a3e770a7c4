"""`record_run`, `RecordingStage` and `RunRecorder`: asserting on a run's progress."""

from __future__ import annotations

from typing import Any

import anyio

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
    StageDefinition,
    StageStatus,
    SubPipeline,
    stage,
)
from pipeline.testing import (
    Block,
    Fail,
    FakeClock,
    RecordingStage,
    RunRecorder,
    ScriptedStage,
    record_run,
    run_stage,
)


async def test_records_start_and_finish_order_with_status(
    pipeline_executor: PipelineExecutor,
) -> None:
    definition = PipelineDefinition(
        "p",
        [
            StageDefinition("load", ScriptedStage(1)),
            StageDefinition("left", ScriptedStage(2), inputs=["load"]),
            StageDefinition("right", ScriptedStage(3), inputs=["load"]),
            StageDefinition("join", ScriptedStage(4), inputs=["left", "right"]),
        ],
    )
    recorded, recorder = record_run(definition)
    result = await pipeline_executor.execute(recorded, "in")
    assert result.success
    assert recorder.started[0] == "load"
    assert set(recorder.started[1:3]) == {"left", "right"}
    assert recorder.started[3] == "join"
    assert recorder.finished[-1] == "join"
    assert recorder.statuses == dict.fromkeys(
        ["load", "left", "right", "join"], StageStatus.SUCCEEDED
    )
    assert recorder.inputs("join") == [{"left": 2, "right": 3}]
    assert recorder.call_count("load") == 1
    assert recorder.call_count("missing") == 0
    assert recorder.timeline()[:2] == ["started load", "finished load: succeeded"]
    assert definition.stages[0].stage is not recorded.stages[0].stage  # original untouched


async def test_failures_exceptions_and_cancellations(fake_clock: FakeClock) -> None:
    executor = PipelineExecutor(clock=fake_clock)
    release = anyio.Event()
    hang = ScriptedStage(Block(), name="hang")
    crash = ScriptedStage(Block(until=release, then=RuntimeError("oops")), name="crash")
    definition = PipelineDefinition(
        "p",
        [
            StageDefinition("soft", ScriptedStage(Fail("meh")), critical=False),
            StageDefinition("hang", hang),
            StageDefinition("crash", crash),
            StageDefinition("never", ScriptedStage(1), inputs=["crash"]),
        ],
    )
    recorded, recorder = record_run(definition, clock=fake_clock)

    async def crash_once_hang_runs() -> None:
        await hang.wait_for_calls(1)
        release.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(crash_once_hang_runs)
            result = await executor.execute(recorded, None)
    assert not result.success
    assert recorder.statuses == {
        "soft": StageStatus.FAILED,
        "crash": StageStatus.FAILED,
        "hang": StageStatus.CANCELLED,  # cancelled by fail-fast
    }
    assert recorder.finished[-2:] == ["crash", "hang"]
    crashed = [r for r in recorder.records if r.stage_id == "crash" and r.kind == "finished"]
    assert crashed[0].error == "RuntimeError: oops"
    assert recorder.call_count("never") == 0  # never started: see result.cancelled_stages
    assert "never" in result.cancelled_stages
    assert all(r.at == 0.0 for r in recorder.records)


async def test_retries_and_concurrency(pipeline_executor: PipelineExecutor) -> None:
    release = anyio.Event()
    each = ScriptedStage(Block(until=release, then="done"), repeat_last=True)
    flaky = ScriptedStage(Fail("busy"), "ok")
    definition = PipelineDefinition(
        "p",
        [
            StageDefinition(
                "each", each, pattern=ExecutionPattern.FAN_OUT, max_concurrent_fan_out=2
            ),
            StageDefinition(
                "flaky",
                flaky,
                inputs=["each"],
                retry_config=RetryConfig(max_attempts=2, initial_delay_ms=5),
            ),
        ],
    )
    recorded, recorder = record_run(definition)

    async def release_when_two_run() -> None:
        await each.wait_for_calls(2)
        release.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(release_when_two_run)
            result = await pipeline_executor.execute(recorded, [1, 2, 3, 4])
    assert result.success
    assert recorder.max_concurrency == 2  # the fan-out cap held
    assert recorder.call_count("each") == 4
    assert recorder.started[-2:] == ["flaky", "flaky"]  # one record per attempt
    assert [r.status for r in recorder.records if r.stage_id == "flaky" and r.status] == [
        StageStatus.FAILED,
        StageStatus.SUCCEEDED,
    ]


async def test_records_stages_inside_a_subpipeline(pipeline_executor: PipelineExecutor) -> None:
    @stage
    async def inc(x: int, ctx: PipelineContext[Any]) -> int:
        return x + 1

    child = PipelineDefinition(
        "child", [StageDefinition("a", inc), StageDefinition("b", inc, inputs=["a"])]
    )
    parent = PipelineDefinition(
        "parent", [StageDefinition("sub", SubPipeline(child, executor=pipeline_executor))]
    )
    recorded, recorder = record_run(parent)
    result = await pipeline_executor.execute(recorded, 0)
    assert result.outputs == {"sub": 2}
    assert recorder.timeline() == [
        "started sub",
        "started sub/a",
        "finished sub/a: succeeded",
        "started sub/b",
        "finished sub/b: succeeded",
        "finished sub: succeeded",
    ]


async def test_invalid_stage_objects_are_left_for_validation(
    pipeline_executor: PipelineExecutor,
) -> None:
    definition = PipelineDefinition(
        "p",
        [StageDefinition("bad", object())],  # type: ignore[arg-type]  # invalid on purpose
    )
    recorded, _ = record_run(definition)
    assert recorded.validate_pipeline() == definition.validate_pipeline() != []


async def test_recording_stage_by_hand_passes_results_through() -> None:
    recorder = RunRecorder()
    wrapped = RecordingStage("x", ScriptedStage(5, name="five"), recorder)
    assert wrapped.name == "five"
    result, _ = await run_stage(wrapped, "in")
    assert result.output == 5
    assert recorder.inputs("x") == ["in"]
    assert repr(recorder) == "RunRecorder(2 records)"
    assert repr(wrapped).startswith("RecordingStage('x', ScriptedStage('five'")


async def test_non_result_return_is_recorded_as_failed() -> None:
    class Sloppy:
        name = "sloppy"

        async def execute(self, input: Any, context: PipelineContext[Any], /) -> Any:
            return "not a result"

    recorded, recorder = record_run(PipelineDefinition("p", [StageDefinition("s", Sloppy())]))
    result = await PipelineExecutor(clock=FakeClock()).execute(recorded)
    assert result.failed_stages == ["s"]
    assert recorder.records[-1].error == "returned str, expected StageResult"

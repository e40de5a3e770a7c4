"""Timings, the summary table and the critical path, from hand-built run records."""

from __future__ import annotations

from typing import Any

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    StageDefinition,
    StageResult,
    StageRun,
    StageStatus,
)
from pipeline._summary import critical_path, format_ms, render_summary, stage_timings
from pipeline.testing import FakeClock


class Echo:
    name = "echo"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


def diamond() -> PipelineDefinition:
    """a -> b (fan-out) -> d and a -> c (conditional) -> d."""
    return PipelineDefinition(
        "diamond",
        [
            StageDefinition("a", Echo()),
            StageDefinition("b", Echo(), pattern=ExecutionPattern.FAN_OUT, inputs=["a"]),
            StageDefinition(
                "c",
                Echo(),
                pattern=ExecutionPattern.CONDITIONAL,
                inputs=["a"],
                condition=lambda ctx: True,
            ),
            StageDefinition("d", Echo(), inputs=["b", "c"]),
        ],
    )


def run(sid: str, start: float | None, end: float | None, **kw: Any) -> tuple[str, StageRun]:
    status = kw.pop("status", StageStatus.SUCCEEDED)
    duration = 0.0 if start is None or end is None else end - start
    return sid, StageRun(
        stage_id=sid,
        status=status,
        attempts=kw.pop("attempts", 0 if start is None else 1),
        started_ms=start,
        finished_ms=end,
        duration_ms=duration,
        **kw,
    )


def diamond_result(**overrides: Any) -> PipelineResult:
    runs = dict(
        [
            run("a", 0.0, 10.0),
            run("b", 12.0, 40.0, items=3, attempts=2),
            run("c", 10.0, 15.0, cached=True),
            run("d", 45.0, 50.0),
        ]
    )
    fields: dict[str, Any] = {
        "pipeline_name": "diamond",
        "success": True,
        "stage_runs": runs,
        "total_duration_ms": 50.0,
    }
    fields.update(overrides)
    return PipelineResult(**fields)


def test_wait_is_start_minus_latest_input_finish() -> None:
    timings = stage_timings(diamond_result(), diamond())
    assert {sid: t.wait_ms for sid, t in timings.items()} == {
        "a": 0.0,
        "b": 2.0,
        "c": 0.0,
        "d": 5.0,
    }
    assert timings["b"].duration_ms == 28.0


def test_wait_works_from_the_plan_and_is_unknown_without_a_graph() -> None:
    result = diamond_result()
    assert stage_timings(result, diamond().plan)["d"].wait_ms == 5.0
    assert all(t.wait_ms is None for t in stage_timings(result).values())


def test_never_started_stages_have_no_wait() -> None:
    result = diamond_result(
        success=False,
        stage_runs=dict(
            [
                run("a", 0.0, 10.0, status=StageStatus.FAILED),
                run("b", None, None, status=StageStatus.CANCELLED),
                run("c", None, None, status=StageStatus.CANCELLED),
                run("d", None, None, status=StageStatus.CANCELLED),
            ]
        ),
    )
    assert stage_timings(result, diamond())["d"].wait_ms is None


def test_critical_path_is_the_heaviest_chain() -> None:
    assert critical_path(diamond(), diamond_result()) == (["a", "b", "d"], 43.0)


def test_critical_path_keeps_instant_stages_at_the_end_of_the_chain() -> None:
    instant_join = diamond_result(
        stage_runs=dict(
            [run("a", 0.0, 10.0), run("b", 10.0, 40.0), run("c", 10.0, 15.0), run("d", 40.0, 40.0)]
        )
    )
    assert critical_path(diamond(), instant_join) == (["a", "b", "d"], 40.0)


def test_critical_path_of_a_run_without_records() -> None:
    assert critical_path(diamond(), diamond_result(stage_runs={})) == ([], 0.0)


def test_critical_path_ties_go_to_plan_order() -> None:
    result = diamond_result(
        stage_runs=dict([run("a", 0, 1), run("b", 1, 3), run("c", 1, 3), run("d", 3, 4)])
    )
    assert critical_path(diamond(), result) == (["a", "b", "d"], 4.0)


def test_summary_table() -> None:
    text = render_summary(diamond_result(), diamond())
    lines = text.splitlines()
    assert lines[0].split() == ["stage", "status", "attempts", "wait", "duration", "cache"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    rows = {line.split()[0]: line for line in lines[2:6]}
    assert rows["b"].split() == [
        "b",
        "[3",
        "items]",
        "succeeded",
        "2",
        "2.0",
        "ms",
        "28.0",
        "ms",
        "-",
    ]
    assert rows["c"].split()[-1] == "hit"
    assert "pipeline 'diamond' succeeded in 50.0 ms (4 succeeded)" in lines
    assert "critical path: a -> b -> d (43.0 ms)" in lines


def test_summary_shows_partially_cached_fan_out() -> None:
    result = diamond_result(
        stage_runs=dict([run("a", 0, 1), run("b", 1, 3, items=5, cached_items=3)])
    )
    row = next(line for line in render_summary(result).splitlines() if line.startswith("b "))
    assert row.endswith("3/5 hit")


def test_summary_lists_failures_and_run_errors() -> None:
    result = diamond_result(
        success=False,
        failed_stages=["b"],
        error="cancelled: by user",
        stage_runs=dict(
            [
                run("a", 0.0, 10.0),
                run("b", 12.0, 40.0, status=StageStatus.FAILED, error="ValueError: bad\nmore"),
                run("c", None, None, status=StageStatus.CANCELLED),
                run("d", None, None, status=StageStatus.CANCELLED),
            ]
        ),
    )
    text = render_summary(result)
    assert "(1 succeeded, 1 failed, 2 cancelled)" in text
    assert "error: cancelled: by user" in text
    assert "  b: ValueError: bad" in text.splitlines()
    assert "critical path" not in text  # needs the graph
    row_d = next(line for line in text.splitlines() if line.startswith("d "))
    assert row_d.split() == ["d", "cancelled", "0", "-", "-", "-"]


def test_summary_of_an_invalid_run() -> None:
    result = PipelineResult(pipeline_name="x", success=False, failed_stages=["validation"])
    text = render_summary(result, diamond())
    assert "  validation: (no error text)" in text


def test_format_ms() -> None:
    assert format_ms(None) == "-"
    assert format_ms(12.345) == "12.3 ms"
    assert format_ms(4560) == "4.56 s"
    assert format_ms(123_400) == "2m 03.4s"


async def test_summary_of_a_real_run_under_a_fake_clock() -> None:
    clock = FakeClock()

    class Slow:
        name = "slow"

        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            await clock.sleep(self.seconds)
            return StageResult.success(input)

    definition = PipelineDefinition(
        "real",
        [
            StageDefinition("a", Slow(0.010)),
            StageDefinition("b", Slow(0.030), inputs=["a"]),
            StageDefinition("c", Slow(0.001), inputs=["b"]),
        ],
    )
    # A chain, so every stage is on the critical path and the total is the sum of the sleeps.
    result = await PipelineExecutor(clock=clock).execute(definition, 1)
    path, total = critical_path(definition, result)
    assert path == ["a", "b", "c"]
    assert round(total, 3) == 41.0
    timings = stage_timings(result, definition)
    assert [round(t.wait_ms or 0.0, 3) for t in timings.values()] == [0.0, 0.0, 0.0]
    assert "critical path: a -> b -> c (41.0 ms)" in render_summary(result, definition)

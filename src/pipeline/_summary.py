"""Where a finished run's time went: queue wait vs run time per stage, a table, the critical path.

Pure functions over the run records (`PipelineResult.stage_runs`) and the graph (a definition
or its `ExecutionPlan`); nothing here runs a stage or imports anyio. `pipeline.result` calls
these for `PipelineResult.summary()` / `critical_path()`, so this module knows the result types
for type checking only and imports nothing from `pipeline.result` at runtime (no import circle).
Graph drawing is `pipeline.viz`; live display is `pipeline.observers`.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from pipeline._graph import heaviest_chain
from pipeline._model import FrozenModel
from pipeline.plan import ExecutionPlan

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pipeline.definition import PipelineDefinition
    from pipeline.result import PipelineResult, StageRun, StageStatus


class StageTiming(FrozenModel):
    """Queue wait and run time of one stage, derived from its run record."""

    stage_id: str
    """The stage's id."""
    wait_ms: float | None
    """From the moment its last input finished (the run start for entry points) until it
    started; None if it never started."""
    duration_ms: float
    """How long it ran (0 if it never started)."""


def _predecessors(
    graph: PipelineDefinition | ExecutionPlan | None,
) -> Mapping[str, Sequence[str]] | None:
    if graph is None:
        return None
    if isinstance(graph, ExecutionPlan):
        return graph.predecessors
    return {s.id: tuple(s.inputs) for s in graph.stages}


def stage_timings(
    result: PipelineResult, graph: PipelineDefinition | ExecutionPlan | None = None
) -> dict[str, StageTiming]:
    """Wait and run time of every stage of `result`, in plan order.

    The wait of a stage is its `started_ms` minus the latest `finished_ms` of its inputs (the
    run start, 0, for entry points): time spent ready but not running, e.g. behind a wave
    barrier. Without `graph` (the definition or its plan) the inputs are unknown and every
    wait is None.
    """
    preds = _predecessors(graph)
    runs = result.stage_runs
    timings: dict[str, StageTiming] = {}
    for sid, record in runs.items():
        wait: float | None = None
        if preds is not None and record.started_ms is not None:
            ready = max(
                (
                    f
                    for dep in preds.get(sid, ())
                    if dep in runs and (f := runs[dep].finished_ms) is not None
                ),
                default=0.0,
            )
            wait = max(record.started_ms - ready, 0.0)
        timings[sid] = StageTiming(stage_id=sid, wait_ms=wait, duration_ms=record.duration_ms)
    return timings


def critical_path(
    graph: PipelineDefinition | ExecutionPlan, result: PipelineResult
) -> tuple[list[str], float]:
    """The chain of dependent stages with the largest total run time, and that total in ms.

    Computed from the run records: each stage weighs its `duration_ms` (0 if it never ran).
    Ties as in `ExecutionPlan.critical_path`. `([], 0.0)` for a run without records.
    """
    runs = result.stage_runs
    durations = {sid: record.duration_ms for sid, record in runs.items()}
    path, total = heaviest_chain(runs, _predecessors(graph) or {}, durations)  # plan order
    return list(path), total


def format_ms(ms: float | None) -> str:
    """`12.3 ms`, `4.56 s`, `2m 03.4s`; `-` for None."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m {rest:04.1f}s"


def _status_counts(result: PipelineResult) -> list[tuple[StageStatus, int]]:
    """How many stages ended in each status, in `StageStatus` declaration order, zeros left out."""
    counts = Counter(r.status for r in result.stage_runs.values())
    if not counts:
        return []
    statuses = type(next(iter(counts)))  # StageStatus, without importing pipeline.result
    return [(status, counts[status]) for status in statuses if counts[status]]


def _cache_cell(record: StageRun) -> str:
    if record.cached:
        return "hit"
    if record.cached_items:  # a fan-out stage resumed: some items came from the cache
        return f"{record.cached_items}/{record.items} hit"
    return "-"


_HEADERS = ("stage", "status", "attempts", "wait", "duration", "cache")
_RIGHT = frozenset({2, 3, 4})


def render_summary(
    result: PipelineResult, graph: PipelineDefinition | ExecutionPlan | None = None
) -> str:
    """A plain-text table of the run (stage, status, attempts, wait, duration, cache).

    Below it: the run's outcome and duration, the critical path (when `graph` is given) and
    the first line of each failed stage's error. Without `graph` the wait column shows `-`.
    """
    timings = stage_timings(result, graph)
    rows: list[tuple[str, ...]] = [_HEADERS]
    for sid, record in result.stage_runs.items():
        stage = sid if record.items is None else f"{sid} [{record.items} items]"
        rows.append(
            (
                stage,
                record.status.value,
                str(record.attempts),
                format_ms(timings[sid].wait_ms),
                format_ms(record.duration_ms if record.started_ms is not None else None),
                _cache_cell(record),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]

    def line(row: Sequence[str]) -> str:
        cells = (
            cell.rjust(widths[i]) if i in _RIGHT else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        )
        return "  ".join(cells).rstrip()

    out = [line(rows[0]), line(["-" * w for w in widths]), *(line(r) for r in rows[1:])]
    tally = ", ".join(f"{n} {status.value}" for status, n in _status_counts(result))
    outcome = "succeeded" if result.success else "failed"
    out.append("")
    out.append(
        f"pipeline {result.pipeline_name!r} {outcome} in {format_ms(result.total_duration_ms)}"
        + (f" ({tally})" if tally else "")
    )
    if result.error:
        out.append(f"error: {result.error}")
    if graph is not None and result.stage_runs:
        path, total = critical_path(graph, result)
        out.append(f"critical path: {' -> '.join(path)} ({format_ms(total)})")
    for sid in result.failed_stages:
        failed = result.stage_runs.get(sid)
        error = (failed.error if failed is not None else None) or ""
        first = error.strip().splitlines()[0] if error.strip() else "(no error text)"
        out.append(f"  {sid}: {first}")
    return "\n".join(out)

"""Where a finished run's time went: queue wait vs run time per stage, a table, the critical path.

Pure functions over the run records (`PipelineResult.stage_runs`) and the graph (a definition
or its `ExecutionPlan`); nothing here runs a stage or imports anyio. Graph drawing is
`pipeline.viz`; live display is `pipeline.observers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._model import FrozenModel
from pipeline.plan import ExecutionPlan
from pipeline.result import StageStatus

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pipeline.definition import PipelineDefinition
    from pipeline.result import PipelineResult, StageRun


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
    Among chains of equal time the one with more stages wins (so instant stages at the end of
    a chain stay on it), then the first in plan order. `([], 0.0)` for a run without records.
    """
    preds = _predecessors(graph) or {}
    runs = result.stage_runs
    best: dict[str, tuple[float, int]] = {}  # (total ms, stages) of the best chain ending here
    parent: dict[str, str | None] = {}
    for sid, record in runs.items():  # plan order is a topological order
        via: str | None = None
        for dep in preds.get(sid, ()):
            if dep in best and (via is None or best[dep] > best[via]):
                via = dep
        total, stages = best[via] if via is not None else (0.0, 0)
        best[sid] = (total + record.duration_ms, stages + 1)
        parent[sid] = via
    if not best:
        return [], 0.0
    end = max(best, key=best.__getitem__)  # max() keeps the first of equal values
    path: list[str] = []
    node: str | None = end
    while node is not None:
        path.append(node)
        node = parent[node]
    path.reverse()
    return path, best[end][0]


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
    counts = {
        status: sum(1 for r in result.stage_runs.values() if r.status is status)
        for status in StageStatus
    }
    tally = ", ".join(f"{n} {status.value}" for status, n in counts.items() if n)
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

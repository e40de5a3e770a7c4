"""Graphs as text: Mermaid flowcharts, Graphviz DOT and a Mermaid Gantt chart of a run.

Pure functions over a definition (its stages and plan) or a result (its run records and the
plan that ran); they return strings and never render, call a service or import anyio. Timing
tables live in `pipeline._summary`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pipeline._summary import format_ms
from pipeline.definition import ExecutionPattern, PipelineDefinition
from pipeline.result import PipelineResult, StageStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.definition import StageDefinition
    from pipeline.result import StageRun

Direction = Literal["LR", "TB", "RL", "BT"]
"""Flow direction of a flowchart (left-to-right, top-to-bottom, ...)."""

STATUS_COLOURS: dict[StageStatus, tuple[str, str]] = {
    StageStatus.SUCCEEDED: ("#dcfce7", "#16a34a"),
    StageStatus.FAILED: ("#fee2e2", "#dc2626"),
    StageStatus.SKIPPED: ("#f3f4f6", "#9ca3af"),
    StageStatus.CANCELLED: ("#fef9c3", "#ca8a04"),
}
"""Fill and stroke colour of a node in a result graph, by status."""

_PATTERN_NOTE = {ExecutionPattern.FAN_OUT: "fan-out", ExecutionPattern.CONDITIONAL: "conditional"}


class _Graph:
    """What both flowchart formats draw: nodes, edges, waves, and optionally a run's records."""

    def __init__(
        self, source: PipelineDefinition | PipelineResult, result: PipelineResult | None
    ) -> None:
        if isinstance(source, PipelineResult):
            if result is not None:
                msg = "pass the definition first: to_mermaid(definition, result)"
                raise TypeError(msg)
            result, definition = source, None
            self.name = result.pipeline_name
        else:
            definition = source
            self.name = source.name
        self.result = result
        self.stages: dict[str, StageDefinition | None] = {}
        self.edges: list[tuple[str, str]] = []
        self.waves: tuple[tuple[str, ...], ...] = ()
        if definition is not None:
            for sdef in definition.stages:
                self.stages.setdefault(sdef.id, sdef)
            edges = [(dep, s.id) for s in definition.stages for dep in dict.fromkeys(s.inputs)]
            self.edges = [(a, b) for a, b in edges if a in self.stages]
            if not definition.issues:
                self.waves = definition.plan.waves
        elif result is not None and result.plan is not None:
            # The plan that ran is the graph: edges and waves, though not the stage patterns.
            plan = result.plan
            self.stages = dict.fromkeys(plan.order)
            self.edges = [
                (dep, sid) for sid in plan.order for dep in dict.fromkeys(plan.predecessors[sid])
            ]
            self.waves = plan.waves
        elif result is not None:  # a hand-built result without a plan: nodes only
            self.stages = dict.fromkeys(result.stage_runs)
        self.ids = _node_ids(list(self.stages))

    def pattern(self, sid: str) -> ExecutionPattern | None:
        sdef = self.stages.get(sid)
        return None if sdef is None else sdef.pattern

    def record(self, sid: str) -> StageRun | None:
        return None if self.result is None else self.result.stage_runs.get(sid)

    def label_lines(self, sid: str) -> list[str]:
        lines = [sid]
        pattern = self.pattern(sid)
        if pattern is not None and pattern in _PATTERN_NOTE:
            lines.append(_PATTERN_NOTE[pattern])
        record = self.record(sid)
        if record is not None:
            facts = [record.status.value]
            if record.started_ms is not None:
                facts.append(format_ms(record.duration_ms))
            if record.attempts > 1:
                facts.append(f"{record.attempts} attempts")
            if record.items is not None:
                facts.append(f"{record.items} items")
            if record.cached:
                facts.append("cached")
            lines.append(" · ".join(facts))
        return lines


def _node_ids(stage_ids: Sequence[str]) -> dict[str, str]:
    """Safe, unique node ids (`s_<id>`): stage ids may hold spaces, dots or Mermaid keywords."""
    ids: dict[str, str] = {}
    used: set[str] = set()
    for sid in stage_ids:
        base = "s_" + re.sub(r"\W", "_", sid, flags=re.ASCII)
        node, n = base, 1
        while node in used:
            n += 1
            node = f"{base}_{n}"
        used.add(node)
        ids[sid] = node
    return ids


# -- Mermaid --------------------------------------------------------------------------------------
def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _mermaid_node(graph: _Graph, sid: str) -> str:
    label = "<br/>".join(_mermaid_text(line) for line in graph.label_lines(sid))
    node = graph.ids[sid]
    pattern = graph.pattern(sid)
    if pattern is ExecutionPattern.FAN_OUT:
        return f'{node}[["{label}"]]'
    if pattern is ExecutionPattern.CONDITIONAL:
        return f'{node}{{{{"{label}"}}}}'
    return f'{node}["{label}"]'


def to_mermaid(
    source: PipelineDefinition | PipelineResult,
    result: PipelineResult | None = None,
    *,
    waves: bool = False,
    direction: Direction = "LR",
) -> str:
    """A Mermaid flowchart of a definition, or of a finished run.

    Nodes are stages (`[[...]]` marks FAN_OUT, `{{...}}` CONDITIONAL; classes `fanout` and
    `conditional`), edges go from each input to its consumer. With `waves=True` each wave is
    a `subgraph wave_k`. Given a `result`, nodes show status, duration, attempts, items and
    cache hits and are coloured by status (classes `succeeded`, `failed`, `skipped`,
    `cancelled`). A result alone is enough: its `plan` gives the edges and waves (only the
    FAN_OUT / CONDITIONAL shapes need the definition); a result without a plan draws nodes only.
    """
    graph = _Graph(source, result)
    out = [f"flowchart {direction}", f"    %% pipeline: {_mermaid_text(graph.name)}"]
    placed: set[str] = set()
    if waves and graph.waves:
        for k, wave in enumerate(graph.waves):
            out.append(f'    subgraph wave_{k}["wave {k}"]')
            out.extend(f"        {_mermaid_node(graph, sid)}" for sid in wave)
            out.append("    end")
            placed.update(wave)
    out.extend(f"    {_mermaid_node(graph, sid)}" for sid in graph.stages if sid not in placed)
    out.extend(f"    {graph.ids[a]} --> {graph.ids[b]}" for a, b in graph.edges)
    marked = {
        cls: [graph.ids[s] for s in graph.stages if graph.pattern(s) is pattern]
        for pattern, cls in (
            (ExecutionPattern.FAN_OUT, "fanout"),
            (ExecutionPattern.CONDITIONAL, "conditional"),
        )
    }
    if graph.result is None:
        out.append("    classDef fanout stroke-width:2px")
        out.append("    classDef conditional stroke-dasharray:4 3")
        out.extend(f"    class {','.join(nodes)} {cls}" for cls, nodes in marked.items() if nodes)
    else:
        for status, (fill, stroke) in STATUS_COLOURS.items():
            nodes = [
                graph.ids[s]
                for s in graph.stages
                if (r := graph.record(s)) is not None and r.status is status
            ]
            if nodes:
                out.append(f"    classDef {status.value} fill:{fill},stroke:{stroke}")
                out.append(f"    class {','.join(nodes)} {status.value}")
    return "\n".join(out) + "\n"


# -- DOT ------------------------------------------------------------------------------------------
def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_node(graph: _Graph, sid: str) -> str:
    label = r"\n".join(_dot_text(line)[1:-1] for line in graph.label_lines(sid))
    attrs = [f'label="{label}"']
    pattern = graph.pattern(sid)
    if pattern is ExecutionPattern.FAN_OUT:
        attrs.append("shape=box3d")
    elif pattern is ExecutionPattern.CONDITIONAL:
        attrs.append("shape=diamond")
    record = graph.record(sid)
    if record is not None:
        fill, stroke = STATUS_COLOURS[record.status]
        attrs.append(f'style="rounded,filled", fillcolor="{fill}", color="{stroke}"')
    return f"{_dot_text(sid)} [{', '.join(attrs)}];"


def to_dot(
    source: PipelineDefinition | PipelineResult,
    result: PipelineResult | None = None,
    *,
    waves: bool = False,
    direction: Direction = "LR",
) -> str:
    """A Graphviz DOT digraph of a definition, or of a finished run (see `to_mermaid`).

    FAN_OUT stages are `box3d`, CONDITIONAL ones `diamond`; waves become `cluster_wave_k`
    subgraphs; with a result, nodes are filled by status and labelled with durations.
    """
    graph = _Graph(source, result)
    out = [
        f"digraph {_dot_text(graph.name)} {{",
        f"    rankdir={direction};",
        '    node [shape=box, style="rounded"];',
    ]
    placed: set[str] = set()
    if waves and graph.waves:
        for k, wave in enumerate(graph.waves):
            out.append(f"    subgraph cluster_wave_{k} {{")
            out.append(f'        label="wave {k}";')
            out.extend(f"        {_dot_node(graph, sid)}" for sid in wave)
            out.append("    }")
            placed.update(wave)
    out.extend(f"    {_dot_node(graph, sid)}" for sid in graph.stages if sid not in placed)
    out.extend(f"    {_dot_text(a)} -> {_dot_text(b)};" for a, b in graph.edges)
    out.append("}")
    return "\n".join(out) + "\n"


# -- Gantt ----------------------------------------------------------------------------------------
_GANTT_TAGS = {
    StageStatus.SUCCEEDED: "done",
    StageStatus.SKIPPED: "done",
    StageStatus.FAILED: "crit",
    StageStatus.CANCELLED: "active",
}


def _gantt_name(text: str) -> str:
    return re.sub(r"[:;#]", " ", text).strip()


def to_gantt(result: PipelineResult, definition: PipelineDefinition | None = None) -> str:
    """A Mermaid Gantt chart of a run's timeline: one bar per stage that started.

    Times are ms since the run started (`dateFormat x`); a bar is at least 1 ms wide so that
    instant stages stay visible. Tags: `done` (succeeded/skipped), `crit` (failed), `active`
    (cancelled). Sections are the plan's waves (from `definition`, else from `result.plan`;
    one `stages` section without either); stages that never started are listed in a comment.
    """
    runs = result.stage_runs
    sections: list[tuple[str, Sequence[str]]] = [("stages", list(runs))]
    plan = result.plan
    if definition is not None:
        plan = None if definition.issues else definition.plan
    if plan is not None:
        sections = [(f"wave {k}", wave) for k, wave in enumerate(plan.waves)]
    ids = _node_ids(list(runs))
    out = [
        "gantt",
        f"    title {_gantt_name(result.pipeline_name)} ({format_ms(result.total_duration_ms)})",
        "    dateFormat x",
        "    axisFormat %M:%S.%L",
    ]
    never: list[str] = []
    for title, members in sections:
        bars: list[str] = []
        for sid in members:
            record = runs.get(sid)
            if record is None or record.started_ms is None or record.finished_ms is None:
                never.append(sid)
                continue
            start = round(record.started_ms)
            end = max(round(record.finished_ms), start + 1)
            name = f"{sid} ({format_ms(record.duration_ms)}{', cached' if record.cached else ''})"
            tag = _GANTT_TAGS[record.status]
            bars.append(f"    {_gantt_name(name)} :{tag}, {ids[sid]}, {start}, {end}")
        if bars:
            out.append(f"    section {_gantt_name(title)}")
            out.extend(bars)
    if never:
        out.append(f"    %% never started: {', '.join(never)}")
    return "\n".join(out) + "\n"

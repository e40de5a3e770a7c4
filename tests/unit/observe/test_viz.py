"""Mermaid / DOT / Gantt text: structure, markers, colours, escaping."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline.testing import FakeClock
from pipeline.viz import to_dot, to_gantt, to_mermaid

from .test_summary import diamond, diamond_result, run


class Echo:
    name = "echo"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_mermaid_definition_nodes_edges_and_markers() -> None:
    text = to_mermaid(diamond())
    lines = _lines(text)
    assert lines[0] == "flowchart LR"
    assert 's_a["a"]' in lines
    assert 's_b[["b<br/>fan-out"]]' in lines
    assert 's_c{{"c<br/>conditional"}}' in lines
    assert 's_d["d"]' in lines
    edges = [line for line in lines if "-->" in line]
    assert edges == ["s_a --> s_b", "s_a --> s_c", "s_b --> s_d", "s_c --> s_d"]
    assert "class s_b fanout" in lines
    assert "class s_c conditional" in lines
    assert "subgraph" not in text


def test_mermaid_waves_are_subgraphs() -> None:
    text = to_mermaid(diamond(), waves=True, direction="TB")
    assert text.startswith("flowchart TB\n")
    blocks = re.findall(r'subgraph (wave_\d+)\["wave \d+"\]\n(.*?)\n\s*end', text, flags=re.S)
    members = {name: re.findall(r"(s_\w+)[\[{]", body) for name, body in blocks}
    assert members == {"wave_0": ["s_a"], "wave_1": ["s_b", "s_c"], "wave_2": ["s_d"]}


def test_mermaid_result_is_coloured_by_status_with_durations() -> None:
    result = diamond_result(
        stage_runs=dict(
            [
                run("a", 0.0, 10.0),
                run("b", 12.0, 40.0, items=3, attempts=2, status=StageStatus.FAILED),
                run("c", 10.0, 15.0, cached=True),
                run("d", None, None, status=StageStatus.CANCELLED),
            ]
        )
    )
    lines = _lines(to_mermaid(diamond(), result))
    assert 's_a["a<br/>succeeded · 10.0 ms"]' in lines
    assert 's_b[["b<br/>fan-out<br/>failed · 28.0 ms · 2 attempts · 3 items"]]' in lines
    assert 's_c{{"c<br/>conditional<br/>succeeded · 5.0 ms · cached"}}' in lines
    assert 's_d["d<br/>cancelled"]' in lines
    assert "class s_a,s_c succeeded" in lines
    assert "class s_b failed" in lines
    assert "class s_d cancelled" in lines
    assert any(line.startswith("classDef failed fill:") for line in lines)
    assert sum("-->" in line for line in lines) == 4


def test_mermaid_of_a_result_without_a_plan_has_nodes_but_no_edges() -> None:
    lines = _lines(to_mermaid(diamond_result()))
    assert 's_b["b<br/>succeeded · 28.0 ms · 2 attempts · 3 items"]' in lines
    assert not any("-->" in line for line in lines)


async def _executed_diamond() -> PipelineResult:
    clock = FakeClock()
    return await PipelineExecutor(clock=clock).execute(diamond(), [1, 2, 3])


async def test_mermaid_of_a_result_alone_draws_edges_and_waves_from_its_plan() -> None:
    result = await _executed_diamond()
    assert result.plan is not None
    text = to_mermaid(result, waves=True)
    lines = _lines(text)
    assert sorted(line for line in lines if "-->" in line) == [
        "s_a --> s_b",
        "s_a --> s_c",
        "s_b --> s_d",
        "s_c --> s_d",
    ]
    assert 's_b["b<br/>succeeded · 0.0 ms · 3 items"]' in lines
    blocks = re.findall(r'subgraph (wave_\d+)\["wave \d+"\]\n(.*?)\n\s*end', text, flags=re.S)
    members = {name: re.findall(r"(s_\w+)\[", body) for name, body in blocks}
    assert members == {"wave_0": ["s_a"], "wave_1": ["s_b", "s_c"], "wave_2": ["s_d"]}
    assert "class s_a,s_b,s_c,s_d succeeded" in lines
    # With the definition as well, the same edges, and the FAN_OUT / CONDITIONAL shapes.
    both = _lines(to_mermaid(diamond(), result))
    assert sorted(line for line in both if "-->" in line) == sorted(
        line for line in lines if "-->" in line
    )
    assert any(line.startswith('s_b[["b<br/>fan-out<br/>succeeded') for line in both)


async def test_dot_and_gantt_of_a_result_alone_use_its_plan() -> None:
    result = await _executed_diamond()
    dot = _lines(to_dot(result, waves=True))
    assert '"a" -> "b";' in dot
    assert '"c" -> "d";' in dot
    assert "subgraph cluster_wave_2 {" in dot
    gantt = _lines(to_gantt(result))
    assert [line for line in gantt if line.startswith("section")] == [
        "section wave 0",
        "section wave 1",
        "section wave 2",
    ]


def test_mermaid_rejects_two_results() -> None:
    with pytest.raises(TypeError, match="definition first"):
        to_mermaid(diamond_result(), diamond_result())


def test_awkward_ids_get_safe_unique_nodes_and_escaped_labels() -> None:
    definition = PipelineDefinition(
        "odd",
        [
            StageDefinition("end", Echo()),
            StageDefinition("a b", Echo(), inputs=["end"]),
            StageDefinition("a-b", Echo(), inputs=["end"]),
            StageDefinition('say "hi" <x>', Echo(), inputs=["a b"]),
        ],
    )
    lines = _lines(to_mermaid(definition))
    assert 's_end["end"]' in lines
    assert 's_a_b["a b"]' in lines
    assert 's_a_b_2["a-b"]' in lines
    assert 's_say__hi___x_["say #quot;hi#quot; #lt;x#gt;"]' in lines
    dot = to_dot(definition)
    assert '"say \\"hi\\" <x>" [label="say \\"hi\\" <x>"];' in _lines(dot)


def test_dot_definition_and_waves() -> None:
    text = to_dot(diamond(), waves=True)
    lines = _lines(text)
    assert lines[0] == 'digraph "diamond" {'
    assert lines[-1] == "}"
    assert "rankdir=LR;" in lines
    assert '"b" [label="b\\nfan-out", shape=box3d];' in lines
    assert '"c" [label="c\\nconditional", shape=diamond];' in lines
    assert '"a" -> "b";' in lines
    assert '"c" -> "d";' in lines
    clusters = re.findall(r"subgraph (cluster_wave_\d+) \{", text)
    assert clusters == ["cluster_wave_0", "cluster_wave_1", "cluster_wave_2"]
    assert text.count("{") == text.count("}")


def test_dot_result_fills_by_status() -> None:
    lines = _lines(to_dot(diamond(), diamond_result()))
    a = next(line for line in lines if line.startswith('"a" ['))
    assert 'label="a\\nsucceeded · 10.0 ms"' in a
    assert 'fillcolor="#dcfce7"' in a
    assert 'style="rounded,filled"' in a


def test_gantt_of_a_run() -> None:
    result = diamond_result(
        stage_runs=dict(
            [
                run("a", 0.0, 10.0),
                run("b", 12.0, 40.0, status=StageStatus.FAILED),
                run("c", 10.0, 10.2, cached=True),
                run("d", None, None, status=StageStatus.CANCELLED),
            ]
        )
    )
    lines = _lines(to_gantt(result, diamond()))
    assert lines[:4] == [
        "gantt",
        "title diamond (50.0 ms)",
        "dateFormat x",
        "axisFormat %M:%S.%L",
    ]
    assert lines[4:] == [
        "section wave 0",
        "a (10.0 ms) :done, s_a, 0, 10",
        "section wave 1",
        "b (28.0 ms) :crit, s_b, 12, 40",
        "c (0.2 ms, cached) :done, s_c, 10, 11",
        "%% never started: d",
    ]


def test_gantt_without_definition_or_plan_uses_one_section() -> None:
    lines = _lines(to_gantt(diamond_result()))
    assert lines.count("section stages") == 1
    assert sum(":done," in line for line in lines) == 4


def test_viz_is_pure_text_without_anyio() -> None:
    spec = importlib.util.find_spec("pipeline.viz")
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    imported = {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    assert not any(name.split(".")[0] in {"anyio", "rich", "opentelemetry"} for name in imported)

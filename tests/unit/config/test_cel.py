"""CEL `when:` conditions in real runs: every operator of the seed's condition language, the
four variables, and the failures (a missing key, a non-bool result) that fail their stage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline import PipelineExecutor, PipelineResult, StageStatus
from pipeline.config import CelCondition, load

pytestmark = pytest.mark.anyio

M = "tests.unit.config.stages"

# Seed 003's condition operators (its table lists 23 under "21 operators"), each as a CEL
# expression that holds and one that does not, over the data `stages.Facts` produces:
# state.user = {email, roles}, state.risk = 0.75, state.nothing = None,
# metrics.amounts = [1000.0, 4000.0, 10000.0], metrics.calls = 3,
# outputs.facts = input = {confidence: 0.7, tier: "gold", scores: [3, 5, 8]}.
OPERATORS: list[tuple[str, str, str]] = [
    ("==", "outputs.facts.tier == 'gold'", "outputs.facts.tier == 'silver'"),
    ("!=", "outputs.facts.tier != 'silver'", "outputs.facts.tier != 'gold'"),
    (">", "state.risk > 0.7", "state.risk > 0.8"),
    (">=", "metrics.calls >= 3", "metrics.calls >= 4"),
    ("<", "outputs.facts.confidence < 0.8", "outputs.facts.confidence < 0.5"),
    ("<=", "input.confidence <= 0.7", "input.confidence <= 0.6"),
    ("AND", "state.risk > 0.7 && metrics.calls >= 3", "state.risk > 0.7 && metrics.calls >= 4"),
    ("OR", "state.risk > 0.9 || metrics.calls == 3", "state.risk > 0.9 || metrics.calls == 4"),
    ("NOT", "!(state.risk > 0.9)", "!(state.risk > 0.7)"),
    ("IN", "input.tier in ['gold', 'platinum']", "input.tier in ['silver', 'bronze']"),
    ("NOT_IN", "!(input.tier in ['silver'])", "!(input.tier in ['gold'])"),
    ("CONTAINS", "'admin' in state.user.roles", "'root' in state.user.roles"),
    ("MATCHES", "state.user.email.matches('^[a-z]+@trusted-domain[.]com$')",
     "state.user.email.matches('@other[.]com$')"),
    ("EXISTS", "has(state.user.email)", "has(state.user.phone)"),
    ("IS_NULL", "state.nothing == null", "state.risk == null"),
    ("ALL", "outputs.facts.scores.all(s, s > 2)", "outputs.facts.scores.all(s, s > 3)"),
    ("ANY", "outputs.facts.scores.exists(s, s > 7)", "outputs.facts.scores.exists(s, s > 8)"),
    ("NONE", "!outputs.facts.scores.exists(s, s > 8)", "!outputs.facts.scores.exists(s, s > 7)"),
    ("SUM", "sum(metrics.amounts) >= 15000.0", "sum(metrics.amounts) > 15000.0"),
    ("AVG", "avg(metrics.amounts) == 5000.0", "avg(metrics.amounts) < 5000.0"),
    ("MIN", "min(metrics.amounts) == 1000.0 && math.least(input.scores) == 3",
     "min(metrics.amounts) > 1000.0"),
    ("MAX", "max(metrics.amounts) >= 10000.0 && math.greatest(input.scores) == 8",
     "max(metrics.amounts) > 10000.0"),
    ("COUNT", "size(outputs.facts.scores) == 3 && size(input) == 3",
     "size(outputs.facts.scores) == 4"),
]  # fmt: skip


def _definition(when: str, fmt: str = "json") -> Any:
    doc = {
        "name": "cel",
        "stages": [
            {"id": "facts", "stage": f"{M}:Facts"},
            {"id": "gated", "stage": f"{M}:Record", "inputs": ["facts"], "when": when},
        ],
    }
    return load(json.dumps(doc), format="json")


async def _run(when: str) -> PipelineResult:
    return await PipelineExecutor().execute(_definition(when), None)


def test_the_table_covers_every_operator_of_the_seed() -> None:
    seed = {"==", "!=", ">", ">=", "<", "<=", "AND", "OR", "NOT", "IN", "NOT_IN", "CONTAINS",
            "MATCHES", "EXISTS", "IS_NULL", "ALL", "ANY", "NONE", "SUM", "AVG", "MIN", "MAX",
            "COUNT"}  # fmt: skip
    assert {name for name, _, _ in OPERATORS} == seed


@pytest.mark.parametrize(("name", "holds", "fails"), OPERATORS, ids=[o[0] for o in OPERATORS])
async def test_each_operator_gates_a_real_run(
    anyio_backend: str, name: str, holds: str, fails: str
) -> None:
    ran = await _run(holds)
    assert ran.success
    assert ran.stage_results["gated"].status is StageStatus.SUCCEEDED, ran.stage_results["gated"]
    skipped = await _run(fails)
    assert skipped.success
    assert skipped.stage_results["gated"].status is StageStatus.SKIPPED
    assert "gated" not in skipped.outputs


async def test_a_missing_key_fails_the_stage(anyio_backend: str) -> None:
    result = await _run("state.no_such_key > 1")
    gated = result.stage_results["gated"]
    assert gated.status is StageStatus.FAILED
    assert "condition of stage 'gated' raised" in (gated.error or "")
    assert "no_such_key" in (gated.error or "")


async def test_a_result_that_is_not_a_bool_fails_the_stage(anyio_backend: str) -> None:
    result = await _run("state.risk")  # a dyn value: known to be a double only at run time
    gated = result.stage_results["gated"]
    assert gated.status is StageStatus.FAILED
    assert "not a bool" in (gated.error or "")


async def test_outputs_hold_only_stages_that_succeeded(anyio_backend: str) -> None:
    text = f"""
name: finished
fail_fast: false
stages:
  - {{id: a, stage: "{M}:Add", params: {{n: 1}}}}
  - {{id: broken, stage: "{M}:Add", params: {{n: 1}}, critical: false, inputs: [a],
      when: "state.nope == 1"}}
  - {{id: c, stage: "{M}:Record", inputs: [broken],
      when: "has(outputs.a) && !has(outputs.broken) && !has(outputs.c) && input == null"}}
"""
    result = await PipelineExecutor().execute(load(text, format="yaml"), 1)
    assert result.stage_results["broken"].status is StageStatus.FAILED
    assert result.stage_results["c"].status is StageStatus.SUCCEEDED
    assert result.outputs["c"] is None


@pytest.mark.parametrize(("when", "ran"), [("input[0] == 3", True), ("input[0] == 4", False)])
async def test_when_works_on_any_pattern_without_conditional(
    anyio_backend: str, when: str, ran: bool
) -> None:
    text = f"""
name: fan
stages:
  - {{id: items, stage: "{M}:Record"}}
  - {{id: each, stage: "{M}:Add", params: {{n: 1}}, pattern: fan_out, inputs: [items],
      when: "size(input) == 3 && {when}"}}
"""
    definition = load(text, format="yaml")
    result = await PipelineExecutor().execute(definition, [3, 5, 8])
    each = result.stage_results["each"]
    assert each.status is (StageStatus.SUCCEEDED if ran else StageStatus.SKIPPED)
    assert result.outputs.get("each") == ([4, 6, 9] if ran else None)


def test_condition_objects_compare_by_expression_and_pickle() -> None:
    import pickle

    first = CelCondition("state.a == 1")
    assert first == CelCondition("state.a == 1")
    assert first != CelCondition("state.a == 2")
    assert pickle.loads(pickle.dumps(first)) == first
    with pytest.raises(ValueError, match="undeclared reference"):
        CelCondition("nobody == 1")

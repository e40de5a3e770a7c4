"""`ExecutionPlan` (pipeline.plan): waves, order, predecessors/successors, downstream, scale.

The plan is a pure value: nothing here runs a pipeline, so there is no backend to parametrise.
Scale is checked by counting the work `build_plan` does (traced lines), never by timing.
"""

from __future__ import annotations

import random
import sys
from typing import TYPE_CHECKING, Any

import pydantic
import pytest

import pipeline.definition
import pipeline.plan
from pipeline import (
    ExecutionPlan,
    PipelineDefinition,
    PipelineValidationError,
    StageDefinition,
)
from pipeline.plan import build_plan
from pipeline.testing import ScriptedStage

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType

    TraceFn = Callable[[FrameType, str, Any], Any]


def sd(sid: str, *inputs: str) -> StageDefinition:
    """A stage definition whose stage is never run."""
    return StageDefinition(sid, ScriptedStage(name=sid), inputs=list(inputs))


def diamond() -> list[StageDefinition]:
    """a -> (b, c) -> d; `d` declares its inputs as c, b (not definition order)."""
    return [sd("a"), sd("b", "a"), sd("c", "a"), sd("d", "c", "b")]


def chain(n: int, *, reverse: bool = False) -> list[StageDefinition]:
    """s0 -> s1 -> ... -> s{n-1}, defined in chain order or the reverse."""
    stages = [sd("s0")] + [sd(f"s{i}", f"s{i - 1}") for i in range(1, n)]
    return stages[::-1] if reverse else stages


# -- shape -------------------------------------------------------------------------------------------
def test_diamond_waves_order_and_wave_of() -> None:
    plan = build_plan(diamond())
    assert plan.waves == (("a",), ("b", "c"), ("d",))
    assert plan.order == ("a", "b", "c", "d")
    assert plan.wave_of == {"a": 0, "b": 1, "c": 1, "d": 2}


def test_predecessors_keep_declared_order_and_successors_definition_order() -> None:
    plan = build_plan(diamond())
    assert plan.predecessors == {"a": (), "b": ("a",), "c": ("a",), "d": ("c", "b")}
    assert plan.successors == {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ()}


def test_a_stage_sits_one_wave_below_its_deepest_input() -> None:
    """`x` depends on an entry point and on a stage two waves down: it goes in wave 3."""
    stages = [sd("x", "root", "deep"), sd("root"), sd("mid", "root"), sd("deep", "mid")]
    plan = build_plan(stages)
    assert plan.wave_of == {"root": 0, "mid": 1, "deep": 2, "x": 3}
    assert plan.waves == (("root",), ("mid",), ("deep",), ("x",))


def test_within_a_wave_definition_order_wins_over_sort_order() -> None:
    """Entry points and wave members come in the order they were defined, whatever their ids."""
    stages = [sd("z"), sd("m"), sd("a"), sd("y", "a"), sd("b", "z"), sd("k", "m")]
    plan = build_plan(stages)
    assert plan.waves == (("z", "m", "a"), ("y", "b", "k"))
    assert plan.order == ("z", "m", "a", "y", "b", "k")


def test_a_stage_defined_before_its_input_still_comes_after_it() -> None:
    plan = build_plan(chain(4, reverse=True))
    assert plan.order == ("s0", "s1", "s2", "s3")
    assert plan.waves == (("s0",), ("s1",), ("s2",), ("s3",))


def test_an_input_listed_twice_is_one_edge() -> None:
    """Predecessors keep what was declared; successors list each dependent once."""
    plan = build_plan([sd("a"), sd("b", "a", "a")])
    assert plan.predecessors["b"] == ("a", "a")
    assert plan.successors["a"] == ("b",)
    assert plan.waves == (("a",), ("b",))


def test_independent_components_share_waves() -> None:
    stages = [sd("a"), sd("x"), sd("b", "a"), sd("y", "x"), sd("z", "y")]
    plan = build_plan(stages)
    assert plan.waves == (("a", "x"), ("b", "y"), ("z",))


def test_order_is_topological_on_random_dags() -> None:
    rng = random.Random(20240611)
    for _ in range(50):
        n = rng.randint(1, 25)
        stages = [
            sd(f"n{i}", *rng.sample([f"n{j}" for j in range(i)], k=min(i, 3))) for i in range(n)
        ]
        rng.shuffle(stages)
        plan = build_plan(stages)
        position = {sid: k for k, sid in enumerate(plan.order)}
        assert sorted(plan.order) == sorted(s.id for s in stages)
        for s in stages:
            expected = 1 + max((plan.wave_of[d] for d in s.inputs), default=-1)
            assert plan.wave_of[s.id] == expected
            assert all(position[d] < position[s.id] for d in s.inputs)
            assert s.id in plan.waves[plan.wave_of[s.id]]


# -- downstream --------------------------------------------------------------------------------------
def test_downstream_is_transitive_in_plan_order_without_itself() -> None:
    stages = [*diamond(), sd("e", "d"), sd("other")]
    plan = build_plan(stages)
    assert plan.downstream("a") == ("b", "c", "d", "e")
    assert plan.downstream("c") == ("d", "e")
    assert plan.downstream("e") == ()
    assert plan.downstream("other") == ()


def test_downstream_matches_a_brute_force_closure_on_random_dags() -> None:
    rng = random.Random(7)
    for _ in range(30):
        n = rng.randint(2, 20)
        stages = [
            sd(f"n{i}", *rng.sample([f"n{j}" for j in range(i)], k=min(i, 2))) for i in range(n)
        ]
        plan = build_plan(stages)
        for s in stages:
            reached: set[str] = set()
            frontier = {s.id}
            while frontier:
                frontier = {t.id for t in stages if set(t.inputs) & frontier} - reached
                reached |= frontier
            assert plan.downstream(s.id) == tuple(x for x in plan.order if x in reached)


def test_downstream_of_an_unknown_id_raises_key_error() -> None:
    """An id that is not in the plan is a KeyError, not an empty answer."""
    plan = build_plan(diamond())
    with pytest.raises(KeyError):
        plan.downstream("nope")


# -- critical path -----------------------------------------------------------------------------------
def test_critical_path_follows_the_heaviest_chain() -> None:
    plan = build_plan([*diamond(), sd("other")])
    durations = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 1.0, "other": 6.0}
    assert plan.critical_path(durations) == (("a", "b", "d"), 7.0)


def test_critical_path_counts_missing_stages_as_zero_and_prefers_longer_chains() -> None:
    """On a tie of totals the chain with more stages wins (instant stages at its end stay)."""
    plan = build_plan([sd("other"), sd("a"), sd("b", "a")])
    assert plan.critical_path({"a": 1.0, "other": 1.0}) == (("a", "b"), 1.0)
    assert build_plan([]).critical_path({}) == ((), 0.0)


# -- the value ---------------------------------------------------------------------------------------
def test_plan_is_frozen() -> None:
    plan = build_plan(diamond())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        plan.order = ()  # type: ignore[misc]  # the assignment under test


def test_plan_round_trips_through_validation() -> None:
    """The plan is a plain model: dumping and validating it gives an equal plan."""
    plan = build_plan(diamond())
    assert ExecutionPlan.model_validate(plan.model_dump()) == plan


def test_definition_plan_is_built_once_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(stages: Sequence[StageDefinition], *rest: Any) -> ExecutionPlan:
        calls.append(len(stages))
        return build_plan(stages, *rest)

    monkeypatch.setattr(pipeline.definition, "build_plan", counting)
    definition = PipelineDefinition("p", diamond())
    first = definition.plan
    assert definition.plan is first
    assert calls == [4]


def test_definition_plan_validates_first() -> None:
    definition = PipelineDefinition("p", [sd("a", "missing")])
    with pytest.raises(PipelineValidationError, match="unknown stage 'missing'"):
        _ = definition.plan


# -- scale -------------------------------------------------------------------------------------------
BIG = 20_000


def test_a_20k_chain_plans_correctly_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(stages: Sequence[StageDefinition], *rest: Any) -> ExecutionPlan:
        calls.append(len(stages))
        return build_plan(stages, *rest)

    monkeypatch.setattr(pipeline.definition, "build_plan", counting)
    definition = PipelineDefinition("big", chain(BIG, reverse=True))
    plan = definition.plan
    assert definition.plan is plan
    assert calls == [BIG]
    assert len(plan.waves) == BIG
    assert plan.order == tuple(f"s{i}" for i in range(BIG))
    assert plan.wave_of[f"s{BIG - 1}"] == BIG - 1
    assert plan.downstream(f"s{BIG - 3}") == (f"s{BIG - 2}", f"s{BIG - 1}")
    assert len(plan.downstream("s0")) == BIG - 1


def test_a_20k_fan_in_plans_correctly() -> None:
    """One root, 19,998 leaves and one stage reading them all: three waves."""
    leaves = [sd(f"l{i}", "root") for i in range(BIG - 2)]
    sink = sd("sink", *(s.id for s in leaves))
    plan = build_plan([sink, *leaves, sd("root")])
    assert [len(w) for w in plan.waves] == [1, BIG - 2, 1]
    assert plan.waves[1] == tuple(s.id for s in leaves)
    assert len(plan.successors["root"]) == BIG - 2
    assert plan.downstream("l5") == ("sink",)


def _lines_traced(stages: Sequence[StageDefinition]) -> int:
    """How many lines of `pipeline.plan` (comprehensions included) `build_plan` executes."""
    target = pipeline.plan.__file__
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> TraceFn:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_(frame: FrameType, event: str, arg: Any) -> TraceFn | None:
        return local if frame.f_code.co_filename == target else None

    previous = sys.gettrace()
    sys.settrace(global_)
    try:
        build_plan(stages)
    finally:
        sys.settrace(previous)
    return count


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda n: chain(n), id="chain"),
        pytest.param(lambda n: chain(n, reverse=True), id="reversed-chain"),
        pytest.param(lambda n: [sd("r"), *(sd(f"l{i}", "r") for i in range(n - 1))], id="star"),
    ],
)
def test_plan_building_work_grows_linearly(shape: Callable[[int], list[StageDefinition]]) -> None:
    """Doubling the stages about doubles the lines executed (quadratic work would quadruple)."""
    small = _lines_traced(shape(2_000))
    large = _lines_traced(shape(4_000))
    assert 1.8 < large / small < 2.2, (small, large)

"""Validation as rules: each checks the definition (and optionally the executor's facts).

A rule is a function returning `ValidationIssue`s: a `StageRule` looks at one stage, a
`GraphRule` at the whole definition. The definition's own rules are `DEFINITION_RULES`; the
executor adds rules about what it provides (runners, resources) through the same `run_rules`.
Pure: it reads definitions and imports nothing that runs; raising is the caller's choice. The
edge types rule needs to see stage objects (`FunctionStage`, the cache's output types), so it
lives in `pipeline._types` and plugs in through `register_late_rule` when that module loads.
"""

from __future__ import annotations

import difflib
import graphlib
import inspect
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from pipeline._graph import scan
from pipeline.errors import ValidationIssue

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping, Sequence

    from pipeline._graph import Graph
    from pipeline.definition import StageDefinition
    from pipeline.resources import Resource


MAX_SUGGESTED: Final = 3
"""Unknown inputs that get "did you mean" suggestions; later ones only say what is wrong.

Finding close matches scans every stage id (about 12 us per id), so a systematic typo across
a generated pipeline of thousands of stages would otherwise cost seconds and pages of text.
"""

MAX_IDS_FOR_SUGGESTIONS: Final = 5_000
"""Above this many stages no suggestions are computed at all (each would take 60 ms or more)."""

MAX_CYCLE_SHOWN: Final = 12
"""A longer cycle is shown by its first and last stages; `ValidationIssue.cycle` has all."""


@dataclass(slots=True)
class Scope:
    """What the rules of one validation look at: the stages, their ids, the executor's facts."""

    stages: Sequence[StageDefinition]
    known: set[str]
    runners: Collection[str] | None = None
    """The executor's runner names; None when only the definition is validated."""
    resources: Mapping[str, Resource] | None = None
    """The executor's resources; None when only the definition is validated."""
    suggestions_left: int = 0
    acyclic: bool = False
    """Known already (the shared graph scan found waves for every stage)."""


StageRule = Callable[["StageDefinition", Scope], Iterable[ValidationIssue]]
"""A check of one stage; it may read the whole scope."""
GraphRule = Callable[[Scope], Iterable[ValidationIssue]]
"""A check of the definition as a whole."""


def _duplicates(scope: Scope) -> Iterator[ValidationIssue]:
    counts = Counter(s.id for s in scope.stages)
    for sid, n in counts.items():
        if n > 1:
            yield ValidationIssue(
                code="duplicate_id",
                stage_id=sid,
                message=f"Duplicate stage IDs: {sid!r} ({n} stages); stage ids must be unique",
            )


def _unknown_inputs(s: StageDefinition, scope: Scope) -> Iterator[ValidationIssue]:
    for dep in s.inputs:
        if dep in scope.known:
            continue
        hint = "; inputs must name stages of this pipeline"
        if scope.suggestions_left > 0:
            scope.suggestions_left -= 1
            close = difflib.get_close_matches(dep, scope.known, n=3)
            if close:
                hint = f"; did you mean {' or '.join(map(repr, close))}?"
        yield ValidationIssue(
            code="unknown_input",
            stage_id=s.id,
            message=f"Stage {s.id!r} depends on unknown stage {dep!r}{hint}",
        )


def _fan_out_inputs(s: StageDefinition, scope: Scope) -> Iterator[ValidationIssue]:
    if s.pattern == "fan_out" and len(s.inputs) > 1:
        yield ValidationIssue(
            code="fan_out_inputs",
            stage_id=s.id,
            message=(
                f"FAN_OUT stage {s.id!r} has {len(s.inputs)} inputs; a fan-out maps "
                "over one list, so give it exactly one input (or none)"
            ),
        )


def _missing_condition(s: StageDefinition, scope: Scope) -> Iterator[ValidationIssue]:
    if s.pattern == "conditional" and s.condition is None:
        yield ValidationIssue(
            code="missing_condition",
            stage_id=s.id,
            message=(
                f"CONDITIONAL stage {s.id!r} has no condition; pass "
                "condition=lambda ctx: ... or use another pattern"
            ),
        )


def _stage_object(s: StageDefinition, scope: Scope) -> Iterator[ValidationIssue]:
    if not has_async_execute(s.stage):
        execute = getattr(s.stage, "execute", None)
        what = "no execute method" if execute is None else "an execute that is not async"
        yield ValidationIssue(
            code="invalid_stage",
            stage_id=s.id,
            message=(
                f"stage {s.id!r} object {type(s.stage).__name__} has {what}; stages "
                "need `async def execute(self, input, context) -> StageResult`"
            ),
        )


def _cycles(scope: Scope) -> Iterator[ValidationIssue]:
    if scope.acyclic:
        return
    # Only an invalid definition gets here: graphlib finds a cycle's path for the message.
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for s in scope.stages:
        sorter.add(s.id, *(d for d in s.inputs if d in scope.known))
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = tuple(reversed(exc.args[1]))  # graphlib lists it against the edges' direction
        yield ValidationIssue(
            code="cycle",
            stage_id=cycle[0],
            message=(
                f"Circular dependency detected: {_cycle_text(cycle)}; remove one of these inputs"
            ),
            cycle=cycle,
        )


def _entry_points(scope: Scope) -> Iterator[ValidationIssue]:
    if not any(not s.inputs for s in scope.stages):
        yield ValidationIssue(
            code="no_entry_points",
            stage_id=None,
            message="pipeline has no entry point; at least one stage must have no inputs",
        )


DEFINITION_RULES: Final[
    tuple[tuple[GraphRule, ...], tuple[StageRule, ...], tuple[GraphRule, ...]]
] = (
    (_duplicates,),
    (_unknown_inputs, _fan_out_inputs, _missing_condition, _stage_object),
    (_cycles, _entry_points),
)
"""The definition's own rules: whole-graph rules first, then per stage, then whole-graph again
(the order of the messages users see)."""


_late_rules: list[GraphRule] = []
"""Rules that run after the structural ones on every definition, even a well-formed one."""


def register_late_rule(rule: GraphRule) -> None:
    """Run `rule` after the structural rules in every `collect_issues` (idempotent).

    For rules that need what a pure module may not import: `pipeline._types` registers the
    edge type check when it loads, which `import pipeline` does.
    """
    if rule not in _late_rules:
        _late_rules.append(rule)


def late_issues(scope: Scope) -> list[ValidationIssue]:
    """The issues of the registered late rules (none registered: no cost)."""
    return [issue for rule in _late_rules for issue in rule(scope)]


def run_rules(
    scope: Scope,
    before: Iterable[GraphRule],
    per_stage: Sequence[StageRule],
    after: Iterable[GraphRule],
) -> list[ValidationIssue]:
    """The issues of every rule, in rule order (per-stage rules stage by stage)."""
    issues: list[ValidationIssue] = []
    for graph_rule in before:
        issues.extend(graph_rule(scope))
    if per_stage:
        for s in scope.stages:
            for stage_rule in per_stage:
                issues.extend(stage_rule(s, scope))
    for graph_rule in after:
        issues.extend(graph_rule(scope))
    return issues


def collect_issues(
    stages: Sequence[StageDefinition], graph: Graph | None = None
) -> tuple[ValidationIssue, ...]:
    """Every structural problem of `stages`, in a stable order.

    A well-formed definition costs one cheap pass (plus `graph`, the scan the plan reuses);
    the rules, which build messages, run only when that pass finds something wrong. The late
    rules (edge types) run either way, after the others, and keep their own cheap path.
    """
    if not stages:
        return (
            ValidationIssue(
                code="empty_pipeline",
                stage_id=None,
                message="pipeline has no stages; add at least one StageDefinition",
            ),
        )
    known = {s.id for s in stages}
    if graph is None:
        graph = scan(stages)
    if (
        len(known) == len(stages)
        and graph.wave_of is not None
        and all(_looks_fine(s, known) for s in stages)
    ):
        return tuple(late_issues(Scope(stages, known, acyclic=True))) if _late_rules else ()
    budget = MAX_SUGGESTED if len(known) <= MAX_IDS_FOR_SUGGESTIONS else 0
    # With duplicate ids the scan's answer is about a different graph: let graphlib decide.
    acyclic = graph.wave_of is not None and len(known) == len(stages)
    scope = Scope(stages, known, suggestions_left=budget, acyclic=acyclic)
    return tuple(run_rules(scope, *DEFINITION_RULES) + late_issues(scope))


def _looks_fine(s: StageDefinition, known: set[str]) -> bool:
    """What every per-stage rule accepts, checked without building a message."""
    inputs = s.inputs
    n = len(inputs)
    return (
        (n == 0 or (inputs[0] in known if n == 1 else all(d in known for d in inputs)))
        and not (n > 1 and s.pattern == "fan_out")
        and not (s.condition is None and s.pattern == "conditional")
        and has_async_execute(s.stage)
    )


ExecuteKind = Literal["async", "producer"]
"""What a stage's `execute` is: an `async def`, or an async generator (a streaming producer)."""

_execute_kinds: dict[type[object], ExecuteKind | None] = {}
"""Per class (validation, the type checks and the streaming graph ask once per stage of every
new definition: `inspect` on a bound method costs ~1 us, a dict lookup ~0.05)."""


def execute_kind(stage: object) -> ExecuteKind | None:
    """Whether `stage.execute` is an `async def` or an async generator, else None.

    Answered once per class, unless an instance sets its own `execute` (asked each time).
    """
    own = getattr(stage, "__dict__", None)
    per_class = own is None or "execute" not in own
    if per_class:
        try:
            return _execute_kinds[type(stage)]
        except KeyError:
            pass
    execute = getattr(stage, "execute", None)
    kind: ExecuteKind | None = None
    if callable(execute):
        if inspect.iscoroutinefunction(execute):
            kind = "async"
        elif inspect.isasyncgenfunction(execute):
            kind = "producer"
    if per_class:
        _execute_kinds[type(stage)] = kind
    return kind


def has_async_execute(stage: object) -> bool:
    """`stage.execute` is an `async def` or an async generator (a producer)."""
    return execute_kind(stage) is not None


def _cycle_text(cycle: tuple[str, ...]) -> str:
    if len(cycle) <= MAX_CYCLE_SHOWN:
        return " -> ".join(cycle)
    head, tail = cycle[: MAX_CYCLE_SHOWN // 2], cycle[-(MAX_CYCLE_SHOWN // 2) :]
    hidden = len(cycle) - len(head) - len(tail)
    return f"{' -> '.join(head)} -> ... ({hidden} more) ... -> {' -> '.join(tail)}"

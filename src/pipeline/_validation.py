"""Structural checks of a pipeline definition, returned as `ValidationIssue`s.

Pure: it reads stage definitions and imports nothing that runs. Raising is the caller's choice.
"""

from __future__ import annotations

import difflib
import graphlib
import inspect
from collections import Counter
from typing import TYPE_CHECKING, Final

from pipeline.errors import ValidationIssue

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.definition import StageDefinition


MAX_SUGGESTED: Final = 3
"""Unknown inputs that get "did you mean" suggestions; later ones only say what is wrong.

Finding close matches scans every stage id (about 12 us per id), so a systematic typo across
a generated pipeline of thousands of stages would otherwise cost seconds and pages of text.
"""

MAX_IDS_FOR_SUGGESTIONS: Final = 5_000
"""Above this many stages no suggestions are computed at all (each would take 60 ms or more)."""

MAX_CYCLE_SHOWN: Final = 12
"""A longer cycle is shown by its first and last stages; `ValidationIssue.cycle` has all."""


def collect_issues(stages: Sequence[StageDefinition]) -> tuple[ValidationIssue, ...]:
    """Every structural problem of `stages`, in a stable order."""
    from pipeline.definition import ExecutionPattern  # avoids an import cycle

    issues: list[ValidationIssue] = []
    if not stages:
        issues.append(
            ValidationIssue(
                code="empty_pipeline",
                stage_id=None,
                message="pipeline has no stages; add at least one StageDefinition",
            )
        )
        return tuple(issues)

    counts = Counter(s.id for s in stages)
    issues.extend(
        ValidationIssue(
            code="duplicate_id",
            stage_id=sid,
            message=f"Duplicate stage IDs: {sid!r} ({n} stages); stage ids must be unique",
        )
        for sid, n in counts.items()
        if n > 1
    )
    known = set(counts)
    suggestions_left = MAX_SUGGESTED if len(known) <= MAX_IDS_FOR_SUGGESTIONS else 0
    for s in stages:
        for dep in s.inputs:
            if dep in known:
                continue
            hint = "; inputs must name stages of this pipeline"
            if suggestions_left > 0:
                suggestions_left -= 1
                close = difflib.get_close_matches(dep, known, n=3)
                if close:
                    hint = f"; did you mean {' or '.join(map(repr, close))}?"
            issues.append(
                ValidationIssue(
                    code="unknown_input",
                    stage_id=s.id,
                    message=f"Stage {s.id!r} depends on unknown stage {dep!r}{hint}",
                )
            )
        if s.pattern is ExecutionPattern.FAN_OUT and len(s.inputs) > 1:
            issues.append(
                ValidationIssue(
                    code="fan_out_inputs",
                    stage_id=s.id,
                    message=(
                        f"FAN_OUT stage {s.id!r} has {len(s.inputs)} inputs; a fan-out maps "
                        "over one list, so give it exactly one input (or none)"
                    ),
                )
            )
        if s.pattern is ExecutionPattern.CONDITIONAL and s.condition is None:
            issues.append(
                ValidationIssue(
                    code="missing_condition",
                    stage_id=s.id,
                    message=(
                        f"CONDITIONAL stage {s.id!r} has no condition; pass "
                        "condition=lambda ctx: ... or use another pattern"
                    ),
                )
            )
        execute = getattr(s.stage, "execute", None)
        if not callable(execute) or not inspect.iscoroutinefunction(execute):
            what = "no execute method" if execute is None else "an execute that is not async"
            issues.append(
                ValidationIssue(
                    code="invalid_stage",
                    stage_id=s.id,
                    message=(
                        f"stage {s.id!r} object {type(s.stage).__name__} has {what}; stages "
                        "need `async def execute(self, input, context) -> StageResult`"
                    ),
                )
            )

    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for s in stages:
        sorter.add(s.id, *(d for d in s.inputs if d in known))
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = tuple(reversed(exc.args[1]))  # graphlib lists it against the edges' direction
        issues.append(
            ValidationIssue(
                code="cycle",
                stage_id=cycle[0],
                message=(
                    f"Circular dependency detected: {_cycle_text(cycle)}; "
                    "remove one of these inputs"
                ),
                cycle=cycle,
            )
        )
    if not any(not s.inputs for s in stages):
        issues.append(
            ValidationIssue(
                code="no_entry_points",
                stage_id=None,
                message="pipeline has no entry point; at least one stage must have no inputs",
            )
        )
    return tuple(issues)


def _cycle_text(cycle: tuple[str, ...]) -> str:
    if len(cycle) <= MAX_CYCLE_SHOWN:
        return " -> ".join(cycle)
    head, tail = cycle[: MAX_CYCLE_SHOWN // 2], cycle[-(MAX_CYCLE_SHOWN // 2) :]
    hidden = len(cycle) - len(head) - len(tail)
    return f"{' -> '.join(head)} -> ... ({hidden} more) ... -> {' -> '.join(tail)}"

"""The executor's validation rules about runners: every runner a stage names exists and fits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._validation import Scope, run_rules
from pipeline.errors import ValidationIssue
from pipeline.runners._base import INLINE, sync_body

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Sequence

    from pipeline.definition import StageDefinition


def _runner(s: StageDefinition, scope: Scope) -> Iterator[ValidationIssue]:
    name = s.runner
    if name is None:
        return
    runners = scope.runners
    assert runners is not None  # only an executor's validation runs this rule
    if name not in runners:
        known = ", ".join(repr(n) for n in sorted(runners))
        yield ValidationIssue(
            code="unknown_runner",
            stage_id=s.id,
            message=(
                f"Stage {s.id!r} runs on unknown runner {name!r}; the executor has {known} "
                "(add it with PipelineExecutor(runners={...}))"
            ),
        )
    elif name == INLINE and sync_body(s.stage) is not None:
        yield ValidationIssue(
            code="invalid_stage",
            stage_id=s.id,
            message=(
                f"Stage {s.id!r} is a sync function stage on the 'inline' runner, which would "
                "block the event loop; use runner='threads' (the default for sync functions)"
            ),
        )


def runner_issues(
    stages: Sequence[StageDefinition], runners: Collection[str]
) -> tuple[ValidationIssue, ...]:
    """Problems of a (structurally valid) definition with the runners an executor has."""
    if all(s.runner is None for s in stages):  # the common case costs one pass and no scope
        return ()
    scope = Scope(stages, {s.id for s in stages}, runners=runners)
    return tuple(run_rules(scope, (), (_runner,), ()))

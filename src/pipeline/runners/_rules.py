"""The executor's validation rules about runners: every runner a stage names exists and fits.

A stage routed to a runner that pickles (`ProcessRunner`, `DaskRunner`) must pickle, and so
must its condition: checked here, before the run, with the runner's own pickler (which keeps
the stage's bytes for the run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline._validation import Scope, run_rules
from pipeline.errors import ValidationIssue
from pipeline.runners._base import INLINE, sync_body
from pipeline.runners._remote import RemoteRunner

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from pipeline._validation import StageRule
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


def _pickles(runners: Mapping[str, Any]) -> StageRule:
    def rule(s: StageDefinition, scope: Scope) -> Iterator[ValidationIssue]:
        name = s.runner
        runner = runners.get(name) if name is not None else None
        if not isinstance(runner, RemoteRunner):
            return
        parts: list[tuple[str, object]] = [("stage object", s.stage)]
        if s.condition is not None:
            parts.append(("condition", s.condition))
        for what, value in parts:
            reason = runner.unpicklable_reason(value, what)
            if reason is not None:
                yield ValidationIssue(
                    code="unpicklable",
                    stage_id=s.id,
                    message=(
                        f"Stage {s.id!r} runs on {name!r}, which sends it to another process, "
                        f"but its {what} cannot be pickled ({reason}); keep locks, clients and "
                        "open files out of it (create them inside the stage) or run it on "
                        "'threads'"
                    ),
                )

    return rule


def runner_issues(
    stages: Sequence[StageDefinition], runners: Mapping[str, Any]
) -> tuple[ValidationIssue, ...]:
    """Problems of a (structurally valid) definition with the runners an executor has."""
    if all(s.runner is None for s in stages):  # the common case costs one pass and no scope
        return ()
    scope = Scope(stages, {s.id for s in stages}, runners=runners)
    return tuple(run_rules(scope, (), (_runner, _pickles(runners)), ()))

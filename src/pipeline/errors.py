"""The exception tree of `pipeline`; every error the library raises lives here.

    PipelineError
    ├── DefinitionError          bad argument to RetryConfig / StageDefinition / PipelineExecutor
    ├── PipelineValidationError  PipelineDefinition.validate(): all problems as ValidationIssue items
    ├── StageError               one stage attempt went wrong (kept as the run record's exception)
    │   ├── StageTimeoutError    an attempt exceeded StageDefinition.timeout_ms
    │   └── StageOutputError     execute() returned something that is not a StageResult
    └── PipelineRunError         PipelineResult.raise_for_failure() on a failed run

Stage failures never escape `PipelineExecutor.execute`; they are captured in the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pipeline._model import FrozenModel
from pipeline._text import format_ms

if TYPE_CHECKING:
    from pipeline.result import PipelineResult

IssueCode = Literal[
    "duplicate_id",
    "unknown_input",
    "cycle",
    "no_entry_points",
    "fan_out_inputs",
    "missing_condition",
    "invalid_stage",
    "empty_pipeline",
]
"""The closed vocabulary of validation problems."""


class PipelineError(Exception):
    """Root of every exception raised by `pipeline`."""


class DefinitionError(PipelineError, ValueError):
    """A definition value was constructed with an invalid argument.

    Raised by `RetryConfig(...)`, `StageDefinition(...)` and `PipelineExecutor(...)`.
    """

    def __init__(self, owner: str, field: str, problem: str, fix: str) -> None:
        self.owner = owner
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{owner}: {field} {problem}; {fix}")


class ValidationIssue(FrozenModel):
    """One problem found by `PipelineDefinition.validate_pipeline()`."""

    code: IssueCode
    """Machine-readable kind of problem."""
    stage_id: str | None
    """The stage the problem belongs to, or None for pipeline-wide problems."""
    message: str
    """Human-readable description naming the stage and the fix."""
    cycle: tuple[str, ...] = ()
    """For `code == "cycle"`: the stage ids along the cycle, first id repeated at the end."""


class PipelineValidationError(PipelineError):
    """A pipeline definition is invalid. Raised by `PipelineDefinition.validate()`."""

    def __init__(self, pipeline: str, issues: tuple[ValidationIssue, ...]) -> None:
        self.pipeline = pipeline
        self.issues = issues
        lines = "\n".join(f"  - {issue.message}" for issue in issues)
        super().__init__(f"pipeline {pipeline!r} is invalid ({len(issues)} problem(s)):\n{lines}")


class StageError(PipelineError):
    """One attempt of a stage failed; kept on the run record, never raised by `execute`."""

    def __init__(self, stage_id: str, attempt: int, message: str) -> None:
        self.stage_id = stage_id
        self.attempt = attempt
        super().__init__(message)


class StageTimeoutError(StageError):
    """An attempt of a stage exceeded its `timeout_ms`; its message contains "Timeout"."""

    def __init__(
        self, stage_id: str, attempt: int, timeout_ms: float, item: int | None = None
    ) -> None:
        self.timeout_ms = timeout_ms
        self.item = item
        where = f"stage {stage_id!r}" if item is None else f"stage {stage_id!r} item {item}"
        super().__init__(
            stage_id, attempt, f"Timeout: {where} exceeded timeout_ms={format_ms(timeout_ms)}"
        )


class StageOutputError(StageError):
    """A stage's `execute` returned a value that is not a `StageResult`."""

    def __init__(self, stage_id: str, attempt: int, returned: object) -> None:
        self.returned_type = type(returned).__name__
        super().__init__(
            stage_id,
            attempt,
            f"stage {stage_id!r} returned {self.returned_type}, expected StageResult; "
            "return StageResult.success(value) or StageResult.failure(error)",
        )


class PipelineRunError(PipelineError):
    """A pipeline run failed. Raised by `PipelineResult.raise_for_failure()`."""

    def __init__(self, result: PipelineResult) -> None:
        self.result = result
        parts = [
            f"{sid}: {result.stage_results[sid].error}"
            for sid in result.failed_stages
            if sid in result.stage_results  # "validation" is not a stage
        ]
        if result.error:
            parts.insert(0, result.error)
        detail = "; ".join(parts) or "run did not succeed"
        super().__init__(f"pipeline {result.pipeline_name!r} failed: {detail}")

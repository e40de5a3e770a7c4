"""The exception tree of `pipeline`; every error the library raises lives here.

    PipelineError
    ├── DefinitionError          bad argument to a definition, executor, resource or step
    ├── PipelineValidationError  PipelineDefinition.validate(): all problems as ValidationIssue items
    ├── StageError               one stage attempt went wrong (kept as the run record's exception)
    │   ├── StageTimeoutError    an attempt exceeded StageDefinition.timeout_ms
    │   ├── StageOutputError     execute() returned something that is not a StageResult
    │   └── CircuitOpenError     an attempt's resource has an open circuit breaker
    ├── PipelineRunError         PipelineResult.raise_for_failure() on a failed run
    ├── RunNotFinishedError      StreamingRun.result read before its run ended
    ├── CacheError               a cache store failed (SQLiteCache.get/put/...)
    ├── UnfingerprintableError   pipeline.cache.fingerprint(): a value has no stable fingerprint
    ├── OverBudgetError          pipeline.cache.fingerprint(budget=...): more values than allowed
    ├── UncacheableOutputError   JsonSerializer.dumps(): an output would not restore equal
    ├── ResourceError            context.acquire()/step(uses=) outside a run or of an unknown resource
    ├── UnpicklableError         a stage's input, output or context cannot be pickled for a process runner
    ├── RemoteError              stands in for a remote exception that could not be pickled back
    ├── RunnerError              a runner was used while closed, or could not start
    ├── LoadError                a `module:attr` reference cannot be loaded
    ├── ConfigError              pipeline.config.load(): a pipeline file is wrong (source:line:col)
    └── UsageError               `python -m pipeline`: a bad argument (exit code 2)

Stage failures never escape `PipelineExecutor.execute`; they are captured in the result, and
the cache errors become warnings or misses on the run record. The classes are re-exported
where users met them first (`pipeline.cache`, `pipeline.cli`).
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
    "unknown_runner",
    "unknown_resource",
    "resource_weight",
    "type_mismatch",
    "unpicklable",
]
"""The closed vocabulary of validation problems."""


class PipelineError(Exception):
    """Root of every exception raised by `pipeline`."""


class DefinitionError(PipelineError, ValueError):
    """A definition value was constructed with an invalid argument.

    Raised by `RetryConfig(...)`, `StageDefinition(...)`, `PipelineDefinition(...)`,
    `PipelineExecutor(...)`, `Resource(...)`, `Resource.acquire(weight)`, `CircuitBreaker(...)`
    and `context.step(...)`.
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


class CircuitOpenError(StageError):
    """An attempt could not acquire a resource: its `CircuitBreaker` is open.

    Raised by `Resource.acquire` (so by every attempt of a stage that `uses` the resource, and
    by `context.acquire`) until the breaker's `reset_after_s` has passed; it fails the attempt
    like any stage error (retry filters see it as this type).
    """

    def __init__(
        self, resource: str, stage_id: str = "", attempt: int = 0, *, retry_in_s: float
    ) -> None:
        self.resource = resource
        self.retry_in_s = retry_in_s
        # Read as a Retry-After by the retry loop: a retried attempt waits for the trial.
        self.retry_after_s = retry_in_s
        where = f" (stage {stage_id!r})" if stage_id else ""
        super().__init__(
            stage_id,
            attempt,
            f"circuit of resource {resource!r} is open{where}; it lets a trial attempt through "
            f"in {retry_in_s:.3g} s",
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


class RunNotFinishedError(PipelineError):
    """A streamed run has no result yet. Raised by `StreamingRun.result` (`executor.stream`).

    The result exists once the run has ended: after the `async for event in run` loop is
    exhausted. A block left before that cancelled the run, which then has no result.
    """

    def __init__(self, pipeline: str, *, cancelled: bool) -> None:
        self.pipeline = pipeline
        self.cancelled = cancelled
        if cancelled:
            why = "the `async with executor.stream(...)` block was left before it ended"
            fix = "read every event (`async for event in run`) before leaving the block"
        else:
            why = "it is still running"
            fix = "read `run.result` after `async for event in run` has ended"
        super().__init__(f"run of pipeline {pipeline!r} has no result: {why}; {fix}")


class CacheError(PipelineError):
    """A cache store failed (unreadable file, locked past its busy timeout, closed store).

    Raised by store methods such as `SQLiteCache.get`; during a run the executor catches it,
    recomputes the stage and counts it in `PipelineResult.cache_stats.errors`.
    """

    def __init__(self, store: str, key: str | None, message: str) -> None:
        self.store = store
        self.key = key
        where = store if key is None else f"{store} key {key[:12]}"
        super().__init__(f"{where}: {message}")


class UnfingerprintableError(PipelineError, TypeError):
    """A value has no stable fingerprint, so a stage fed with it is not cached.

    Raised by `pipeline.cache.fingerprint()`, `canonical_json()` and `code_fingerprint()`; the
    executor turns it into a cache warning on the stage's run record and runs the stage uncached.
    """

    def __init__(self, reason: str, *, path: str = "input") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"cannot fingerprint {path}: {reason}")


class OverBudgetError(PipelineError):
    """A fingerprint with a value budget met more values than allowed.

    Raised by `pipeline.cache.fingerprint(value, budget=n)` and `canonical_json(value,
    budget=n)`; the executor then fingerprints the value in a worker thread instead.
    """


class UncacheableOutputError(PipelineError, TypeError):
    """A stage's output cannot be stored faithfully, so it is not cached.

    Raised by `JsonSerializer.dumps`; the executor reports it as a cache warning.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"output not cached: {reason}")


class ResourceError(PipelineError, LookupError):
    """A resource could not be used: unknown to the executor, or asked for outside a run.

    Raised into a stage's code by `PipelineContext.acquire` and `PipelineContext.step(uses=...)`
    (a stage's own `uses=` is checked by validation before the run instead).
    """

    def __init__(self, resource: str, problem: str, fix: str) -> None:
        self.resource = resource
        super().__init__(f"resource {resource!r} {problem}; {fix}")


class LoadError(PipelineError):
    """A `module:attr` reference cannot be loaded (malformed, import failed, no such attribute...).

    Raised by the `module:attr` loader (`pipeline._loading.load_attribute` / `load_definition`);
    `python -m pipeline` reports it as a `UsageError` with the same text. The message is one
    line, `problem (reference): detail; fix`; the user's own exception, if any, is `__cause__`.
    """

    def __init__(self, reference: str, problem: str, detail: str, fix: str) -> None:
        self.reference = reference
        self.problem = problem
        self.detail = detail
        self.fix = fix
        shown = reference if reference.isprintable() else repr(reference)
        super().__init__(f"{problem} ({shown}): {detail}; {fix}")


class ConfigError(PipelineError):
    """A declarative pipeline file (YAML, TOML or JSON) is wrong; nothing of it was loaded.

    Raised by `pipeline.config.load`. The message is one line,
    `source:line:column: problem; fix` (line and column are 1-based and left out where the
    parser cannot tell them), and the parts are attributes for tools that show them.

    Attributes:
        source: The file's path, or `"<text>"` for a document passed as a string.
        line: 1-based line of the offending key or value, or None when unknown.
        column: 1-based column, or None when unknown.
        problem: What is wrong.
        fix: What to change.
    """

    def __init__(
        self,
        source: str,
        problem: str,
        fix: str,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.source = source
        self.line = line
        self.column = column
        self.problem = problem
        self.fix = fix
        where = source
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {problem}; {fix}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_config_error, (self.source, self.problem, self.fix, self.line, self.column))


def _config_error(
    source: str, problem: str, fix: str, line: int | None, column: int | None
) -> ConfigError:
    return ConfigError(source, problem, fix, line=line, column=column)


class UsageError(PipelineError):
    """A bad command-line argument: `python -m pipeline` prints it on one line and exits 2.

    Raised by `pipeline.cli`'s argument parsing and by `pipeline.cli.load_definition`.
    """


class UnpicklableError(PipelineError, TypeError):
    """A value sent to or returned from another process cannot be pickled.

    Raised (and captured as the stage's failure) by the runners that pickle,
    `pipeline.runners.ProcessRunner` and `pipeline.runners.dask.DaskRunner`, for a stage's
    input, output or context snapshot; a stage object that cannot be pickled is reported by
    validation (issue code `unpicklable`) before the run instead.
    """

    def __init__(self, stage_id: str, what: str, reason: str) -> None:
        self.stage_id = stage_id
        self.what = what
        self.reason = reason
        super().__init__(
            f"stage {stage_id!r}: {what} cannot be pickled for another process: {reason}; "
            "send plain data (or run the stage on 'threads')"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.stage_id, self.what, self.reason))


class RemoteError(PipelineError):
    """Stands in for an exception raised in another process that could not be pickled back.

    Raised by the runners that pickle (`ProcessRunner`, `DaskRunner`) into the executor, which
    records it as the stage's failure. The runner raises an instance of a subclass named after
    the original type, so the failure still reads `"OriginalType: message"`.

    Attributes:
        type_name: The class name of the original exception.
        text: Its message (`str(exc)`).
        remote_traceback: The traceback text formatted in the worker.
    """

    def __init__(self, type_name: str, text: str, remote_traceback: str) -> None:
        self.type_name = type_name
        self.text = text
        self.remote_traceback = remote_traceback
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (RemoteError, (self.type_name, self.text, self.remote_traceback))


class RunnerError(PipelineError):
    """A runner cannot take work: it is not open, or starting it failed.

    Raised by `ProcessRunner.run` / `DaskRunner.run` when called outside `async with runner:`
    (the executor enters the runners its stages use for each run, so this only happens when a
    runner is called by hand) and by `DaskRunner` when it cannot reach its scheduler.
    """

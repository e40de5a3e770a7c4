"""Results: what one stage returns (`StageResult`) and what a whole run returns (`PipelineResult`).

The executor fills these in; how a stage is invoked lives in `pipeline._invoke`, and the text
table and critical path of a finished run in `pipeline._summary` (which imports nothing from
here at runtime).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Protocol, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import _summary
from pipeline._model import FrozenModel, fast_model
from pipeline.errors import PipelineRunError
from pipeline.plan import ExecutionPlan

if TYPE_CHECKING:
    from collections.abc import Mapping

T = TypeVar("T")

UNKNOWN_STAGE = "unknown"
"""The `stage_name` a result has until the executor fills in the stage id."""


class StageStatus(enum.StrEnum):
    """How a stage ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


_SUCCESS_STATUSES = frozenset({StageStatus.SUCCEEDED, StageStatus.SKIPPED})
_SUCCEEDED: Final = StageStatus.SUCCEEDED
"""Read on every stage's return path: a module global costs 0.03 us, `StageStatus.SUCCEEDED`
(an enum member through its class) 0.13."""


class _SuccessConstructor(Protocol):
    def __call__(
        self,
        output: T,
        *,
        stage_name: str = ...,
        metadata: Mapping[str, Any] | None = ...,
    ) -> StageResult[T]: ...


class _SuccessField:
    """`StageResult.success(value)` on the class, the `success` bool on an instance.

    A non-data descriptor: pydantic keeps field values in the instance `__dict__`, which wins
    over a non-data descriptor, so `result.success` is the plain bool at no cost.
    """

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _SuccessConstructor: ...
    @overload
    def __get__(self, obj: object, owner: type[Any]) -> bool: ...
    def __get__(self, obj: object, owner: type[Any]) -> Any:
        if obj is not None:  # pragma: no cover - the instance __dict__ shadows this
            return obj.__dict__["success"]
        made = _constructors.get(owner)
        if made is not None:  # one constructor per class (making it cost ~0.25 us a stage)
            return made
        if "__pydantic_fields__" not in owner.__dict__ and "model_fields" not in owner.__dict__:
            # pydantic is building a parametrised subclass (StageResult[int]) and asks for the
            # field's default: there is none, so the constructor must not become one. (The
            # fields land in `__pydantic_fields__` from pydantic 2.10, in `model_fields` before.)
            raise AttributeError("success")

        def success(
            output: Any,
            *,
            stage_name: str = UNKNOWN_STAGE,
            metadata: Mapping[str, Any] | None = None,
        ) -> Any:
            if owner is StageResult and type(stage_name) is str:
                # Unparametrised (T is Any): nothing to validate, so skip pydantic's machinery;
                # this is every stage's return path. StageResult[int].success(...) validates.
                return fast_model(
                    owner,
                    {
                        "success": True,
                        "stage_name": stage_name,
                        "output": output,
                        "error": None,
                        "metadata": {} if metadata is None else dict(metadata),
                        "status": _SUCCEEDED,
                    },
                )
            return owner(
                success=True,
                stage_name=stage_name,
                output=output,
                metadata=dict(metadata or {}),
                status=StageStatus.SUCCEEDED,
            )

        _constructors[owner] = success
        return success


_constructors: dict[type[Any], Any] = {}
"""`StageResult.success` per class (the class and each parametrised `StageResult[X]`)."""


class StageResult(BaseModel, Generic[T]):
    """The frozen outcome of one stage execution.

    Build one with `StageResult.success(value)`, `StageResult.failure(error)`,
    `StageResult.skipped(reason=...)`, `StageResult.cancelled(reason=...)` or the functions
    `success_result` etc. On an instance, `result.success` is a bool. `status` follows
    `success` unless given; a skipped result has `success=True`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    if TYPE_CHECKING:
        success: ClassVar[_SuccessField]

        def __init__(
            self,
            *,
            success: bool,
            stage_name: str = ...,
            output: T | None = None,
            error: str | None = None,
            metadata: Mapping[str, Any] = ...,
            status: StageStatus | None = None,
        ) -> None: ...
    else:
        success: bool = Field(description="True for succeeded and skipped results.")

    stage_name: str = UNKNOWN_STAGE
    """The stage id; the executor fills it in where a stage left `"unknown"`."""
    output: T | None = None
    """The stage's output (None unless succeeded)."""
    error: str | None = None
    """Why the stage failed or was cancelled."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Free-form facts the stage reports (skip reason, counts, ...)."""
    status: StageStatus = StageStatus.SUCCEEDED
    """How the stage ended; derived from `success` when not given."""

    @model_validator(mode="before")
    @classmethod
    def _derive_status(cls, data: Any) -> Any:
        if isinstance(data, dict):
            status = data.get("status")
            ok = data.get("success")
            if status is None:
                data = {**data, "status": StageStatus.SUCCEEDED if ok else StageStatus.FAILED}
            elif isinstance(ok, bool) and (StageStatus(status) in _SUCCESS_STATUSES) != ok:
                msg = f"status {StageStatus(status).value!r} contradicts success={ok}"
                raise ValueError(msg)
        return data

    @classmethod
    def failure(
        cls,
        error: str,
        *,
        stage_name: str = UNKNOWN_STAGE,
        metadata: Mapping[str, Any] | None = None,
    ) -> StageResult[Any]:
        """A failed result carrying `error`."""
        return cls(
            success=False,
            stage_name=stage_name,
            error=error,
            metadata=dict(metadata or {}),
            status=StageStatus.FAILED,
        )

    @classmethod
    def skipped(
        cls,
        reason: str = "skipped",
        *,
        stage_name: str = UNKNOWN_STAGE,
        metadata: Mapping[str, Any] | None = None,
    ) -> StageResult[Any]:
        """A skipped result (`success=True`, output None, metadata `skipped`/`skip_reason`)."""
        return cls(
            success=True,
            stage_name=stage_name,
            metadata={**(metadata or {}), "skipped": True, "skip_reason": reason},
            status=StageStatus.SKIPPED,
        )

    @classmethod
    def cancelled(
        cls,
        reason: str = "cancelled",
        *,
        stage_name: str = UNKNOWN_STAGE,
        metadata: Mapping[str, Any] | None = None,
    ) -> StageResult[Any]:
        """A cancelled result; its error reads `"[CANCELLED] reason"`."""
        return cls(
            success=False,
            stage_name=stage_name,
            error=f"[CANCELLED] {reason}",
            metadata={**(metadata or {}), "cancel_reason": reason},
            status=StageStatus.CANCELLED,
        )


StageResult.success = _SuccessField()  # class-level constructor, see _SuccessField


def success_result(
    output: T, stage_name: str = UNKNOWN_STAGE, metadata: Mapping[str, Any] | None = None
) -> StageResult[T]:
    """Same as `StageResult.success(output, ...)`."""
    return StageResult.success(output, stage_name=stage_name, metadata=metadata)


def failure_result(
    error: str, stage_name: str = UNKNOWN_STAGE, metadata: Mapping[str, Any] | None = None
) -> StageResult[Any]:
    """Same as `StageResult.failure(error, ...)`."""
    return StageResult.failure(error, stage_name=stage_name, metadata=metadata)


def skipped_result(
    reason: str = "skipped",
    stage_name: str = UNKNOWN_STAGE,
    metadata: Mapping[str, Any] | None = None,
) -> StageResult[Any]:
    """Same as `StageResult.skipped(reason, ...)`."""
    return StageResult.skipped(reason, stage_name=stage_name, metadata=metadata)


def cancelled_result(
    reason: str = "cancelled",
    stage_name: str = UNKNOWN_STAGE,
    metadata: Mapping[str, Any] | None = None,
) -> StageResult[Any]:
    """Same as `StageResult.cancelled(reason, ...)`."""
    return StageResult.cancelled(reason, stage_name=stage_name, metadata=metadata)


class AttemptRun(FrozenModel):
    """The record of one attempt of a stage (not kept per fan-out item)."""

    attempt: int
    """1 for the first attempt."""
    backoff_ms: float = 0.0
    """The retry wait that preceded this attempt (0 for the first)."""
    started_ms: float
    """When the attempt started, in ms since the run started."""
    duration_ms: float
    """How long the attempt ran."""
    error: str | None = None
    """Why the attempt failed, or None when it succeeded."""
    resource_wait_ms: float = 0.0
    """Time spent waiting for the stage's resources (`uses=`) before the attempt could start;
    not part of `duration_ms` nor of `timeout_ms`."""
    remote_stopped: bool | None = None
    """For an attempt run in another process (`ProcessRunner`, `DaskRunner`): True once its
    work is known to have stopped (it returned, a timeout or cancellation stopped it before
    it started, or `ProcessRunner` killed the worker running it), False when it was given up
    on while it may still be running. None
    when the attempt ran locally (inline, threads)."""
    remote_traceback: str | None = None
    """For a failure raised in another process: the traceback text formatted there."""


class StepRun(FrozenModel):
    """The record of one durable step (`context.step(...)`) made inside a stage."""

    name: str
    """The step's name, as given to `context.step`."""
    item: int | None = None
    """The fan-out item that made it, or None."""
    status: StageStatus
    """`succeeded` or `failed` (after its retries)."""
    cached: bool = False
    """True when its result was replayed from the cache instead of paid for again."""
    attempts: int = 0
    """Calls made (0 when replayed)."""
    duration_ms: float = 0.0
    """From the step's start to its end, waits included."""
    error: str | None = None
    """The last failure, or None."""


class StageRun(FrozenModel):
    """The run record of one stage: what happened to it, when, and how often it was tried."""

    stage_id: str
    """The stage's id."""
    status: StageStatus
    """How the stage ended."""
    attempts: int = 0
    """Attempts made (for a fan-out stage: the most any one item needed); 0 if never started."""
    started_ms: float | None = None
    """When the stage started, in ms since the run started (None if it never started)."""
    finished_ms: float | None = None
    """When the stage finished, in ms since the run started."""
    duration_ms: float = 0.0
    """`finished_ms - started_ms`, or 0 for a stage that never started."""
    queue_wait_ms: float | None = None
    """Time between the stage becoming ready (its inputs done; run start for entry points) and
    starting: the wave barrier under `scheduling="waves"`, plus event-loop latency."""
    attempt_runs: tuple[AttemptRun, ...] = ()
    """Per-attempt timings and errors, with the backoff wait before each (empty for fan-out
    stages, whose attempts are per item, and for stages that never started)."""
    items: int | None = None
    """For a fan-out stage: how many items its input had."""
    cached: bool = False
    """True when the output came from the cache instead of running the stage (for a fan-out
    stage: every item did)."""
    cached_items: int | None = None
    """For a fan-out stage with the cache on: how many items came from the cache."""
    cache_warnings: tuple[str, ...] = ()
    """Why (part of) this stage was not cached: an input without a fingerprint, an output that
    does not round-trip."""
    cache_errors: tuple[str, ...] = ()
    """Cache store failures met by this stage (the stage recomputed; the run went on)."""
    error: str | None = None
    """The failure or cancellation reason."""
    exception_type: str | None = None
    """Class name of the exception behind the failure, if one was raised."""
    traceback: str | None = None
    """Formatted traceback of that exception, kept for debugging."""
    steps: tuple[StepRun, ...] = ()
    """The durable steps (`context.step`) the stage made, in the order they ended."""


class CacheStats(FrozenModel):
    """Cache counters of one run (`PipelineResult.cache_stats`); fan-out items count one by one."""

    hits: int = 0
    """Lookups served from the cache (the stage or item did not run)."""
    misses: int = 0
    """Lookups that found nothing usable (absent, expired or unreadable)."""
    writes: int = 0
    """Successful outputs stored."""
    errors: int = 0
    """Store or read failures (each recomputed; see `StageRun.cache_errors`)."""
    uncacheable: int = 0
    """Invocations not cached because the input or output could not be stored faithfully."""


class PipelineResult(FrozenModel):
    """The frozen outcome of one pipeline run.

    `execute` never raises for a stage's failure; look at `success`, `failed_stages` and
    `stage_results`, or call `raise_for_failure()`.
    """

    pipeline_name: str
    """The definition's name."""
    success: bool
    """True when no critical stage failed and the run was neither cancelled nor timed out."""
    outputs: dict[str, Any] = Field(default_factory=dict)
    """Outputs of the stages that succeeded, by stage id."""
    stage_results: dict[str, StageResult[Any]] = Field(default_factory=dict)
    """Every stage's result, by stage id."""
    failed_stages: list[str] = Field(default_factory=list)
    """Ids of failed stages (critical or not), in plan order."""
    skipped_stages: list[str] = Field(default_factory=list)
    """Ids of skipped stages, in plan order."""
    cancelled_stages: list[str] = Field(default_factory=list)
    """Ids of cancelled stages (in flight or never started), in plan order."""
    total_duration_ms: float = 0.0
    """Wall time of the run as measured by the executor's clock."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """A copy of the context metrics, plus `validation_errors` or `cancellation` where they apply."""
    stage_runs: dict[str, StageRun] = Field(default_factory=dict)
    """Per-stage run records, by stage id, in plan order."""
    error: str | None = None
    """A run-level failure reason (invalid definition, pipeline timeout, cancellation)."""
    scheduling: str = "waves"
    """The scheduling policy the run used."""
    cache_stats: CacheStats | None = None
    """Cache hits, misses and writes of this run; None when the executor had no cache."""
    run_id: str | None = None
    """The id that this run's events carry."""
    plan: ExecutionPlan | None = None
    """The plan that ran (None for an invalid definition): the graph behind the records."""

    def summary(self) -> str:
        """A text table of the run (stage, status, attempts, wait, duration, cache).

        Below it: the outcome, the critical path of the finished run and any errors.
        """
        return _summary.render_summary(self, self.plan)

    def critical_path(self) -> tuple[list[str], float]:
        """The chain of dependent stages with the largest total duration, and that total (ms)."""
        if self.plan is None:
            return [], 0.0
        return _summary.critical_path(self.plan, self)

    def _known(self) -> str:
        return ", ".join(repr(s) for s in self.stage_results) or "none"

    def get_result(self, stage_id: str) -> StageResult[Any]:
        """The `StageResult` of `stage_id`; `KeyError` naming the known ids otherwise."""
        try:
            return self.stage_results[stage_id]
        except KeyError:
            msg = f"no stage {stage_id!r} in this result; known stages: {self._known()}"
            raise KeyError(msg) from None

    def get_output(self, stage_id: str) -> Any:
        """The output of a succeeded stage; `KeyError` saying why there is none otherwise."""
        if stage_id in self.outputs:
            return self.outputs[stage_id]
        status = self.get_result(stage_id).status.value
        msg = f"stage {stage_id!r} has no output: it {status}"
        raise KeyError(msg)

    def raise_for_failure(self) -> PipelineResult:
        """Return `self` when the run succeeded; raise `PipelineRunError` otherwise."""
        if not self.success:
            raise PipelineRunError(self)
        return self

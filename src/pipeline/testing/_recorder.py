"""Recording a run's progress for assertions: `record_run`, `RecordingStage`, `RunRecorder`.

It works by wrapping the stage objects of a definition, so it needs nothing from the executor
and sees what the stages see: calls, their inputs and how each ended. What the executor saw
(waves, retries scheduled, cache hits, stages that never ran) is in the run's events
(`pipeline.events`, recorded by any observer) and in the `PipelineResult`.

Recording never changes what it records: a wrapper exposes its stage as `__wrapped_stage__`,
which the cache follows to resolve output types and code fingerprints, and a stage that
validation would reject (no `execute`, or one that is not `async def`) is left unwrapped, so a
recorded definition validates, caches and fingerprints exactly like the original.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, final

import anyio

from pipeline._model import FrozenModel
from pipeline.result import StageResult, StageStatus
from pipeline.subpipeline import SubPipeline

if TYPE_CHECKING:
    from pipeline.clock import Clock
    from pipeline.context import PipelineContext
    from pipeline.definition import PipelineDefinition
    from pipeline.protocol import PipelineStage

InT = TypeVar("InT")
OutT = TypeVar("OutT")

RecordKind = Literal["started", "finished"]
"""What a `StageRecord` marks: a call of a stage starting or finishing."""


class StageRecord(FrozenModel):
    """One entry of a `RunRecorder`: a call of a stage started or finished."""

    kind: RecordKind
    """`"started"` or `"finished"`."""
    stage_id: str
    """The stage's id (`"parent/child"` for a stage inside a `SubPipeline`)."""
    call: int
    """Which call of this stage (1-based; each retry attempt and fan-out item is a call)."""
    status: StageStatus | None = None
    """How the call ended (finished records only). An exception counts as failed, a
    cancellation (fail-fast, timeout, cancel) as cancelled."""
    error: str | None = None
    """The call's error, if it failed or raised."""
    at: float | None = None
    """The recorder's clock time, if it has a clock."""


@final
class RunRecorder:
    """The progress of a run as seen by its stages: which calls started and finished, in order.

    Fill it with `record_run(definition)` (or `RecordingStage` by hand) and assert on it after
    the run. It sees stage *calls*: a stage skipped by its condition or because of an upstream
    failure, and a stage never started, leave no record (look at the `PipelineResult` for
    those); a retried stage leaves one started/finished pair per attempt, and a fan-out stage
    one per item.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock = clock
        """Stamps each record's `at` when given (e.g. the executor's `FakeClock`)."""
        self._records: list[StageRecord] = []
        self._inputs: dict[str, list[Any]] = {}
        self._running = 0
        self._max_running = 0
        self._lock = threading.Lock()

    # -- recording (called by RecordingStage) -----------------------------------------------------
    def record_start(self, stage_id: str, input: Any) -> int:
        """Record that a call of `stage_id` started; returns its call number."""
        with self._lock:
            inputs = self._inputs.setdefault(stage_id, [])
            inputs.append(input)
            self._running += 1
            self._max_running = max(self._max_running, self._running)
            self._records.append(
                StageRecord(kind="started", stage_id=stage_id, call=len(inputs), at=self._now())
            )
            return len(inputs)

    def record_finish(
        self, stage_id: str, call: int, status: StageStatus, error: str | None = None
    ) -> None:
        """Record that call `call` of `stage_id` finished with `status`."""
        with self._lock:
            self._running -= 1
            self._records.append(
                StageRecord(
                    kind="finished",
                    stage_id=stage_id,
                    call=call,
                    status=status,
                    error=error,
                    at=self._now(),
                )
            )

    def _now(self) -> float | None:
        return None if self.clock is None else self.clock.now()

    # -- assertions --------------------------------------------------------------------------------
    @property
    def records(self) -> tuple[StageRecord, ...]:
        """Every record, in the order it happened."""
        with self._lock:
            return tuple(self._records)

    @property
    def started(self) -> list[str]:
        """Stage ids in the order their calls started (a retried stage appears per attempt)."""
        return [r.stage_id for r in self.records if r.kind == "started"]

    @property
    def finished(self) -> list[str]:
        """Stage ids in the order their calls finished."""
        return [r.stage_id for r in self.records if r.kind == "finished"]

    @property
    def statuses(self) -> dict[str, StageStatus]:
        """Each called stage's status after its last finished call."""
        return {r.stage_id: r.status for r in self.records if r.status is not None}

    @property
    def max_concurrency(self) -> int:
        """The most calls that were in flight at the same time."""
        with self._lock:
            return self._max_running

    def call_count(self, stage_id: str) -> int:
        """How many calls of `stage_id` started (0 if it was never called)."""
        with self._lock:
            return len(self._inputs.get(stage_id, ()))

    def inputs(self, stage_id: str) -> list[Any]:
        """The inputs `stage_id` was called with, in call order."""
        with self._lock:
            return list(self._inputs.get(stage_id, ()))

    def timeline(self) -> list[str]:
        """The records as short lines, `"started a"` / `"finished a: succeeded"`, for asserts."""
        return [
            f"started {r.stage_id}"
            if r.kind == "started"
            else f"finished {r.stage_id}: {r.status.value if r.status else '?'}"
            for r in self.records
        ]

    def __repr__(self) -> str:
        return f"RunRecorder({len(self._records)} records)"


@final
class RecordingStage(Generic[InT, OutT]):
    """Wraps a stage so that every call is recorded in a `RunRecorder`; behaviour is unchanged.

    Exceptions and cancellations pass through after being recorded. The wrapped stage is also
    `__wrapped_stage__`, the attribute the cache unwraps (repeatedly) to find the output type
    and the code fingerprint of the original, so a recorded stage reads and writes the same
    cache entries. Wrap only stages whose `execute` is `async def` (`record_run` does that).

    Args:
        stage_id: The id the records carry.
        stage: The stage to wrap.
        recorder: Where the records go.
    """

    def __init__(
        self, stage_id: str, stage: PipelineStage[InT, OutT], recorder: RunRecorder
    ) -> None:
        self.stage_id = stage_id
        """The id the records carry."""
        self.wrapped = stage
        """The wrapped stage."""
        self.__wrapped_stage__ = stage
        """The wrapped stage, under the name the cache unwraps (see `output_type_of`)."""
        self.recorder = recorder
        """The recorder receiving the records."""

    @property
    def name(self) -> str:
        """The wrapped stage's name."""
        return self.wrapped.name

    async def execute(self, input: InT, context: PipelineContext[Any], /) -> StageResult[OutT]:
        """Record the start, call the wrapped stage, record how it ended."""
        recorder, sid = self.recorder, self.stage_id
        call = recorder.record_start(sid, input)
        try:
            result: object = await self.wrapped.execute(input, context)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                recorder.record_finish(sid, call, StageStatus.CANCELLED, "cancelled")
            else:
                error = f"{type(exc).__name__}: {exc}"
                recorder.record_finish(sid, call, StageStatus.FAILED, error)
            raise
        if isinstance(result, StageResult):
            recorder.record_finish(sid, call, result.status, result.error)
        else:
            error = f"returned {type(result).__name__}, expected StageResult"
            recorder.record_finish(sid, call, StageStatus.FAILED, error)
        return result  # type: ignore[return-value]  # passed through unchanged; the executor rejects non-results

    def __repr__(self) -> str:
        return f"RecordingStage({self.stage_id!r}, {self.wrapped!r})"


def record_run(
    definition: PipelineDefinition,
    *,
    recorder: RunRecorder | None = None,
    clock: Clock | None = None,
) -> tuple[PipelineDefinition, RunRecorder]:
    """A copy of `definition` whose stages record every call, and the recorder they fill.

    Run the returned definition with any executor, then assert on the recorder. Stages of a
    `SubPipeline` are recorded too, with ids `"<subpipeline stage id>/<child stage id>"`.

    The copy validates, caches and fingerprints like `definition`: a stage without an
    `async def execute` (or a streaming producer, SPEC 11) is left as it is (validation then reports it exactly as for the
    original, and it leaves no records), and a recorded stage hits the cache entries of the
    original and vice versa.

    Args:
        definition: The pipeline to record; it is not modified.
        recorder: Record into this recorder (default: a new one).
        clock: Clock stamping the records of a new recorder (e.g. the executor's `FakeClock`).

    Returns:
        `(recorded_definition, recorder)`.

    Example:
        ```python
        recorded, recorder = record_run(definition)
        result = await executor.execute(recorded, 1)
        assert recorder.started == ["load", "transform", "save"]
        ```
    """
    rec = recorder if recorder is not None else RunRecorder(clock=clock)
    return _wrap(definition, rec, prefix=""), rec


def _wrap(definition: PipelineDefinition, recorder: RunRecorder, prefix: str) -> PipelineDefinition:
    stages = []
    for sdef in definition.stages:
        sid = f"{prefix}{sdef.id}"
        inner: Any = sdef.stage
        if not _is_async_stage(inner):
            stages.append(sdef)  # left for validation to report, not hidden behind a wrapper
            continue
        if isinstance(inner, SubPipeline):
            inner = SubPipeline(
                _wrap(inner.definition, recorder, prefix=f"{sid}/"),
                output=inner.output,
                name=inner.name,
                context=inner.context_mode,
                executor=inner.executor,
            )
        stages.append(dataclasses.replace(sdef, stage=RecordingStage(sid, inner, recorder)))
    return dataclasses.replace(definition, stages=tuple(stages))


def _is_async_stage(stage: object) -> bool:
    """Whether validation accepts `stage`'s `execute` (the same test as `_validation`)."""
    try:
        execute = getattr(stage, "execute", None)
    except Exception:  # noqa: BLE001  # a raising property: left for validation to meet as is
        return False
    if getattr(stage, "is_producer", False) is True:
        return False  # an `@stage` producer streams its items: a wrapper would collect them
    return callable(execute) and inspect.iscoroutinefunction(execute)

"""Typed, frozen events emitted at every state change of a run, and the `Observer` protocol.

Events are pure values (no anyio, no executor import). How they are delivered to observers
lives in `pipeline._dispatch`; the built-in observers live in `pipeline.observers`.

Every event carries `run_id` and `at_s`, the executor clock's time in seconds since the run
started (with `FakeClock`, virtual seconds). Stage events carry `stage_id`; events about one
fan-out item carry `item` (its index), and `lineage_id` names the item like `groups[3]`
(or, for an item of a stream, like `source:3/map`). `StageFinished` carries the stage's output.
All payload fields are keyword-only, so fields can be added without breaking anyone.

The order within one stage is: `StageStarted`, then per attempt `AttemptStarted` and, when the
attempt fails, `AttemptFailed` (then `RetryScheduled` if another attempt follows), or
`StageCacheHit` instead of attempts, and finally `StageFinished`. A fan-out stage interleaves
these per item (each carrying `item`) and emits `FanOutItemFinished` as each item ends.
A stage that never starts (skipped because upstream failed, or cancelled as "not started")
emits only `StageFinished`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeAlias

from pydantic import Field, TypeAdapter, computed_field

from pipeline._model import FrozenModel
from pipeline.result import StageStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable


class _Event(FrozenModel):
    """Fields every event has."""

    run_id: str
    """Identifies the run; unique per `execute` call."""
    at_s: float
    """When it happened: executor clock seconds since the run started."""


class _StageEvent(_Event):
    """An event about one stage (and, for fan-out, possibly one of its items)."""

    stage_id: str
    """The stage's id."""
    item: int | None = None
    """The fan-out item's index, or None for the stage as a whole."""
    stream_lineage: str | None = None
    """For an item that came from a streaming producer: its lineage (see `lineage_id`)."""

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented computed-property form
    @property
    def lineage_id(self) -> str:
        """`stage` for the stage as a whole, `stage[3]` for fan-out item 3.

        An item that came from a streaming producer (SPEC 11) is named by where it came from
        and each streaming stage it passed: `source:3/map/clean` is the fourth item `source`
        yielded, in stage `clean` after `map` (its `item` is 3 in each of them).
        """
        if self.stream_lineage is not None:
            return self.stream_lineage
        return self.stage_id if self.item is None else f"{self.stage_id}[{self.item}]"


class RunStarted(_Event):
    """A run began (emitted once, before any stage starts)."""

    kind: Literal["run_started"] = "run_started"
    pipeline_name: str
    """The definition's name."""
    stage_ids: tuple[str, ...] = ()
    """Every stage id, in plan order."""
    waves: tuple[tuple[str, ...], ...] = ()
    """The plan's waves."""
    scheduling: str = "waves"
    """The executor's scheduling policy (`waves` or `eager`)."""


class WaveStarted(_Event):
    """Under `waves` scheduling, wave `wave` was released (its stages may start)."""

    kind: Literal["wave_started"] = "wave_started"
    wave: int
    """The wave index (0 = entry points)."""
    stage_ids: tuple[str, ...] = ()
    """The stages of this wave."""


class StageStarted(_StageEvent):
    """A stage's task started (before its condition is evaluated)."""

    kind: Literal["stage_started"] = "stage_started"
    wave: int | None = None
    """The stage's wave in the plan."""
    items: int | None = None
    """For a fan-out stage with list input: how many items it will run."""


class AttemptStarted(_StageEvent):
    """One attempt of a stage (or of one fan-out item) began."""

    kind: Literal["attempt_started"] = "attempt_started"
    attempt: int
    """1 for the first attempt."""


class AttemptFailed(_StageEvent):
    """One attempt failed (an exception, a timeout or a failed `StageResult`)."""

    kind: Literal["attempt_failed"] = "attempt_failed"
    attempt: int
    """The attempt that failed (1-based)."""
    error: str | None = None
    """The failure text."""
    exception_type: str | None = None
    """Class name of the exception behind the failure, if one was raised."""
    will_retry: bool = False
    """True when a `RetryScheduled` follows."""


class RetryScheduled(_StageEvent):
    """Another attempt will start after `delay_s` (the backoff wait)."""

    kind: Literal["retry_scheduled"] = "retry_scheduled"
    attempt: int
    """The attempt that will run next (2 for the first retry)."""
    delay_s: float
    """The backoff wait before it, in seconds."""


class StageCacheHit(_StageEvent):
    """The output of a stage (or fan-out item) was served from the cache."""

    kind: Literal["stage_cache_hit"] = "stage_cache_hit"
    key: str | None = None
    """The cache key, when the store exposes one."""


class FanOutItemFinished(_StageEvent):
    """One fan-out item ended (`item` is always set)."""

    kind: Literal["fan_out_item_finished"] = "fan_out_item_finished"
    status: StageStatus
    """How the item ended."""
    attempts: int = 0
    """Attempts the item needed (0 when served from the cache)."""
    cached: bool = False
    """True when the item's output came from the cache."""
    error: str | None = None
    """Why the item failed or was cancelled."""
    resource_wait_s: float = 0.0
    """How long its (last) attempt waited for the stage's `uses=` resources."""


class ResourceWaited(_StageEvent):
    """An attempt waited for a resource (`uses=` or `context.acquire`) before it could run."""

    kind: Literal["resource_waited"] = "resource_waited"
    resource: str
    """The resource's name."""
    weight: int = 1
    """Units acquired."""
    wait_s: float = 0.0
    """How long the grant took, on the executor's clock."""
    attempt: int = 0
    """The attempt that waited (0 for `context.acquire` outside the attempt's own resources)."""


class StepFinished(_StageEvent):
    """A durable step (`context.step`) ended: paid for, replayed from the cache, or failed."""

    kind: Literal["step_finished"] = "step_finished"
    name: str
    """The step's name."""
    status: StageStatus
    """`succeeded` or `failed`."""
    cached: bool = False
    """True when replayed from the cache."""
    attempts: int = 0
    """Calls made (0 when replayed)."""
    error: str | None = None
    """The last failure, or None."""


class StageFinished(_StageEvent):
    """A stage ended: succeeded, failed, skipped or cancelled (possibly served from cache)."""

    kind: Literal["stage_finished"] = "stage_finished"
    status: StageStatus
    """How the stage ended."""
    attempts: int = 0
    """Attempts made (fan-out: the most any item needed); 0 if it never ran."""
    cached: bool = False
    """True when the output came from the cache."""
    error: str | None = None
    """The failure, skip or cancellation reason."""
    duration_s: float = 0.0
    """Run time of the stage (0 if it never started)."""
    items: int | None = None
    """For a fan-out stage: how many items its input had (or a stream brought)."""
    output: Any = Field(default=None, exclude=True, repr=False)
    """The stage's output when it succeeded and its output is kept (it is in
    `PipelineResult.outputs`); None otherwise, and for a streaming stage whose items were
    not collected. Not serialised (`model_dump` leaves it out)."""


class RunFinished(_Event):
    """A run ended (emitted once, after every stage has finished)."""

    kind: Literal["run_finished"] = "run_finished"
    pipeline_name: str
    """The definition's name."""
    success: bool
    """The result's `success`."""
    duration_s: float = 0.0
    """Wall time of the run by the executor clock."""
    error: str | None = None
    """A run-level failure reason (invalid definition, timeout, cancellation)."""
    failed_stages: tuple[str, ...] = ()
    """Ids of failed stages, in plan order."""


PipelineEvent: TypeAlias = Annotated[
    RunStarted
    | WaveStarted
    | StageStarted
    | AttemptStarted
    | AttemptFailed
    | RetryScheduled
    | StageCacheHit
    | FanOutItemFinished
    | ResourceWaited
    | StepFinished
    | StageFinished
    | RunFinished,
    Field(discriminator="kind"),
]
"""Any event; `kind` tells them apart (`EVENT_ADAPTER.validate_python(data)` parses one)."""

EVENT_ADAPTER: TypeAdapter[PipelineEvent] = TypeAdapter(PipelineEvent)
"""Parses and dumps events (e.g. `EVENT_ADAPTER.validate_json(line)` for a recorded stream)."""

EventKind = Literal[
    "run_started",
    "wave_started",
    "stage_started",
    "attempt_started",
    "attempt_failed",
    "retry_scheduled",
    "stage_cache_hit",
    "fan_out_item_finished",
    "resource_waited",
    "step_finished",
    "stage_finished",
    "run_finished",
]
"""The closed vocabulary of `kind` values."""


class Observer(Protocol):
    """Anything with `on_event(event)`; pass it as `PipelineExecutor(observers=[...])`.

    `on_event` may be a plain method (called inline from the run loop, so keep it quick: no
    blocking I/O) or an `async def` (awaited by a dispatcher task, in event order, without
    holding up the run). An observer that raises is logged on `logging.getLogger("pipeline")`
    and never changes the run's outcome. Match on `event.kind` or `isinstance` to pick events.
    """

    def on_event(self, event: PipelineEvent, /) -> Awaitable[None] | None:
        """Receive one event."""
        ...


__all__ = [
    "EVENT_ADAPTER",
    "AttemptFailed",
    "AttemptStarted",
    "EventKind",
    "FanOutItemFinished",
    "Observer",
    "PipelineEvent",
    "ResourceWaited",
    "RetryScheduled",
    "RunFinished",
    "RunStarted",
    "StageCacheHit",
    "StageFinished",
    "StageStarted",
    "StepFinished",
    "WaveStarted",
]

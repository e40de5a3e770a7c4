"""Stages, values and a clock used by the bad-input catalogue (tests/unit/test_bad_input_catalogue.py).

Each helper is a deliberately awkward thing a user might hand the library: a value without a
fingerprint, an exception whose `__str__` raises, an output that would not survive JSON.
"""

from __future__ import annotations

import collections
import enum
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline.cache import MemoryCache
from tests.unit._support import BACKENDS

if TYPE_CHECKING:
    from pipeline import PipelineResult
    from pipeline.errors import DefinitionError
    from pipeline.testing import FakeClock

RUN_LIMIT_S = 10
"""A guard against hangs around every run; a passing run never comes near it."""

# -- parametrize rows -----------------------------------------------------------------------------


def bad(field: str, value: Any, label: str) -> Any:
    """One row of a construction table: `{field: value}` is rejected naming `field`."""
    return pytest.param({field: value}, field, id=f"{field}={label}")


def with_backends(rows: Iterable[Any], *, asyncio_only: Sequence[str] = ()) -> list[Any]:
    """Each row once per anyio backend (the rows named in `asyncio_only` on asyncio only)."""
    return [
        pytest.param(*row.values, backend, id=f"{row.id}-{backend}", marks=row.marks)
        for row in rows
        for backend in BACKENDS
        if backend == "asyncio" or row.id not in asyncio_only
    ]


# -- stages ---------------------------------------------------------------------------------------


class Recorder:
    """A stage that records what it was handed (draining iterators) and returns `output()`."""

    def __init__(self, output: Callable[[], Any] = lambda: "ok", name: str = "recorder") -> None:
        self.name = name
        self.output = output
        self.calls = 0
        self.received: list[Any] = []
        self.drained: list[list[Any]] = []

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        self.calls += 1
        self.received.append(input)
        if isinstance(input, Iterator):
            self.drained.append(list(input))
        return StageResult.success(self.output())


class Body:
    """A stage running `body(input, context)`; `calls` counts invocations."""

    def __init__(
        self, body: Callable[[Any, PipelineContext[Any]], Any], name: str = "body"
    ) -> None:
        self.name = name
        self.body = body
        self.calls = 0

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        self.calls += 1
        returned = self.body(input, context)
        if hasattr(returned, "__await__"):
            returned = await returned
        return returned  # type: ignore[no-any-return]  # some cases return a non-StageResult on purpose


def ok(value: Any = "ok") -> Body:
    """A stage returning `StageResult.success(value)`."""
    return Body(lambda _input, _ctx: StageResult.success(value))


def returns(value: Any) -> Body:
    """A stage returning `value` as is (a `StageResult` or, as a misuse, anything else)."""
    return Body(lambda _input, _ctx: value)


def raises(exc: BaseException) -> Body:
    """A stage raising `exc`."""

    def body(_input: Any, _ctx: PipelineContext[Any]) -> Any:
        raise exc

    return Body(body)


class SyncStage:
    """A stage whose `execute` is a plain function: a validation error, not a construction one."""

    name = "sync"

    def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


class NoExecute:
    """An object with no `execute` at all."""

    name = "no_execute"


class OkStage:
    """A valid stage class; the catalogue passes the class itself where an instance belongs."""

    name = "ok_stage"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


def sd(sid: str, *inputs: str, stage: Any = None, **options: Any) -> StageDefinition:
    """A stage definition with a valid stage unless one is given."""
    return StageDefinition(
        sid, stage if stage is not None else OkStage(), inputs=list(inputs), **options
    )


# -- awkward exceptions and values ----------------------------------------------------------------


class ConditionBoomError(Exception):
    """Raised by a condition."""


class BoolBoomError(Exception):
    """Raised by `BadBool.__bool__`."""


class BadBool:
    """What a condition returns when it returns something whose truth cannot be told."""

    def __bool__(self) -> bool:
        raise BoolBoomError("truth unknown")


class BadStrError(Exception):
    """An exception that cannot even be printed."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


@dataclass
class UnsetField:
    """A dataclass whose field was never assigned (reading it raises AttributeError)."""

    x: int = field(init=False)


@dataclass
class ExplodingField:
    """A dataclass whose field raises a RuntimeError when read."""

    x: int

    def __getattribute__(self, name: str) -> Any:
        if name == "x":
            raise RuntimeError("x is not readable")
        return object.__getattribute__(self, name)


class Opaque:
    """An object with no JSON form."""

    __slots__ = ("handle",)

    def __init__(self) -> None:
        self.handle = object()


class Color(enum.StrEnum):
    """A StrEnum output would come back from JSON as a plain str."""

    RED = "red"


class Level(enum.IntEnum):
    """An IntEnum output would come back from JSON as a plain int."""

    HIGH = 3


class Tag(str):
    """A str subclass output would come back from JSON as a plain str."""

    __slots__ = ()


def counter() -> collections.Counter[str]:
    """A Counter output would come back as a plain dict."""
    return collections.Counter({"a": 2})


def ordered() -> collections.OrderedDict[str, int]:
    """An OrderedDict output would come back as a plain dict."""
    return collections.OrderedDict([("b", 1), ("a", 2)])


def generator() -> Iterator[int]:
    """A fresh generator of 1, 2, 3."""
    yield from (1, 2, 3)


# -- runtime and cache scenarios ------------------------------------------------------------------


def condition_raises(context: PipelineContext[Any]) -> bool:
    """A condition that raises."""
    raise ConditionBoomError("no verdict")


async def async_condition_bad_bool(context: PipelineContext[Any]) -> Any:
    """An async condition whose verdict has no truth value."""
    return BadBool()


async def stray_cancel(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
    """A stage body awaiting a future someone else cancelled (asyncio only)."""
    import asyncio  # noqa: TID251  # a CancelledError from asyncio itself is what is tested

    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future
    return StageResult.success("unreachable")


def overflowing_retry(multiplier: float) -> list[StageDefinition]:
    """A stage that always fails, retried 2000 times with a backoff whose power overflows."""
    retry = RetryConfig(
        max_attempts=2000, initial_delay_ms=1, backoff_multiplier=multiplier, max_delay_ms=5
    )
    return [sd("flaky", stage=returns(StageResult.failure("flaky")), retry_config=retry)]


def fail_fast_sibling(clock: Any) -> list[StageDefinition]:
    """`slow` waits forever while its sibling `boom` fails: fail-fast cancels `slow`."""

    async def forever(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await anyio.sleep_forever()
        return StageResult.success("never")

    return [sd("slow", stage=Body(forever)), sd("boom", stage=returns(StageResult.failure("no")))]


def sleeps_past_timeout(clock: Any) -> list[StageDefinition]:
    """`slow` sleeps 1 s on the clock under a 50 ms timeout."""

    async def slow(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await clock.sleep(1.0)
        return StageResult.success("late")

    return [sd("slow", stage=Body(slow), timeout_ms=50)]


def overruns_without_checkpoint(clock: ManualClock) -> list[StageDefinition]:
    """`slow` is busy for 1 s under a 50 ms timeout without reaching a checkpoint."""

    def slow(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        clock.jump(1.0)
        return StageResult.success("late")

    return [sd("slow", stage=Body(slow), timeout_ms=50)]


@dataclass(frozen=True)
class UncachedRun:
    """What one run of `run_uncached_twice` produced."""

    output: Any
    warnings: tuple[str, ...]


def run_uncached_twice(
    stage: Recorder, make_input: Callable[[], Any], backend: str
) -> list[UncachedRun]:
    """Run a one-stage pipeline twice on one MemoryCache; check it ran uncached both times.

    Each run: succeeds, is not served from the cache, records a cache warning, executes the
    stage again, hands it the very input object and leaves the store empty.
    """
    runs: list[UncachedRun] = []

    async def scenario() -> None:
        store = MemoryCache()
        executor = PipelineExecutor(cache=store)
        pipeline = PipelineDefinition("p", [StageDefinition("s", stage)])
        for run_number in (1, 2):
            value = make_input()
            with anyio.fail_after(RUN_LIMIT_S):
                result = await executor.execute(pipeline, value)
            assert result.success, result.get_result("s").error
            record = result.stage_runs["s"]
            assert record.status is StageStatus.SUCCEEDED
            assert record.cached is False
            assert record.cache_warnings, record
            assert stage.calls == run_number
            assert stage.received[-1] is value
            assert await store.count() == 0
            runs.append(UncachedRun(result.outputs["s"], record.cache_warnings))

    anyio.run(scenario, backend=backend)
    return runs


def waits_capped(result: PipelineResult, clock: FakeClock) -> None:
    """Every backoff wait was capped at max_delay_ms (5 ms)."""
    assert len(clock.sleeps) == 1999
    assert max(clock.sleeps) == pytest.approx(0.005)


def skip_reason_names_input(result: PipelineResult, clock: FakeClock) -> None:
    """The fan-out was skipped because its input stage was."""
    assert result.get_result("fan").metadata["skip_reason"] == "input stage 'src' was skipped"


def fail_fast_applied(result: PipelineResult, clock: FakeClock) -> None:
    """The stage after the cancelled one never ran."""
    assert "after" not in result.outputs
    assert result.stage_results["after"].status is StageStatus.CANCELLED


@dataclass(frozen=True)
class Runtime:
    """One runtime misuse: the stages, the stage to look at and how it must end."""

    stages: Callable[[], list[StageDefinition]]
    sid: str
    status: StageStatus
    run_success: bool
    prefix: str | None = None
    mentions: tuple[str, ...] = ()
    check: Callable[[PipelineResult, FakeClock], None] | None = None


STATUS_LISTS = {
    StageStatus.FAILED: "failed_stages",
    StageStatus.CANCELLED: "cancelled_stages",
    StageStatus.SKIPPED: "skipped_stages",
}


# -- a clock whose time only a stage moves ---------------------------------------------------------


class ManualClock:
    """A `Clock` whose time moves only through `jump` (deadlines never fire by themselves).

    A stage that calls `jump` and returns overran its `timeout_ms` without ever reaching a
    checkpoint: only the duration check on return can tell.
    """

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        """The manual time in seconds."""
        return self.t

    def jump(self, seconds: float) -> None:
        """Move time forward without yielding to the event loop."""
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        """Advance by `seconds` at once."""
        self.t += max(seconds, 0.0)
        await anyio.lowlevel.checkpoint()

    def deadline_scope(self, seconds: float) -> anyio.CancelScope:
        """A scope that is never cancelled by time."""
        return anyio.CancelScope()


# -- assertions -----------------------------------------------------------------------------------


def assert_names(err: DefinitionError, *, owner: str, field: str, exact_owner: bool = True) -> None:
    """`err` names `owner` and `field` (or one entry of it, `field[i]`) and carries a fix."""
    if exact_owner:
        assert err.owner == owner, err
    else:
        assert err.owner.startswith(owner), err
    assert err.field == field or re.fullmatch(rf"{re.escape(field)}\[\d+\]", err.field), err
    message = str(err)
    assert message.startswith(f"{err.owner}: {err.field} "), message
    _, separator, fix = message.partition("; ")
    assert separator, f"no fix after '; ' in {message!r}"
    assert fix.strip(), message

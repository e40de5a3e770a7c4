"""SPEC 7: async observers never hold the caller.

Once a run ends, events still queued for async observers get `OBSERVER_GRACE_S` on the
executor's clock; what is left is dropped with one warning. Time is a `FakeClock`, so every
bound below is exact virtual time and no test waits for real.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import anyio
import pytest

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageResult,
)
from pipeline._dispatch import OBSERVER_GRACE_S, EventDispatcher
from pipeline.errors import DefinitionError
from pipeline.events import PipelineEvent, RunStarted
from pipeline.testing import FakeClock
from tests.unit._support import BACKENDS, Backend

GUARD_S = 10
"""Real seconds after which a test that would hang the caller fails instead."""


def event(n: int) -> RunStarted:
    return RunStarted(run_id=f"run{n}", at_s=0.0, pipeline_name="p")


class Slow:
    """An async observer taking `per_event_s` of the clock per event."""

    def __init__(self, clock: FakeClock, per_event_s: float) -> None:
        self.clock, self.per_event_s = clock, per_event_s
        self.seen: list[PipelineEvent] = []

    async def on_event(self, event: PipelineEvent, /) -> None:
        await self.clock.sleep(self.per_event_s)
        self.seen.append(event)


class Stuck:
    """An async observer that never returns while `stuck` is True."""

    def __init__(self) -> None:
        self.stuck = True
        self.started: list[PipelineEvent] = []
        self.seen: list[PipelineEvent] = []

    async def on_event(self, event: PipelineEvent, /) -> None:
        self.started.append(event)
        if self.stuck:
            await anyio.sleep_forever()
        self.seen.append(event)


class AsyncRecorder:
    def __init__(self) -> None:
        self.seen: list[PipelineEvent] = []

    async def on_event(self, event: PipelineEvent, /) -> None:
        await anyio.lowlevel.checkpoint()
        self.seen.append(event)


class Recorder:
    def __init__(self) -> None:
        self.seen: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent, /) -> None:
        self.seen.append(event)


def drop_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "pipeline" and r.levelno == logging.WARNING and "dropped" in r.getMessage()
    ]


def the_drop_warning(caplog: pytest.LogCaptureFixture) -> str:
    records = drop_warnings(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    return records[0].getMessage()


async def emit_all(bus: EventDispatcher, *events: PipelineEvent) -> None:
    # A FakeClock moves virtual time only while entered (the executor enters it per run).
    clock = bus._clock if isinstance(bus._clock, FakeClock) else contextlib.nullcontext()
    with anyio.fail_after(GUARD_S):
        async with clock, bus.running():
            for e in events:
                bus.emit(e)


# -- the dispatcher on its own ------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_events_delivered_within_the_grace_are_kept_without_a_warning(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    slow = Slow(clock, 0.25)
    events = [event(i) for i in range(3)]

    async def main() -> None:
        await emit_all(EventDispatcher([slow], clock=clock, grace_s=1.0), *events)

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        anyio.run(main, backend=backend)
    assert slow.seen == events
    assert clock.now() == pytest.approx(0.75)  # returned as soon as the queue was empty
    assert drop_warnings(caplog) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_the_grace_cannot_deliver_is_dropped_with_one_counted_warning(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    slow = Slow(clock, 0.4)
    events = [event(i) for i in range(5)]

    async def main() -> None:
        await emit_all(EventDispatcher([slow], clock=clock, grace_s=1.0), *events)

    with caplog.at_level(logging.DEBUG, logger="pipeline"):
        anyio.run(main, backend=backend)
    assert slow.seen == events[:2]  # done at 0.4 and 0.8; the third was cut at 1.0
    assert clock.now() == pytest.approx(1.0)
    message = the_drop_warning(caplog)
    assert "3 event(s)" in message  # the one cut short and the two never started
    assert "grace_s=1 s" in message
    assert "Slow" in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_observer_stuck_forever_is_cut_at_the_grace(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    stuck, rec = Stuck(), AsyncRecorder()

    async def main() -> None:
        bus = EventDispatcher([stuck, rec], clock=clock, grace_s=1.0)
        await emit_all(bus, event(1), event(2))

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        anyio.run(main, backend=backend)
    assert clock.now() == pytest.approx(1.0)
    assert stuck.started == [event(1)]
    assert rec.seen == []  # queued behind the stuck delivery (one drain task, in order)
    message = the_drop_warning(caplog)
    assert "4 event(s)" in message
    assert "Stuck" in message
    assert "AsyncRecorder" in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_caller_is_held_at_most_the_grace(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    stuck, rec = Stuck(), AsyncRecorder()

    async def main() -> None:
        bus = EventDispatcher([stuck, rec], clock=clock, grace_s=1.0)
        with anyio.fail_after(GUARD_S), anyio.CancelScope() as scope:
            async with clock, bus.running():
                bus.emit(event(1))
                bus.emit(event(2))
                while not stuck.started:
                    await anyio.lowlevel.checkpoint()
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        anyio.run(main, backend=backend)
    # The cancel cut the first stuck delivery; the shielded flush delivered rec's first event,
    # got stuck again on the second and was cut at the grace.
    assert stuck.started == [event(1), event(2)]
    assert rec.seen == [event(1)]
    assert clock.now() == pytest.approx(1.0)
    assert "3 event(s)" in the_drop_warning(caplog)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dispatcher_reused_after_a_drop_delivers_everything(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    stuck = Stuck()
    bus = EventDispatcher([stuck], clock=clock, grace_s=1.0)

    async def main() -> None:
        await emit_all(bus, event(1))
        stuck.stuck = False
        await emit_all(bus, event(2), event(3))

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        anyio.run(main, backend=backend)
    assert stuck.seen == [event(2), event(3)]
    assert clock.now() == pytest.approx(1.0)  # only the first block waited
    assert "1 event(s)" in the_drop_warning(caplog)  # and the second added no warning


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_clock_the_grace_is_real_time(backend: Backend) -> None:
    stuck = Stuck()

    async def main() -> None:
        # grace_s=0 so the real-time path is exercised without waiting.
        await emit_all(EventDispatcher([stuck], grace_s=0), event(1))

    anyio.run(main, backend=backend)
    assert stuck.seen == []


def test_the_default_grace_is_the_documented_constant() -> None:
    assert 0 < OBSERVER_GRACE_S <= 2
    assert EventDispatcher([Recorder()]).grace_s == OBSERVER_GRACE_S


@pytest.mark.parametrize("bad", [-1.0, math.nan, True, "1"])
def test_grace_s_is_checked_at_construction(bad: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        EventDispatcher(grace_s=bad)
    assert (info.value.owner, info.value.field) == ("EventDispatcher", "grace_s")
    assert repr(bad) in str(info.value)
    assert ">= 0" in info.value.fix


async def test_an_infinite_grace_waits_for_every_event() -> None:
    clock = FakeClock()
    slow = Slow(clock, 10.0)
    await emit_all(EventDispatcher([slow], clock=clock, grace_s=math.inf), event(1), event(2))
    assert slow.seen == [event(1), event(2)]
    assert clock.now() == pytest.approx(20.0)


# -- through the executor -----------------------------------------------------------------------
class Hang:
    """A stage that never returns on its own."""

    name = "hang"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


class Quick:
    name = "quick"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_slow_async_observer_does_not_hold_a_timed_out_run(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The reported case: timeout_ms=100 and a slow observer made execute() take 5 s."""
    clock = FakeClock()
    slow, rec = Slow(clock, 5.0), Recorder()
    executor = PipelineExecutor(clock=clock, timeout_ms=100, observers=[rec, slow])
    definition = PipelineDefinition("p", [StageDefinition("hang", Hang())])

    async def main() -> None:
        with anyio.fail_after(GUARD_S):
            result = await executor.execute(definition)
        assert not result.success
        assert "timeout" in str(result.stage_results["hang"].error).lower()

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        anyio.run(main, backend=backend)
    assert clock.now() == pytest.approx(0.1 + OBSERVER_GRACE_S)
    assert slow.seen == []  # the first delivery needed 5 s
    assert rec.seen[-1].kind == "run_finished"
    assert f"{len(rec.seen)} event(s)" in the_drop_warning(caplog)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stuck_observer_neither_holds_nor_changes_a_run_nor_touches_the_next(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    stuck, rec = Stuck(), Recorder()
    executor = PipelineExecutor(clock=clock, observers=[rec, stuck])
    definition = PipelineDefinition(
        "p", [StageDefinition("a", Quick()), StageDefinition("b", Quick(), inputs=["a"])]
    )
    ends: list[float] = []

    async def main() -> None:
        for _ in range(2):
            with anyio.fail_after(GUARD_S):
                result = await executor.execute(definition, 7)
            assert result.success
            assert result.get_output("b") == 7
            ends.append(clock.now())
            stuck.stuck = False  # the second run's observer is healthy

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        anyio.run(main, backend=backend)
    assert ends == [pytest.approx(OBSERVER_GRACE_S), pytest.approx(OBSERVER_GRACE_S)]
    first_run = stuck.started[0].run_id
    second = [e for e in rec.seen if e.run_id != first_run]
    assert second[0].kind == "run_started"
    assert second[-1].kind == "run_finished"
    assert stuck.seen == second  # every event of the next run, and nothing of the first
    assert "Stuck" in the_drop_warning(caplog)  # the second run logged no drop

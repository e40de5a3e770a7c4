"""EventDispatcher: order, sync and async observers, isolation of failing observers."""

from __future__ import annotations

import logging

import anyio
import pytest

from pipeline._dispatch import EventDispatcher, new_run_id
from pipeline.events import PipelineEvent, RunStarted
from pipeline.testing import FakeClock


class Recorder:
    def __init__(self) -> None:
        self.seen: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent, /) -> None:
        self.seen.append(event)


class AsyncRecorder:
    def __init__(self) -> None:
        self.seen: list[PipelineEvent] = []

    async def on_event(self, event: PipelineEvent, /) -> None:
        await anyio.lowlevel.checkpoint()
        self.seen.append(event)


class Broken:
    def on_event(self, event: PipelineEvent, /) -> None:
        raise RuntimeError("observer bug")


class AsyncBroken:
    async def on_event(self, event: PipelineEvent, /) -> None:
        raise RuntimeError("async observer bug")


async def test_no_observers_is_disabled_and_emit_is_a_no_op(events: list[PipelineEvent]) -> None:
    bus = EventDispatcher()
    assert not bus.enabled
    bus.emit(events[0])  # outside running(): fine without observers
    async with bus.running():
        bus.emit(events[0])


async def test_sync_observers_get_every_event_inline_in_order(
    events: list[PipelineEvent],
) -> None:
    rec = Recorder()
    bus = EventDispatcher([rec])
    assert bus.enabled
    async with bus.running():
        for event in events:
            bus.emit(event)
            assert rec.seen[-1] is event  # delivered before emit returns
    assert rec.seen == events


async def test_async_observers_get_every_event_in_order_by_the_end(
    events: list[PipelineEvent],
) -> None:
    rec = AsyncRecorder()
    bus = EventDispatcher([rec])
    async with bus.running():
        for event in events:
            bus.emit(event)  # never waits for the observer
    assert rec.seen == events


async def test_a_raising_observer_is_logged_once_and_others_still_receive(
    events: list[PipelineEvent], caplog: pytest.LogCaptureFixture
) -> None:
    rec, arec = Recorder(), AsyncRecorder()
    bus = EventDispatcher([Broken(), rec, AsyncBroken(), arec])
    with caplog.at_level(logging.DEBUG, logger="pipeline"):
        async with bus.running():
            for event in events:
                bus.emit(event)
    assert rec.seen == events
    assert arec.seen == events
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # one per broken observer, with its traceback
    assert all(r.name == "pipeline" and r.exc_info for r in errors)
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


async def test_emit_with_async_observers_outside_running_is_a_bug(
    events: list[PipelineEvent],
) -> None:
    bus = EventDispatcher([AsyncRecorder()])
    with pytest.raises(RuntimeError, match="running"):
        bus.emit(events[0])


async def test_sync_observer_returning_an_awaitable_is_awaited(
    events: list[PipelineEvent],
) -> None:
    seen: list[str] = []

    class ReturnsCoroutine:
        def on_event(self, event: PipelineEvent, /) -> object:
            async def later() -> None:
                seen.append(event.kind)

            return later()

    bus = EventDispatcher([ReturnsCoroutine()])  # type: ignore[list-item]  # a looser signature on purpose
    async with bus.running():
        bus.emit(events[0])
    assert seen == ["run_started"]


class StuckOnce:
    """Blocks forever on its first event; later ones take `later_s` on the clock."""

    def __init__(self, clock: FakeClock, later_s: float) -> None:
        self.clock, self.later_s, self.calls = clock, later_s, 0
        self.entered = anyio.Event()

    async def on_event(self, event: PipelineEvent, /) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            await anyio.sleep_forever()
        await self.clock.sleep(self.later_s)


async def _cancel_while_stuck(
    bus: EventDispatcher, stuck: StuckOnce, *events: PipelineEvent
) -> None:
    with anyio.fail_after(5), anyio.CancelScope() as scope:
        async with bus.running():
            for event in events:
                bus.emit(event)
            await stuck.entered.wait()
            scope.cancel()
            await anyio.sleep_forever()


async def test_queued_events_are_flushed_when_the_run_is_cancelled() -> None:
    clock = FakeClock()
    rec = AsyncRecorder()
    stuck = StuckOnce(clock, 0.0)
    bus = EventDispatcher([stuck, rec], clock=clock, grace_s=1.0)
    start = RunStarted(run_id=new_run_id(), at_s=0.0, pipeline_name="p")
    await _cancel_while_stuck(bus, stuck, start, start)
    # The stuck delivery was cancelled; everything still queued was delivered, shielded.
    assert rec.seen == [start, start]


async def test_the_final_flush_is_bounded_by_grace_s() -> None:
    clock = FakeClock()
    rec = AsyncRecorder()
    stuck = StuckOnce(clock, 5.0)
    bus = EventDispatcher([stuck, rec], clock=clock, grace_s=1.0)
    start = RunStarted(run_id=new_run_id(), at_s=0.0, pipeline_name="p")
    async with clock:  # the clock's driver moves virtual time to the grace deadline
        await _cancel_while_stuck(bus, stuck, start, start)
    assert rec.seen == [start]  # the second copy was queued behind a 5 s delivery: dropped


def test_run_ids_are_unique() -> None:
    assert len({new_run_id() for _ in range(100)}) == 100


def test_async_observers_on_trio(events: list[PipelineEvent]) -> None:
    rec = AsyncRecorder()

    async def main() -> None:
        bus = EventDispatcher([rec, Recorder()])
        async with bus.running():
            for event in events:
                bus.emit(event)

    anyio.run(main, backend="trio")
    assert rec.seen == events

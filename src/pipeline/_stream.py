"""Running a streaming group: a producer and the stages that consume its items while it runs.

A group (`pipeline._stream_graph`) starts when its root producer would start: the worker that
takes the root runs the whole group in one task group, one task per stage, joined by bounded
anyio memory object streams. Each stage still ends on its own (`RunState.finish`), so a list
consumer of the producer starts when the producer ends, as it would without streaming:

    source ──[buffer]──> map (cap tasks) ──[buffer]──> clean (cap tasks) ──[8]──> reduce
      │ yields item i      │ item i/map                │ item i/map/clean        │ AsyncIterator
      └── a list consumer of `source` starts when `source` ends (collected list)

Backpressure: a FAN_OUT consumer's workers take an item only when one of its
`max_concurrent_fan_out` slots is free, and a worker keeps its slot until its output has been
handed on downstream; the stream between holds at most `buffer` items; the producer is blocked
in `send` with one more. So a producer is never more than `buffer + max_concurrent_fan_out + 1`
items ahead of what its consumer has finished, and memory stays flat however many items pass.

Failures are fail-fast both ways: a stage that fails cancels the stages streaming from it and,
when it is critical, the rest of its group (its producer too). A producer none of whose
consumers is left (returned early, skipped, failed non-critical) and whose items nothing
collects is stopped and succeeds. A producer's attempts run inside its `uses=` resources and
the executor's middleware, like any attempt. Scheduling, fail-fast across the run and the run
records stay in `pipeline._run` / `pipeline.executor`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel

from pipeline._attempt import AttemptCall, failed, raise_if_not_a_failure
from pipeline._chain import build_chain
from pipeline._env import current_item, current_lineage, current_stage
from pipeline._flow import middleware_links, resources_link
from pipeline._invoke import condition_holds, invoke_one
from pipeline._outcome import AttemptRecord, Outcome
from pipeline._retry import will_retry, with_retry
from pipeline._stream_graph import ITERATOR_BUFFER, producer_body
from pipeline._text import exception_text
from pipeline.errors import StageTimeoutError
from pipeline.result import StageResult, StageStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from pipeline._attempt import Handler
    from pipeline._run import RunState
    from pipeline._stream_graph import StreamGroup, StreamNode
    from pipeline.cache._step import StageCache
    from pipeline.context import PipelineContext
    from pipeline.definition import StageDefinition

Item = tuple[int, str, Any]
"""What flows between streaming stages: (index in the producer, lineage id, value)."""

FIRST_ITEM_CHECKPOINTS: Final = 8
"""At most this many checkpoints let consumers take a producer's first item (see there)."""

CLOSE_GRACE_S: Final = 5.0
"""How long a cancelled producer's `finally` may run (shielded) when its generator is closed."""


@dataclass(slots=True, eq=False)
class _Live:
    """One stage of a group in one run."""

    node: StreamNode
    sdef: StageDefinition
    scope: anyio.CancelScope
    t0: float
    sends: list[MemoryObjectSendStream[Item]] = field(default_factory=list)
    receive: MemoryObjectReceiveStream[Item] | None = None
    collected: dict[int, Any] | None = None
    count: int = 0
    ended: bool = False
    cancel_reason: str | None = None
    skip_reason: str | None = None
    drain: anyio.CancelScope | None = None
    """Around making and handing on items; cancelled when no consumer is left."""
    drained: bool = False
    """No consumer is left and nothing collects its items (`_GroupRun._drain_if_unread`)."""


@dataclass(slots=True, eq=False)
class _MapTally:
    failures: dict[int, Outcome] = field(default_factory=dict)
    max_attempts: int = 0
    cached: int = 0
    received: int = 0


def buffer_of(sdef: StageDefinition, kind: str) -> float:
    """How many items may wait between a producer and this consumer."""
    if kind != "map":
        return ITERATOR_BUFFER
    if sdef.buffer is not None:
        return sdef.buffer
    return sdef.max_concurrent_fan_out or 0


async def run_stream_group(run: RunState, group: StreamGroup) -> None:
    """Run `group` (its root was just taken by the calling worker); every stage records itself.

    When the run stops (fail-fast elsewhere, a timeout, a cancel), the stages still running
    are recorded as cancelled with the run's reason on the way out.
    """
    env = run.env
    now = env.clock.now()
    live: dict[str, _Live] = {}
    for sid, node in group.nodes.items():
        sdef = run.stages[sid]
        if sid != group.root:
            run.in_flight.add(sid)
            # Started with its producer: the producer's end must not release it a second time.
            run.pending[sid] += 1
            run.ready_at[sid] = now
            if env.store is not None and (cache := env.cache_for(sdef)) is not None:
                run.caches[sid] = cache
        live[sid] = _Live(node, sdef, anyio.CancelScope(), now)
        if node.retain:
            live[sid].collected = {}
    for producer in live.values():
        for cid in producer.node.consumers:
            consumer = live[cid]
            send, receive = anyio.create_memory_object_stream[Item](
                buffer_of(consumer.sdef, consumer.node.kind)
            )
            producer.sends.append(send)
            consumer.receive = receive
    runner = _GroupRun(run, group, live)
    reporter, wave_of = env.reporter, run.plan.wave_of
    for sid in live:  # the producer first, then each consumer after its own producer
        reporter.stage_started(sid, wave_of[sid], None)
    try:
        async with anyio.create_task_group() as tg:
            # Consumers first: they are waiting for items by the time the producer has one.
            for lv in reversed(live.values()):
                tg.start_soon(runner.run_node, lv)
    except BaseException:
        if run.stop_kind is not None:  # the run stopped: what was still running is cancelled
            runner.end_unfinished(run.stop_reason or "cancelled", release=False)
            if not run.in_flight:
                run.idle.set()
        raise  # otherwise the caller was cancelled: the executor records every stage
    finally:
        for lv in live.values():
            for send in lv.sends:
                send.close()
            if lv.receive is not None:
                lv.receive.close()
    runner.end_unfinished("cancelled", release=True)


class _GroupRun:
    """The tasks of one group in one run, and how each stage's end affects the others."""

    __slots__ = ("ctx", "env", "group", "live", "run")

    def __init__(self, run: RunState, group: StreamGroup, live: dict[str, _Live]) -> None:
        self.run = run
        self.env = run.env
        self.ctx: PipelineContext[Any] = run.context
        self.group = group
        self.live = live

    # -- ends ------------------------------------------------------------------------------------
    async def run_node(self, lv: _Live) -> None:
        sid = lv.node.sid
        current_stage.set((self.env, sid))  # this task's own context: no reset needed
        outcome: Outcome | None = None
        with lv.scope:
            kind = lv.node.kind
            if kind in ("source", "pipe"):
                outcome = await self._source(lv)
            elif kind == "map":
                outcome = await self._map(lv)
            else:
                outcome = await self._iter(lv)
        if outcome is None:  # stopped by its own scope: a stage of the group asked for it
            if lv.skip_reason is not None:
                outcome = Outcome(StageResult.skipped(lv.skip_reason, stage_name=sid), 0)
            else:
                reason = lv.cancel_reason or "cancelled"
                outcome = Outcome(StageResult.cancelled(reason, stage_name=sid), 0)
        self.end(lv, outcome)

    def end(self, lv: _Live, outcome: Outcome, *, release: bool = True) -> None:
        """Record `lv`'s end; what it means for the stages streaming from it (and to it)."""
        if lv.ended:
            return
        lv.ended = True
        sid = lv.node.sid
        if lv.receive is not None:
            lv.receive.close()  # its producer stops sending to it (and is not held back by it)
        status = outcome.result.status
        doomed: list[_Live] = []
        if status is StageStatus.SUCCEEDED:
            for send in lv.sends:
                send.close()  # its consumers see the end of the stream
        elif status is StageStatus.SKIPPED:
            for cid in lv.node.consumers:
                consumer = self.live[cid]
                if consumer.node.kind == "map":
                    self._stop(consumer, skip=f"input stage {sid!r} was skipped")
            for send in lv.sends:
                send.close()  # an iterator consumer reads an empty stream
        else:
            below = set(self.group.descendants(sid))
            doomed = [other for oid, other in self.live.items() if oid in below]
            for other in doomed:
                self._stop(other, cancel=f"producer {sid!r} failed")
            if lv.sdef.critical:
                for other in self.live.values():
                    self._stop(other, cancel=f"consumer {sid!r} failed")
        if lv.node.producer is not None:
            self._drain_if_unread(self.live[lv.node.producer])
        run = self.run
        run.in_flight.discard(sid)
        run.finish(sid, outcome, lv.t0, self.env.clock.now())
        # Recorded now, in group order, rather than when each task gets to run: the same
        # reasons on either backend (the run's own reason when this failure stopped it).
        for other in doomed:
            reason = run.stop_reason if run.stop_kind is not None else other.cancel_reason
            cancelled = StageResult.cancelled(reason or "cancelled", stage_name=other.node.sid)
            self.end(other, Outcome(cancelled, 0), release=False)
        if release:
            run.launch_ready()
            if run.queue and not run.helper_pending:
                run.spawn_worker()  # this worker is busy with the group

    def _drain_if_unread(self, producer: _Live) -> None:
        """No consumer of `producer` is left and nothing collects its items: stop making them.

        Its generator is closed (its `finally` runs) and it ends as succeeded (output None).
        """
        if producer.ended or producer.collected is not None or producer.scope.cancel_called:
            return
        if all(self.live[cid].ended for cid in producer.node.consumers):
            producer.drained = True
            if producer.drain is not None:
                producer.drain.cancel()

    def _stop(self, lv: _Live, *, cancel: str | None = None, skip: str | None = None) -> None:
        if lv.ended or lv.scope.cancel_called:
            return
        lv.cancel_reason, lv.skip_reason = cancel, skip
        lv.scope.cancel()

    def end_unfinished(self, reason: str, *, release: bool) -> None:
        """Every stage of the group that has not ended is cancelled with `reason`."""
        for lv in self.live.values():
            if not lv.ended:
                cancelled = StageResult.cancelled(reason, stage_name=lv.node.sid)
                self.end(lv, Outcome(cancelled, 0), release=release)

    # -- handing items on ------------------------------------------------------------------------
    async def _emit(self, lv: _Live, index: int, lineage: str, value: Any) -> None:
        item = (index, lineage, value)
        gone: list[MemoryObjectSendStream[Item]] | None = None
        if not lv.sends:  # `send` is a checkpoint; without one a busy generator is uncancellable
            await anyio.lowlevel.checkpoint()
        for send in lv.sends:
            try:
                await send.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                gone = [] if gone is None else gone  # that consumer ended: stop feeding it
                gone.append(send)
                send.close()
        if gone is not None:
            lv.sends = [s for s in lv.sends if s not in gone]
        if lv.collected is not None:
            lv.collected[index] = value
        lv.count += 1

    async def _first_item_taken(self, lv: _Live) -> None:
        """Let the consumers start the first item before the generator makes the second.

        A source that never waits would otherwise fill the buffer before any consumer ran;
        a few checkpoints at most (the backend decides who runs next), for the first item only.
        """
        for _ in range(FIRST_ITEM_CHECKPOINTS):
            await anyio.lowlevel.checkpoint()
            if all(send.statistics().current_buffer_used == 0 for send in lv.sends):
                return

    def _output(self, lv: _Live) -> Any:
        collected = lv.collected
        if collected is None:
            return None
        return [collected[i] for i in sorted(collected)]

    async def _condition(self, lv: _Live, value: Any) -> Outcome | None:
        """None when the stage may run; else its skipped (or failed) outcome."""
        sdef, sid = lv.sdef, lv.node.sid
        if sdef.condition is None:
            return None
        try:
            holds = await condition_holds(sdef, self.ctx, value, self.env)
        except Exception as exc:  # noqa: BLE001  # a raising condition fails its stage, by contract
            return failed(sid, exc, 0, f"condition of stage {sid!r} raised {exception_text(exc)}")
        except BaseException as exc:  # noqa: BLE001  # re-raised unless it is a failure
            await raise_if_not_a_failure(exc)
            return failed(sid, exc, 0, f"condition of stage {sid!r} raised {exception_text(exc)}")
        if holds:
            return None
        return Outcome(StageResult.skipped("condition returned False", stage_name=sid), 0)

    # -- the three kinds of stage ----------------------------------------------------------------
    async def _source(self, lv: _Live) -> Outcome:
        """A producer (or a pipe, fed the stream of its input) and its attempts."""
        sdef, sid = lv.sdef, lv.node.sid
        pipe = lv.node.kind == "pipe"
        if pipe:
            assert lv.receive is not None  # a consumer is always fed
            value: Any = StreamIterator(lv.receive)
        else:
            value = self.run.input_of(sdef)
        skipped = await self._condition(lv, None if pipe else value)
        if skipped is not None:
            return skipped
        body = producer_body(sdef.stage)
        assert body is not None  # only producers are sources
        clock, reporter = self.env.clock, self.env.reporter
        # A pipe that ran has read items of its input stream: a second run would not see them.
        config = None if pipe else sdef.retry_config
        handler = self._producer_chain(lv, body)
        log: list[AttemptRecord] = []
        backoff = 0.0

        async def attempt(n: int) -> Outcome:
            t0 = clock.now()
            reporter.attempt_started(sid, None, n)
            outcome = await handler(AttemptCall(sid, None, n, value, self.ctx))
            if not outcome.result.success:
                if lv.count and config is not None and n < config.max_attempts:
                    outcome.retry_decision = False
                    note = (
                        f"{outcome.result.error} (not retried: producer {sid!r} had already "
                        f"yielded {lv.count} item(s), which its consumers may have used)"
                    )
                    outcome.result = outcome.result.model_copy(update={"error": note})
                again = will_retry(config, n, outcome)
                reporter.attempt_failed(sid, None, n, outcome, will_retry=again)
            error = None if outcome.result.success else outcome.result.error
            log.append(AttemptRecord(n, backoff, t0, clock.now(), error))
            return outcome

        def on_retry(next_attempt: int, delay_s: float) -> None:
            nonlocal backoff
            backoff = delay_s
            reporter.retry_scheduled(sid, None, next_attempt, delay_s)

        outcome = await with_retry(attempt, config, clock, on_retry, jitter_key=sid)
        outcome.attempt_log = log
        outcome.items = lv.count
        if outcome.result.success:
            meta: dict[str, Any] = {"streamed_items": lv.count}
            if lv.drained:
                meta["stopped_early"] = True
            outcome.result = StageResult.success(self._output(lv), stage_name=sid, metadata=meta)
        return outcome

    def _producer_chain(
        self, lv: _Live, body: Callable[[Any, PipelineContext[Any]], AsyncIterator[Any]]
    ) -> Handler:
        """One run of the generator inside the stage's `uses=` resources and middleware."""

        async def produce(call: AttemptCall) -> Outcome:
            return await self._produce(lv, body, call.input, call.attempt)

        sdef, env = lv.sdef, self.env
        handler: Handler = produce
        if sdef.uses:
            handler = resources_link(sdef, env, handler)
        if env.middleware:
            handler = middleware_links(sdef, env, handler)
        return handler

    async def _produce(
        self,
        lv: _Live,
        body: Callable[[Any, PipelineContext[Any]], AsyncIterator[Any]],
        value: Any,
        n: int,
    ) -> Outcome:
        """One run of the producer's generator, each item handed on as it comes."""
        sid, timeout_ms, clock = lv.node.sid, lv.sdef.timeout_ms, self.env.clock
        scope = (
            anyio.CancelScope() if timeout_ms is None else clock.deadline_scope(timeout_ms / 1000)
        )
        lv.drain = drain = anyio.CancelScope()
        if lv.drained:
            drain.cancel()
        t0 = clock.now()
        try:
            with scope:
                agen = body(value, self.ctx)
                try:
                    with drain:  # cancelled: no consumer is left, stop (a success)
                        async for item in agen:
                            index = lv.count
                            await self._emit(lv, index, f"{sid}:{index}", item)
                            if index == 0:
                                await self._first_item_taken(lv)
                finally:
                    # Cancelled while handing an item on, the generator is parked at its
                    # `yield`: close it now so its `finally` runs before the run ends.
                    with anyio.move_on_after(CLOSE_GRACE_S, shield=True):
                        await agen.aclose()  # type: ignore[attr-defined]  # an async generator
        except Exception as exc:  # noqa: BLE001  # a producer's exception is its failure
            return failed(sid, exc, n)
        except BaseException as exc:  # noqa: BLE001  # re-raised unless it is the stage's failure
            await raise_if_not_a_failure(exc)
            return failed(sid, exc, n)
        # Overrun without reaching a checkpoint, it was never interrupted: a timeout all the same.
        if timeout_ms is not None and (
            scope.cancelled_caught or clock.now() - t0 > timeout_ms / 1000
        ):
            late = StageTimeoutError(sid, n, timeout_ms, None)
            return failed(sid, late, n, str(late))
        return Outcome(StageResult.success(None, stage_name=sid), n)

    async def _map(self, lv: _Live) -> Outcome:
        sdef, sid = lv.sdef, lv.node.sid
        skipped = await self._condition(lv, None)
        if skipped is not None:
            return skipped
        chain = build_chain(sdef, self.env)
        cache = self.run.caches.get(sid) if self.run.caches else None
        tally = _MapTally()
        lv.drain = drain = anyio.CancelScope()
        if lv.drained:
            drain.cancel()
        with drain:  # cancelled: no consumer is left, stop (a success)
            await self._map_items(lv, tally, chain, cache)
        if tally.failures:
            failed_items = sorted(tally.failures)
            first = tally.failures[failed_items[0]]
            error = (
                f"FAN_OUT item(s) {failed_items} of {tally.received} received so far failed: "
                f"{first.result.error}"
            )
            meta: dict[str, Any] = {"failed_items": failed_items}
            result = StageResult.failure(error, stage_name=sid, metadata=meta)
            return Outcome(result, tally.max_attempts, first.exception, lv.count)
        metadata: dict[str, Any] = {"fan_out_items": lv.count, "streamed_items": lv.count}
        if cache is not None:
            metadata["cached_items"] = tally.cached
        if lv.drained:
            metadata["stopped_early"] = True
        result = StageResult.success(self._output(lv), stage_name=sid, metadata=metadata)
        cached = lv.count > 0 and tally.cached == lv.count
        return Outcome(result, tally.max_attempts, None, lv.count, cached=cached)

    async def _map_items(
        self, lv: _Live, tally: _MapTally, chain: Handler, cache: StageCache | None
    ) -> None:
        """Each item through the stage as it arrives, at most `max_concurrent_fan_out` at once."""
        receive = lv.receive
        assert receive is not None  # a consumer is always fed
        cap = lv.sdef.max_concurrent_fan_out
        async with anyio.create_task_group() as tg:

            async def worker() -> None:
                async for index, lineage, value in receive:
                    tally.received += 1
                    if not await self._item(lv, tg, tally, chain, cache, index, lineage, value):
                        return

            if cap:
                for _ in range(cap):  # each takes an item only when it is free: backpressure
                    tg.start_soon(worker)
            else:  # unlimited: a task per item as it arrives
                async for index, lineage, value in receive:
                    tally.received += 1
                    tg.start_soon(self._item, lv, tg, tally, chain, cache, index, lineage, value)

    async def _item(
        self,
        lv: _Live,
        tg: TaskGroup,
        tally: _MapTally,
        chain: Handler,
        cache: StageCache | None,
        index: int,
        lineage: str,
        value: Any,
    ) -> bool:
        """One item through the stage and on downstream; False when it failed."""
        sdef = lv.sdef
        mine = f"{lineage}/{sdef.id}"
        current_item.set(index)
        current_lineage.set(mine)
        try:
            outcome = await invoke_one(sdef, chain, value, self.ctx, index, self.env, cache)
            self.env.reporter.item_finished(sdef.id, index, outcome)
        finally:
            current_lineage.set(None)
            current_item.set(None)
        tally.max_attempts = max(tally.max_attempts, outcome.attempts)
        tally.cached += outcome.cached
        if not outcome.result.success:
            tally.failures[index] = outcome
            tg.cancel_scope.cancel()
            return False
        await self._emit(lv, index, mine, outcome.result.output)
        return True

    async def _iter(self, lv: _Live) -> Outcome:
        sdef, sid = lv.sdef, lv.node.sid
        receive = lv.receive
        assert receive is not None  # a consumer is always fed
        skipped = await self._condition(lv, None)
        if skipped is not None:
            return skipped
        chain = build_chain(sdef, self.env)
        clock = self.env.clock
        t0 = clock.now()
        try:
            outcome = await chain(AttemptCall(sid, None, 1, StreamIterator(receive), self.ctx))
        finally:
            receive.close()  # returned early: its producer is not held back by it
        error = None if outcome.result.success else outcome.result.error
        outcome.attempt_log = [AttemptRecord(1, 0.0, t0, clock.now(), error)]
        return outcome


class StreamIterator:
    """The `AsyncIterator` a stage annotated to receive one gets: the items, as they come."""

    __slots__ = ("_receive",)

    def __init__(self, receive: MemoryObjectReceiveStream[Item]) -> None:
        self._receive = receive

    def __aiter__(self) -> StreamIterator:
        return self

    async def __anext__(self) -> Any:
        try:
            return (await self._receive.receive())[2]
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        return "<stream of items>"

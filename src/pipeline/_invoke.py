"""One stage invocation as small composable steps: condition, fan-out, cache, retry, timeout, execute.

Each step is one function that knows nothing of the others; scheduling, fail-fast and run
bookkeeping live in `pipeline.executor`, retry policy mechanics in `pipeline._retry`.
"""

from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio

from pipeline._cancel import is_cancellation, must_propagate, raise_unless_stray
from pipeline._model import copy_with
from pipeline._retry import with_retry
from pipeline._text import exception_text
from pipeline.definition import ExecutionPattern
from pipeline.errors import StageOutputError, StageTimeoutError
from pipeline.result import UNKNOWN_STAGE, StageResult, StageStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pipeline._reporter import RunReporter
    from pipeline.cache._step import StageCache
    from pipeline.clock import Clock
    from pipeline.context import PipelineContext
    from pipeline.definition import StageDefinition


Attempt = tuple[int, float, float, float, str | None]
"""(attempt number, backoff before it in s, start, end, error) of one stage-level attempt."""


@dataclass(slots=True)
class Outcome:
    """What invoking a stage (or one fan-out item) produced, before it becomes a run record."""

    result: StageResult[Any]
    attempts: int = 1
    exception: BaseException | None = None
    items: int | None = None
    cached: bool = False
    attempt_log: list[Attempt] | None = None

    @property
    def exception_type(self) -> str | None:
        """The class name of the exception behind a failure, if any."""
        return None if self.exception is None else type(self.exception).__name__

    def formatted_traceback(self) -> str | None:
        """The exception's traceback as text, if any."""
        exc = self.exception
        if exc is None or exc.__traceback__ is None:
            return None
        return "".join(traceback.format_exception(exc))


def _failed(sid: str, exc: BaseException, attempt: int, message: str | None = None) -> Outcome:
    text = message or exception_text(exc)
    return Outcome(StageResult.failure(text, stage_name=sid), attempt, exc)


async def _raise_if_not_a_failure(exc: BaseException) -> None:
    """Re-raise interrupts and real cancellation; anything else a stage raised is its failure.

    That includes a stray `CancelledError`, another backend's cancellation class (asyncio's on
    trio) and a user's own `BaseException` subclass: only `KeyboardInterrupt`, `SystemExit` and
    the run's (or caller's) cancellation ever leave `execute`.
    """
    if must_propagate(exc):
        raise exc
    if is_cancellation(exc):
        await raise_unless_stray(exc)


async def attempt_once(
    sdef: StageDefinition,
    value: Any,
    context: PipelineContext[Any],
    clock: Clock,
    attempt: int,
    item: int | None = None,
) -> Outcome:
    """Call `stage.execute` once, bounded by `timeout_ms`; errors become failed outcomes.

    Real cancellation, `KeyboardInterrupt` and `SystemExit` propagate; anything else raised
    (including a stray `CancelledError`) is a failed outcome.
    """
    sid = sdef.id
    try:
        if sdef.timeout_ms is None:
            returned = await sdef.stage.execute(value, context)
        else:
            returned = None
            limit_s = sdef.timeout_ms / 1000
            t0 = clock.now()
            with clock.deadline_scope(limit_s) as scope:
                returned = await sdef.stage.execute(value, context)
            # A stage that overran without reaching a checkpoint was never interrupted: its
            # late result is a timeout all the same (and so never cached).
            if scope.cancelled_caught or clock.now() - t0 > limit_s:
                exc = StageTimeoutError(sid, attempt, sdef.timeout_ms, item)
                return _failed(sid, exc, attempt, str(exc))
    except Exception as exc:  # noqa: BLE001  # a stage's exception is its failure, by contract
        return _failed(sid, exc, attempt)
    except BaseException as exc:  # noqa: BLE001  # re-raised unless it is the stage's failure
        await _raise_if_not_a_failure(exc)
        return _failed(sid, exc, attempt)
    if not isinstance(returned, StageResult):
        out_exc = StageOutputError(sid, attempt, returned)
        return _failed(sid, out_exc, attempt, str(out_exc))
    if item is None and returned.stage_name == UNKNOWN_STAGE:
        returned = copy_with(
            returned, stage_name=sid
        )  # an item's result is only read for its output
    return Outcome(returned, attempt)


async def reported_attempt(
    sdef: StageDefinition,
    value: Any,
    context: PipelineContext[Any],
    clock: Clock,
    attempt: int,
    item: int | None,
    reporter: RunReporter,
) -> Outcome:
    """`attempt_once` between its `AttemptStarted` and (on failure) `AttemptFailed` events."""
    reporter.attempt_started(sdef.id, item, attempt)
    outcome = await attempt_once(sdef, value, context, clock, attempt, item)
    result = outcome.result
    if not result.success:
        config = sdef.retry_config
        will_retry = (
            config is not None
            and result.status is StageStatus.FAILED
            and config.retries_after(attempt, result.error, outcome.exception_type)
        )
        reporter.attempt_failed(sdef.id, item, attempt, outcome, will_retry=will_retry)
    return outcome


CACHE_WRITE_GRACE_S: Final = 10.0
"""How long a shielded cache write may outlive the cancellation of its stage."""


async def through_cache(
    cache: StageCache,
    value: Any,
    item: int | None,
    compute: Callable[[], Awaitable[Outcome]],
    reporter: RunReporter | None = None,
) -> Outcome:
    """Serve `value` from the cache, or `compute()` it and store the output if it succeeded.

    A hit makes no attempt (`attempts == 0`). The write is shielded: an output that was
    computed is kept even when a sibling's failure is cancelling this stage right now.
    """
    hit, output, key = await cache.lookup(value, item)
    if hit:
        if reporter is not None:
            reporter.cache_hit(cache.stage_id, item, None if key is None else key.digest)
        result = StageResult.success(output, stage_name=cache.stage_id, metadata={"cached": True})
        return Outcome(result, attempts=0, cached=True)
    outcome = await compute()
    if key is not None and outcome.result.status is StageStatus.SUCCEEDED:
        with anyio.move_on_after(CACHE_WRITE_GRACE_S, shield=True):
            await cache.store_output(key, outcome.result.output, item)
    return outcome


async def invoke_once(
    sdef: StageDefinition,
    value: Any,
    context: PipelineContext[Any],
    clock: Clock,
    item: int | None,
    cache: StageCache | None = None,
    reporter: RunReporter | None = None,
) -> Outcome:
    """One item (or the whole input): the cache, then the retry policy around each attempt.

    For the stage as a whole (`item is None`) every attempt's timing is logged on the outcome.
    """
    sid = sdef.id
    config = sdef.retry_config
    log: list[Attempt] | None = [] if item is None else None
    backoff = 0.0

    async def attempt(n: int) -> Outcome:
        nonlocal backoff
        t0 = clock.now()
        if reporter is None:
            outcome = await attempt_once(sdef, value, context, clock, n, item)
        else:
            outcome = await reported_attempt(sdef, value, context, clock, n, item, reporter)
        if log is not None:
            error = None if outcome.result.success else outcome.result.error
            log.append((n, backoff, t0, clock.now(), error))
        return outcome

    def on_retry(next_attempt: int, delay_s: float) -> None:
        nonlocal backoff
        backoff = delay_s
        if reporter is not None:
            reporter.retry_scheduled(sid, item, next_attempt, delay_s)

    async def compute() -> Outcome:
        outcome = await with_retry(attempt, config, clock, on_retry)
        outcome.attempt_log = log
        return outcome

    if cache is None:
        return await compute()
    return await through_cache(cache, value, item, compute, reporter)


async def fan_out(
    sdef: StageDefinition,
    items: Any,
    context: PipelineContext[Any],
    clock: Clock,
    cache: StageCache | None = None,
    reporter: RunReporter | None = None,
) -> Outcome:
    """Run the stage once per item, at most `max_concurrent_fan_out` at a time.

    Workers pull indices from one shared iterator, so memory holds `cap` tasks, not one per
    item. The first failed item cancels the others; the output keeps the input order.
    """
    sid = sdef.id
    if not isinstance(items, list | tuple):
        error = f"FAN_OUT requires list input, got {type(items).__name__}"
        return Outcome(StageResult.failure(error, stage_name=sid), attempts=0)
    count = len(items)
    outputs: list[Any] = [None] * count
    failures: dict[int, Outcome] = {}
    max_attempts = 0
    cached = 0
    indices = iter(range(count))

    async with anyio.create_task_group() as tg:

        async def worker() -> None:
            nonlocal max_attempts, cached
            for i in indices:
                outcome = await invoke_once(sdef, items[i], context, clock, i, cache, reporter)
                if reporter is not None:
                    reporter.item_finished(sid, i, outcome)
                max_attempts = max(max_attempts, outcome.attempts)
                cached += outcome.cached
                if not outcome.result.success:
                    failures[i] = outcome
                    tg.cancel_scope.cancel()
                    return
                outputs[i] = outcome.result.output

        cap = sdef.max_concurrent_fan_out or count
        for _ in range(min(cap, count)):
            tg.start_soon(worker)

    if failures:
        failed = sorted(failures)
        first = failures[failed[0]]
        error = f"FAN_OUT item(s) {failed} of {count} failed: {first.result.error}"
        result = StageResult.failure(error, stage_name=sid, metadata={"failed_items": failed})
        return Outcome(result, max_attempts, first.exception, count)
    metadata: dict[str, Any] = {"fan_out_items": count}
    if cache is not None:
        metadata["cached_items"] = cached
    result = StageResult.success(outputs, stage_name=sid, metadata=metadata)
    return Outcome(result, max_attempts, None, count, cached=count > 0 and cached == count)


async def condition_holds(sdef: StageDefinition, context: PipelineContext[Any]) -> bool:
    """Evaluate the stage's condition (sync or async); True when there is none."""
    if sdef.condition is None:
        return True
    verdict = sdef.condition(context)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


async def invoke_stage(
    sdef: StageDefinition,
    value: Any,
    context: PipelineContext[Any],
    clock: Clock,
    cache: StageCache | None = None,
    reporter: RunReporter | None = None,
) -> Outcome:
    """Condition, then fan-out or a single invocation (each item or the whole input cached)."""
    sid = sdef.id
    if sdef.condition is not None:
        try:
            run = await condition_holds(sdef, context)
        except Exception as exc:  # noqa: BLE001  # a raising condition fails its stage, by contract
            message = f"condition of stage {sid!r} raised {exception_text(exc)}"
            return _failed(sid, exc, 0, message)
        except BaseException as exc:  # noqa: BLE001  # re-raised unless it is a failure
            await _raise_if_not_a_failure(exc)
            message = f"condition of stage {sid!r} raised {exception_text(exc)}"
            return _failed(sid, exc, 0, message)
        if not run:
            skipped = StageResult.skipped("condition returned False", stage_name=sid)
            return Outcome(skipped, attempts=0)
    if sdef.pattern is ExecutionPattern.FAN_OUT:
        return await fan_out(sdef, value, context, clock, cache, reporter)
    if cache is None and (sdef.retry_config is None or sdef.retry_config.max_attempts <= 1):
        # The common case, kept cheap: one attempt, nothing to look up. The stage's own start
        # and end times are this attempt's.
        if reporter is None:
            return await attempt_once(sdef, value, context, clock, 1)
        return await reported_attempt(sdef, value, context, clock, 1, None, reporter)
    return await invoke_once(sdef, value, context, clock, None, cache, reporter)

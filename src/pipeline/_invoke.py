"""One stage invocation: condition, then fan-out or one input, each through cache and retry.

    invoke_stage: condition -> fan_out (per item) | one input
    one input / one item: cache lookup -> retry loop -> attempt chain -> cache write

The attempt chain (events, timeout, runner, `execute`) is `pipeline._attempt`; the retry loop's
mechanics are `pipeline._retry`; scheduling, fail-fast and run records are `pipeline._run` and
`pipeline.executor`.
"""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import anyio

from pipeline._attempt import AttemptCall, failed, raise_if_not_a_failure
from pipeline._chain import build_chain
from pipeline._env import CONDITION_ARGS_ATTR, current_item
from pipeline._outcome import AttemptRecord, Outcome
from pipeline._retry import with_retry
from pipeline._text import exception_text
from pipeline.definition import ExecutionPattern
from pipeline.result import StageResult, StageStatus
from pipeline.runners._base import REMOTE_TRACEBACK_ATTR
from pipeline.runners._batch import direct_batches, start_batching

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pipeline._attempt import Handler
    from pipeline._env import RunEnv
    from pipeline.cache._step import StageCache
    from pipeline.context import PipelineContext
    from pipeline.definition import StageDefinition


CACHE_WRITE_GRACE_S: Final = 10.0
"""How long a shielded cache write may outlive the cancellation of its stage."""


async def through_cache(
    cache: StageCache,
    value: Any,
    item: int | None,
    compute: Callable[[], Awaitable[Outcome]],
    env: RunEnv,
) -> Outcome:
    """Serve `value` from the cache, or `compute()` it and store the output if it succeeded.

    A hit makes no attempt (`attempts == 0`). The write is shielded: an output that was
    computed is kept even when a sibling's failure is cancelling this stage right now.
    """
    hit, output, key = await cache.lookup(value, item)
    if hit:
        env.reporter.cache_hit(cache.stage_id, item, None if key is None else key.digest)
        result = StageResult.success(output, stage_name=cache.stage_id, metadata={"cached": True})
        return Outcome(result, attempts=0, cached=True)
    outcome = await compute()
    if key is not None and outcome.result.status is StageStatus.SUCCEEDED:
        with anyio.move_on_after(CACHE_WRITE_GRACE_S, shield=True):
            await cache.store_output(key, outcome.result.output, item)
    return outcome


async def attempts(
    sdef: StageDefinition,
    chain: Handler,
    value: Any,
    context: PipelineContext[Any],
    item: int | None,
    env: RunEnv,
) -> Outcome:
    """Every attempt of one input (or item) down `chain`, retried per the stage's policy.

    For the stage as a whole (`item is None`) each attempt's timing is logged on the outcome.
    """
    sid, clock = sdef.id, env.clock
    config = sdef.retry_config
    if config is None or config.max_attempts <= 1:
        t0 = clock.now()
        outcome = await chain(AttemptCall(sid, item, 1, value, context))
        if item is None:
            outcome.attempt_log = [_record(outcome, 1, 0.0, t0, clock.now())]
        return outcome

    log: list[AttemptRecord] | None = [] if item is None else None
    backoff = 0.0

    async def attempt(n: int) -> Outcome:
        t0 = clock.now()
        outcome = await chain(AttemptCall(sid, item, n, value, context))
        if log is not None:
            log.append(_record(outcome, n, backoff, t0, clock.now()))
        return outcome

    def on_retry(next_attempt: int, delay_s: float) -> None:
        nonlocal backoff
        backoff = delay_s
        env.reporter.retry_scheduled(sid, item, next_attempt, delay_s)

    key = sid if item is None else f"{sid}[{item}]"
    outcome = await with_retry(attempt, config, clock, on_retry, jitter_key=key)
    outcome.attempt_log = log
    return outcome


def _record(outcome: Outcome, n: int, backoff: float, t0: float, t1: float) -> AttemptRecord:
    """Attempt `n`, called at `t0` and back at `t1`; its resource wait is not its duration."""
    wait = outcome.resource_wait_s
    error = None if outcome.result.success else outcome.result.error
    stopped = outcome.remote_stopped
    if stopped is None:  # local work: no remote facts
        return AttemptRecord(n, backoff, t0 + wait, t1, error, wait)
    exc = outcome.exception
    remote_tb = None if exc is None else getattr(exc, REMOTE_TRACEBACK_ATTR, None)
    return AttemptRecord(n, backoff, t0 + wait, t1, error, wait, stopped, remote_tb)


async def invoke_one(
    sdef: StageDefinition,
    chain: Handler,
    value: Any,
    context: PipelineContext[Any],
    item: int | None,
    env: RunEnv,
    cache: StageCache | None,
) -> Outcome:
    """One input (or item): the cache around every attempt of it."""
    if cache is None:
        return await attempts(sdef, chain, value, context, item, env)

    def compute() -> Awaitable[Outcome]:
        return attempts(sdef, chain, value, context, item, env)

    return await through_cache(cache, value, item, compute, env)


async def fan_out(
    sdef: StageDefinition,
    chain: Handler,
    items: Any,
    context: PipelineContext[Any],
    env: RunEnv,
    cache: StageCache | None,
) -> Outcome:
    """Run the stage once per item, at most `max_concurrent_fan_out` at a time.

    Workers pull indices from one shared iterator, so memory holds `cap` tasks, not one per
    item. The first failed item cancels the others; the output keeps the input order.
    """
    sid, reporter = sdef.id, env.reporter
    if not isinstance(items, list | tuple):
        error = f"FAN_OUT requires list input, got {type(items).__name__}"
        return Outcome(StageResult.failure(error, stage_name=sid), attempts=0)
    if sdef.batch_size is not None and (direct := direct_batches(sdef, env, cache)) is not None:
        return await direct(items, context)  # batches with nothing per item: no item tasks
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
                current_item.set(i)  # this worker task's own context: no reset needed
                outcome = await invoke_one(sdef, chain, items[i], context, i, env, cache)
                reporter.item_finished(sid, i, outcome)
                max_attempts = max(max_attempts, outcome.attempts)
                cached += outcome.cached
                if not outcome.result.success:
                    failures[i] = outcome
                    tg.cancel_scope.cancel()
                    return
                outputs[i] = outcome.result.output

        cap = sdef.max_concurrent_fan_out or count
        if sdef.batch_size is not None and sdef.batch_size > 1:  # runner calls of n items
            cap = start_batching(sdef, env, tg, context, cap)
        for _ in range(min(cap, count)):
            tg.start_soon(worker)

    if failures:
        failed_items = sorted(failures)
        first = failures[failed_items[0]]
        error = f"FAN_OUT item(s) {failed_items} of {count} failed: {first.result.error}"
        result = StageResult.failure(error, stage_name=sid, metadata={"failed_items": failed_items})
        return Outcome(result, max_attempts, first.exception, count)
    metadata: dict[str, Any] = {"fan_out_items": count}
    if cache is not None:
        metadata["cached_items"] = cached
    result = StageResult.success(outputs, stage_name=sid, metadata=metadata)
    return Outcome(result, max_attempts, None, count, cached=count > 0 and cached == count)


async def condition_holds(
    sdef: StageDefinition,
    context: PipelineContext[Any],
    value: Any = None,
    env: RunEnv | None = None,
) -> bool:
    """Evaluate the stage's condition (sync or async); True when there is none."""
    condition: Any = sdef.condition
    if condition is None:
        return True
    if getattr(condition, CONDITION_ARGS_ATTR, False) is True:
        # A read-only view, not a copy: it holds only stages that succeeded (finished) already.
        outputs = MappingProxyType(env.outputs if env is not None else {})
        verdict = condition(context, value, outputs)
    else:
        verdict = condition(context)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


async def invoke_stage(
    sdef: StageDefinition,
    value: Any,
    context: PipelineContext[Any],
    env: RunEnv,
    cache: StageCache | None = None,
) -> Outcome:
    """Condition, then fan-out or a single invocation (each item or the whole input cached)."""
    sid = sdef.id
    if sdef.condition is not None:
        try:
            run = await condition_holds(sdef, context, value, env)
        except Exception as exc:  # noqa: BLE001  # a raising condition fails its stage, by contract
            message = f"condition of stage {sid!r} raised {exception_text(exc)}"
            return failed(sid, exc, 0, message)
        except BaseException as exc:  # noqa: BLE001  # re-raised unless it is a failure
            await raise_if_not_a_failure(exc)
            message = f"condition of stage {sid!r} raised {exception_text(exc)}"
            return failed(sid, exc, 0, message)
        if not run:
            skipped = StageResult.skipped("condition returned False", stage_name=sid)
            return Outcome(skipped, attempts=0)
    chain = build_chain(sdef, env)
    if sdef.pattern is ExecutionPattern.FAN_OUT:
        return await fan_out(sdef, chain, value, context, env, cache)
    if cache is None and (sdef.retry_config is None or sdef.retry_config.max_attempts <= 1):
        # What `attempts` does for one try, inlined: two coroutine frames fewer per stage
        # (about 1 us of the ~10 us a no-op stage costs; benchmarks/overhead.py W1/W2).
        clock = env.clock
        t0 = clock.now()
        outcome = await chain(AttemptCall(sid, None, 1, value, context))
        outcome.attempt_log = [_record(outcome, 1, 0.0, t0, clock.now())]
        return outcome
    return await invoke_one(sdef, chain, value, context, None, env, cache)

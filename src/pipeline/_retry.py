"""Retry of one invocation, driven by a tenacity `AsyncRetrying` built from a `RetryConfig`.

The only module that imports tenacity. What one attempt does lives in `pipeline._invoke`.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from pipeline.result import StageStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tenacity import RetryCallState

    from pipeline._outcome import Outcome
    from pipeline.clock import Clock
    from pipeline.definition import RetryConfig


async def with_retry(
    attempt: Callable[[int], Awaitable[Outcome]],
    config: RetryConfig | None,
    clock: Clock,
    on_retry: Callable[[int, float], None] | None = None,
    *,
    jitter_key: str = "",
) -> Outcome:
    """Call `attempt(n)` for n = 1, 2, ... until it succeeds, is not retryable or runs out.

    Waits go through `clock.sleep`; `on_retry(next_attempt, delay_s)` is called before each.
    With `config.jitter_seed`, the jitter of this loop comes from a source seeded with the
    seed and `jitter_key` (the stage and item): repeatable run after run, different per item.
    The returned outcome's `attempts` is the number of calls; when more than one call was made
    and the last failed, its error reads `Failed after N attempts. Last error: ...`.
    """
    if config is None or config.max_attempts <= 1:
        return await attempt(1)
    # The first attempt runs before tenacity is involved: most succeed (or fail for good), and
    # building and driving an `AsyncRetrying` costs ~20 us an attempt (tenacity inspects its
    # callables on every call). When it must be retried, tenacity starts from that outcome
    # exactly as if it had made the call itself.
    first: Outcome | None = await attempt(1)
    assert first is not None
    if not retryable(config, first):
        first.attempts = 1
        return first

    # Imported here so `import pipeline` stays light and pipelines without retries never pay.
    from tenacity import (
        AsyncRetrying,
        retry_if_result,
        stop_after_attempt,
    )

    calls = 1

    async def call() -> Outcome:
        nonlocal calls, first
        if first is not None:  # tenacity's first call: the attempt made above
            made, first = first, None
            return made
        calls += 1
        return await attempt(calls)

    def should_retry(outcome: Outcome) -> bool:
        return retryable(config, outcome)

    rng = (
        None if config.jitter_seed is None else random.Random(f"{config.jitter_seed}/{jitter_key}")
    )

    def wait(state: RetryCallState) -> float:
        assert state.outcome is not None  # tenacity waits only after an attempt
        outcome: Outcome = state.outcome.result()
        return config.wait_s(state.attempt_number, retry_after_s(outcome), rng=rng)

    def give_up(state: RetryCallState) -> Any:
        assert state.outcome is not None  # tenacity sets it before stopping
        return state.outcome.result()

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.next_action is not None:
            on_retry(state.attempt_number + 1, state.next_action.sleep)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(config.max_attempts),
        wait=wait,
        retry=retry_if_result(should_retry),
        sleep=clock.sleep,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )
    outcome: Outcome = await retrying(call)
    outcome.attempts = calls
    if calls > 1 and not outcome.result.success:
        outcome.result = outcome.result.model_copy(
            update={"error": f"Failed after {calls} attempts. Last error: {outcome.result.error}"}
        )
    return outcome


def retryable(config: RetryConfig, outcome: Outcome) -> bool:
    """Whether the failed `outcome` may be retried under `config` (attempts aside).

    A stage that *returned* cancelled said it should not go on: that is never retried.
    """
    decided = outcome.retry_decision
    if decided is not None:  # asked once per failure: a stateful retry_if sees each one once
        return decided
    result = outcome.result
    decided = result.status is StageStatus.FAILED and config.accepts(
        result.error, outcome.exception, result
    )
    outcome.retry_decision = decided
    return decided


def will_retry(config: RetryConfig | None, attempt: int, outcome: Outcome) -> bool:
    """Whether failed attempt number `attempt` is followed by another."""
    return config is not None and attempt < config.max_attempts and retryable(config, outcome)


def retry_after_s(outcome: Outcome) -> float | None:
    """A Retry-After the failure carries: `exc.retry_after_s` or `metadata["retry_after_s"]`."""
    try:  # a user's exception may compute it in a property that raises: then there is none
        value = getattr(outcome.exception, "retry_after_s", None)
    except Exception:  # noqa: BLE001  # a broken Retry-After never fails the run
        value = None
    if value is None:
        value = outcome.result.metadata.get("retry_after_s")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None

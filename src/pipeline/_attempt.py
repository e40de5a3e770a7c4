"""One attempt of a stage (or of one fan-out item) as a chain of links built once per stage.

An attempt is one value, `AttemptCall`, passed down a chain:

    events -> middleware -> resources -> timeout -> runner -> stage.execute

Each link is a function `(call) -> Outcome` wrapping the next; a link the stage does not need
is not in its chain at all, so the common case (no observers, no timeout, inline) is just the
innermost link: the cheap path is the same chain with no links, not a copy of it. The
innermost link turns whatever the stage did (returned, raised, returned the wrong type) into an
`Outcome`; only real cancellation and interrupts leave the chain. Retry (`pipeline._retry`),
cache and fan-out (`pipeline._invoke`) sit around the chain, never inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

from pipeline._cancel import is_cancellation, must_propagate, raise_unless_stray
from pipeline._model import copy_with
from pipeline._outcome import Outcome
from pipeline._text import exception_text
from pipeline.errors import StageOutputError, StageTimeoutError
from pipeline.result import UNKNOWN_STAGE, StageResult, StageStatus
from pipeline.runners import INLINE, default_runner_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pipeline._env import RunEnv
    from pipeline.context import PipelineContext
    from pipeline.definition import StageDefinition

    Handler = Callable[["AttemptCall"], Awaitable[Outcome]]
    """One link of the chain, with everything inside it bound: `call -> Outcome`."""


@final
@dataclass(slots=True)
class AttemptCall:
    """One attempt: which stage, which fan-out item (None for the whole input), which try."""

    stage_id: str
    item: int | None
    attempt: int
    input: Any
    context: PipelineContext[Any]


def failed(sid: str, exc: BaseException, attempt: int, message: str | None = None) -> Outcome:
    """A failed outcome for `exc` (text `"ExcType: message"` unless `message` is given)."""
    text = message or exception_text(exc)
    return Outcome(StageResult.failure(text, stage_name=sid), attempt, exc)


async def raise_if_not_a_failure(exc: BaseException) -> None:
    """Re-raise interrupts and real cancellation; anything else a stage raised is its failure.

    That includes a stray `CancelledError`, another backend's cancellation class (asyncio's on
    trio) and a user's own `BaseException` subclass: only `KeyboardInterrupt`, `SystemExit` and
    the run's (or caller's) cancellation ever leave `execute`.
    """
    if must_propagate(exc):
        raise exc
    if is_cancellation(exc):
        await raise_unless_stray(exc)


def build_chain(sdef: StageDefinition, env: RunEnv) -> Handler:
    """The attempt chain of `sdef` in the run `env` (outermost link first in the docstring).

    An unobserved run's chain depends only on the stage and the executor's clock and runners,
    so it is kept on the definition and reused by the next run of the same executor: building
    it costs about 0.3 us a stage (benchmarks/overhead.py W1/W2).
    """
    observed = env.reporter.enabled
    if not observed:
        kept = sdef.__dict__.get(_KEPT)
        if kept is not None and kept[0] is env.runners and kept[1] is env.clock:
            chain: Handler = kept[2]
            return chain
    handler = _execute_link(sdef, env)
    if sdef.timeout_ms is not None:
        handler = _timeout_link(sdef, env, handler)
    if observed:
        return _events_link(sdef, env, handler)
    sdef.__dict__[_KEPT] = (env.runners, env.clock, handler)  # not a field: eq/hash ignore it
    return handler


_KEPT: Final = "_pipeline_attempt_chain"
"""Where `build_chain` keeps an unobserved chain on its `StageDefinition` (see there)."""


def _execute_link(sdef: StageDefinition, env: RunEnv) -> Handler:
    """Innermost: the runner calls the stage; what it did becomes an `Outcome`."""
    sid, stage = sdef.id, sdef.stage
    name = sdef.runner if sdef.runner is not None else default_runner_name(stage)
    runner = env.runners[name]
    # Inline is the common case: call `execute` directly rather than through the runner's
    # extra coroutine frame (about 0.4 us per attempt).
    run_inline = name == INLINE

    async def execute(call: AttemptCall) -> Outcome:
        returned: object
        try:
            if run_inline:
                returned = await stage.execute(call.input, call.context)
            else:
                returned = await runner.run(stage, call.input, call.context)
        except Exception as exc:  # noqa: BLE001  # a stage's exception is its failure, by contract
            return failed(sid, exc, call.attempt)
        except BaseException as exc:  # noqa: BLE001  # re-raised unless it is the stage's failure
            await raise_if_not_a_failure(exc)
            return failed(sid, exc, call.attempt)
        if not isinstance(returned, StageResult):
            out_exc = StageOutputError(sid, call.attempt, returned)
            return failed(sid, out_exc, call.attempt, str(out_exc))
        if call.item is None and returned.stage_name == UNKNOWN_STAGE:
            returned = copy_with(returned, stage_name=sid)  # an item's is only read for its output
        return Outcome(returned, call.attempt)

    return execute


def _timeout_link(sdef: StageDefinition, env: RunEnv, inner: Handler) -> Handler:
    """Bounds the attempt by `timeout_ms` on the run's clock."""
    sid, clock = sdef.id, env.clock
    timeout_ms = sdef.timeout_ms
    assert timeout_ms is not None  # only linked when set
    limit_s = timeout_ms / 1000

    async def with_timeout(call: AttemptCall) -> Outcome:
        outcome = None
        t0 = clock.now()
        with clock.deadline_scope(limit_s) as scope:
            outcome = await inner(call)
        # A stage that overran without reaching a checkpoint was never interrupted: its late
        # result is a timeout all the same (and so never cached).
        if outcome is None or scope.cancelled_caught or clock.now() - t0 > limit_s:
            exc = StageTimeoutError(sid, call.attempt, timeout_ms, call.item)
            return failed(sid, exc, call.attempt, str(exc))
        return outcome

    return with_timeout


def _events_link(sdef: StageDefinition, env: RunEnv, inner: Handler) -> Handler:
    """Outermost: `AttemptStarted` before, `AttemptFailed` (with `will_retry`) after a failure."""
    sid, reporter, config = sdef.id, env.reporter, sdef.retry_config

    async def reported(call: AttemptCall) -> Outcome:
        reporter.attempt_started(sid, call.item, call.attempt)
        outcome = await inner(call)
        result = outcome.result
        if not result.success:
            will_retry = (
                config is not None
                and result.status is StageStatus.FAILED
                and config.retries_after(call.attempt, result.error, outcome.exception_type)
            )
            reporter.attempt_failed(sid, call.item, call.attempt, outcome, will_retry=will_retry)
        return outcome

    return reported

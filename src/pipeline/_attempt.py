"""One attempt of a stage (or of one fan-out item): `AttemptCall` and the chain's core links.

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

import functools
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

from pipeline._cancel import is_cancellation, must_propagate, raise_unless_stray
from pipeline._deadline import Within
from pipeline._env import run_reporter
from pipeline._model import copy_with
from pipeline._outcome import AttemptRecord, Outcome
from pipeline._retry import will_retry
from pipeline._text import exception_text
from pipeline.errors import StageOutputError, StageTimeoutError
from pipeline.result import UNKNOWN_STAGE, StageResult
from pipeline.runners._base import INLINE, REMOTE_STOPPED, default_runner_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pipeline._env import RunEnv
    from pipeline.context import PipelineContext
    from pipeline.definition import StageDefinition
    from pipeline.protocol import PipelineStage
    from pipeline.runners import Runner

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


def named(result: StageResult[Any], sid: str) -> StageResult[Any]:
    """`result` with `stage_name=sid` (the stage returned it without a name).

    A speed trick, here only: when nothing but the caller's local variable refers to the result
    (CPython's reference count is 2: that variable and `getrefcount`'s argument), nobody can see
    it change, so it is named in place (0.05 us) instead of copied (0.6 us of the ~11 us a
    no-op stage costs; benchmarks/overhead.py W1/W2). A result the stage also kept, or shares
    with another stage, has more references and is copied, so a frozen result anyone holds
    never changes. It relies on CPython's reference counts and on pydantic models keeping
    their fields in `__dict__` and supporting no weak references.
    """
    if _refcount(result) <= _ONLY_THE_CALLERS:
        result.__dict__["stage_name"] = sid
        return result
    return copy_with(result, stage_name=sid)


_refcount = sys.getrefcount
_ONLY_THE_CALLERS: Final = 3
"""`named`'s argument, the caller's variable and `getrefcount`'s own argument."""


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


def execute_link(sdef: StageDefinition, env: RunEnv) -> Handler:
    """Innermost: the runner calls the stage; what it did becomes an `Outcome`."""
    sid, stage = sdef.id, sdef.stage
    name = sdef.runner if sdef.runner is not None else default_runner_name(stage)
    runner = env.runners[name]
    # Inline is the common case: call `execute` directly rather than through the runner's
    # extra coroutine frame (about 0.4 us per attempt).
    if name == INLINE:
        return functools.partial(run_attempt, sid, stage, None)
    # A runner that sends work to another process (`RemoteRunner`) gives its own way to call.
    remote = getattr(runner, "attempt_caller", None)
    if remote is not None:
        return _remote_execute_link(sdef, remote(sdef), env)
    return functools.partial(run_attempt, sid, stage, runner)


def plain_link(sdef: StageDefinition, env: RunEnv) -> Handler | None:
    """The whole chain of a stage that needs no link but the inline call, else None.

    No observers, middleware or output checks in the run (`env.plain`), no `timeout_ms` or
    `uses=`, and the inline runner: the chain is `run_attempt` itself, with nothing to build
    or keep (building and keeping a chain cost ~0.5 us a stage of every new definition).
    """
    if not env.plain or sdef.timeout_ms is not None or sdef.uses:
        return None
    stage, name = sdef.stage, sdef.runner
    if (name if name is not None else default_runner_name(stage)) != INLINE:
        return None
    return functools.partial(run_attempt, sdef.id, stage, None)


async def run_attempt(
    sid: str, stage: PipelineStage[Any, Any], runner: Runner | None, call: AttemptCall
) -> Outcome:
    """Call the stage (inline when `runner` is None); what it did becomes an `Outcome`."""
    returned: object
    try:
        if runner is None:
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
        returned = named(returned, sid)  # an item's is only read for its output
    return Outcome(returned, call.attempt)


def _remote_execute_link(
    sdef: StageDefinition, remote: Callable[[AttemptCall], Awaitable[object]], env: RunEnv
) -> Handler:
    """`execute_link` for a runner in another process: the outcome says if its work stopped.

    An attempt the run cuts short (fail-fast, a cancel, the pipeline's timeout) is noted in
    `env.cut_short`, so the stage's record still has it, with whether its work stopped.
    """
    sid, clock = sdef.id, env.clock

    async def execute_remote(call: AttemptCall) -> Outcome:
        returned: object
        t0 = clock.now()
        try:
            returned = await remote(call)
        except StageTimeoutError as exc:  # the runner kept the item's timeout (a batch)
            outcome = failed(sid, exc, call.attempt, str(exc))
        except Exception as exc:  # noqa: BLE001  # a stage's exception is its failure, by contract
            outcome = failed(sid, exc, call.attempt)
        except BaseException as exc:  # noqa: BLE001  # re-raised unless it is the stage's failure
            try:
                await raise_if_not_a_failure(exc)
            except BaseException:
                if call.item is None:  # items have no attempt records
                    cut = AttemptRecord(
                        call.attempt, 0.0, t0, clock.now(), "cancelled", 0.0, REMOTE_STOPPED.get()
                    )
                    env.cut_short.setdefault(sid, []).append(cut)
                raise
            outcome = failed(sid, exc, call.attempt)
        else:
            if not isinstance(returned, StageResult):
                out_exc = StageOutputError(sid, call.attempt, returned)
                outcome = failed(sid, out_exc, call.attempt, str(out_exc))
            else:
                if call.item is None and returned.stage_name == UNKNOWN_STAGE:
                    returned = copy_with(returned, stage_name=sid)
                outcome = Outcome(returned, call.attempt)
        outcome.remote_stopped = REMOTE_STOPPED.get()
        return outcome

    return execute_remote


def timeout_link(sdef: StageDefinition, env: RunEnv, inner: Handler) -> Handler:
    """Bounds the attempt by `timeout_ms` on the run's clock."""
    sid, clock = sdef.id, env.clock
    timeout_ms = sdef.timeout_ms
    assert timeout_ms is not None  # only linked when set
    limit_s = timeout_ms / 1000

    async def with_timeout(call: AttemptCall) -> Outcome:
        outcome = None
        with Within(clock, limit_s) as bound:
            outcome = await inner(call)
        if outcome is None or bound.passed:
            exc = StageTimeoutError(sid, call.attempt, timeout_ms, call.item)
            timed_out = failed(sid, exc, call.attempt, str(exc))
            # Work in another process that was given up on says whether it stopped.
            timed_out.remote_stopped = REMOTE_STOPPED.get()
            return timed_out
        return outcome

    return with_timeout


def events_link(sdef: StageDefinition, env: RunEnv, inner: Handler) -> Handler:
    """Outermost: `AttemptStarted` before, `AttemptFailed` (with `will_retry`) after a failure."""
    sid, config = sdef.id, sdef.retry_config

    async def reported(call: AttemptCall) -> Outcome:
        reporter = run_reporter(env)
        reporter.attempt_started(sid, call.item, call.attempt)
        outcome = await inner(call)
        result = outcome.result
        if not result.success:
            again = will_retry(config, call.attempt, outcome)
            reporter.attempt_failed(sid, call.item, call.attempt, outcome, will_retry=again)
        return outcome

    return reported

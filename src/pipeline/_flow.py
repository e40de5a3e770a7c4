"""Flow control as links of the attempt chain: middleware and shared resources.

    events -> middleware -> resources -> timeout -> runner -> execute

`middleware_links` wraps a stage's chain in the executor's middleware (the first outermost);
`resources_link` holds the stage's `uses=` resources around the rest, so waiting for them is not
part of the attempt's `timeout_ms`. `acquire_in_run` is `context.acquire()` inside a run. The
policies themselves (token bucket, in-flight limit, circuit breaker) are `pipeline.resources`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from pipeline._attempt import AttemptCall, failed, raise_if_not_a_failure
from pipeline._env import current_item, current_stage
from pipeline._model import copy_with
from pipeline._outcome import Outcome
from pipeline._validation import Scope, run_rules
from pipeline.errors import (
    CircuitOpenError,
    ResourceError,
    StageOutputError,
    ValidationIssue,
)
from pipeline.result import UNKNOWN_STAGE, StageResult

CallNext = Callable[[AttemptCall], Awaitable[StageResult[Any]]]
"""What a middleware calls to continue the chain: `await call_next(call)`."""
Middleware = Callable[[AttemptCall, CallNext], Awaitable[StageResult[Any]]]
"""`async def __call__(self, call, call_next) -> StageResult` (or a plain async function)."""

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

    from pipeline._attempt import Handler
    from pipeline._env import RunEnv
    from pipeline.definition import StageDefinition
    from pipeline.resources import Lease, Resource


def middleware_links(sdef: StageDefinition, env: RunEnv, inner: Handler) -> Handler:
    """`inner` wrapped in every middleware of the run, the first in the list outermost."""
    handler = inner
    for middleware in reversed(env.middleware):
        handler = _middleware_link(sdef.id, middleware, handler)
    return handler


def _middleware_link(sid: str, middleware: Middleware, inner: Handler) -> Handler:
    async def through_middleware(call: AttemptCall) -> Outcome:
        last: list[Outcome] = []

        async def call_next(next_call: AttemptCall) -> StageResult[Any]:
            outcome = await inner(next_call)
            last.append(outcome)
            return outcome.result

        try:
            # What a user's middleware returns is checked below, whatever its annotation says.
            returned = cast("object", await middleware(call, call_next))
        except Exception as exc:  # noqa: BLE001  # a middleware that raises fails the attempt
            return failed(sid, exc, call.attempt)
        except BaseException as exc:  # noqa: BLE001  # re-raised unless it is a failure
            await raise_if_not_a_failure(exc)
            return failed(sid, exc, call.attempt)
        for produced in reversed(last):
            if returned is produced.result:
                return produced  # what the chain produced, with its exception and resource wait
        if not isinstance(returned, StageResult):
            wrong = StageOutputError(sid, call.attempt, returned)
            message = (
                f"middleware {middleware!r} of stage {sid!r} returned "
                f"{type(returned).__name__}, expected StageResult; return what call_next "
                "gave it, or a StageResult of its own"
            )
            return failed(sid, wrong, call.attempt, message)
        if call.item is None and returned.stage_name == UNKNOWN_STAGE:
            returned = copy_with(returned, stage_name=sid)
        outcome = Outcome(returned, call.attempt)
        if last:
            # A middleware that rewrote the chain's failure (added metadata, say) keeps its
            # exception: retry by type and Retry-After still see what the stage raised.
            outcome.resource_wait_s = last[-1].resource_wait_s
            outcome.remote_stopped = last[-1].remote_stopped  # work in another process
            if not returned.success:
                failures = [o.exception for o in last if o.exception is not None]
                outcome.exception = failures[-1] if failures else None
        return outcome

    return through_middleware


def resources_link(sdef: StageDefinition, env: RunEnv, inner: Handler) -> Handler:
    """Hold the stage's `uses=` resources around `inner` (by name order: no two stages deadlock).

    The wait goes on the outcome (`resource_wait_s`) and into a `ResourceWaited` event, and a
    failed attempt counts against each resource's circuit breaker.
    """
    sid = sdef.id
    held = sorted(sdef.uses.items())

    async def with_resources(call: AttemptCall) -> Outcome:
        waited = 0.0
        async with AsyncExitStack() as stack:
            leases: list[Lease] = []
            try:
                for name, weight in held:
                    held_one = acquire_in_run(name, weight, attempt=call.attempt)
                    lease = await stack.enter_async_context(held_one)
                    leases.append(lease)
                    waited += lease.wait_s
            except CircuitOpenError as exc:
                named = CircuitOpenError(exc.resource, sid, call.attempt, retry_in_s=exc.retry_in_s)
                outcome = failed(sid, named, call.attempt)
            else:
                outcome = await inner(call)
                if not outcome.result.success:
                    for lease in leases:
                        lease.mark_failed()
        outcome.resource_wait_s = waited
        return outcome

    return with_resources


@asynccontextmanager
async def acquire_in_run(name: str, weight: int = 1, *, attempt: int = 0) -> AsyncIterator[Lease]:
    """Hold the run's resource `name` around the `async with` body, emitting `ResourceWaited`.

    `context.acquire(name)`, a step's `uses=` and a stage's `uses=` (the resources link) all
    acquire through here.
    """
    scope = current_stage.get()
    if scope is None:
        raise ResourceError(
            name, "was asked for outside a pipeline run",
            "acquire resources inside a stage run by PipelineExecutor(resources={...})",
        )  # fmt: skip
    env, sid = scope
    resource = env.resources.get(name)
    if resource is None:
        known = ", ".join(repr(n) for n in sorted(env.resources)) or "none"
        raise ResourceError(
            name, f"is not one of the executor's resources ({known})",
            "pass it as PipelineExecutor(resources={name: Resource(...)})",
        )  # fmt: skip
    async with resource.acquire(weight, clock=env.clock, name=name) as lease:
        reporter = env.reporter
        if reporter.enabled:
            reporter.resource_waited(sid, current_item.get(), attempt, name, weight, lease.wait_s)
        yield lease


def _resource_rule(s: StageDefinition, scope: Scope) -> Iterator[ValidationIssue]:
    resources = scope.resources
    assert resources is not None  # only an executor's validation runs this rule
    for name, weight in s.uses.items():
        resource = resources.get(name)
        if resource is None:
            known = ", ".join(repr(n) for n in sorted(resources)) or "none"
            yield ValidationIssue(
                code="unknown_resource",
                stage_id=s.id,
                message=(
                    f"Stage {s.id!r} uses unknown resource {name!r}; the executor has {known} "
                    "(add it with PipelineExecutor(resources={...}))"
                ),
            )
        elif weight > resource.capacity:
            yield ValidationIssue(
                code="resource_weight",
                stage_id=s.id,
                message=(
                    f"Stage {s.id!r} uses {weight} of resource {name!r}, which can never grant "
                    f"more than {resource.capacity:g}; lower the weight or raise the resource's "
                    "max_in_flight / burst"
                ),
            )


def resource_issues(
    stages: Sequence[StageDefinition], resources: Mapping[str, Resource]
) -> tuple[ValidationIssue, ...]:
    """Problems of a (structurally valid) definition with the resources an executor has."""
    if all(not s.uses for s in stages):
        return ()
    scope = Scope(stages, {s.id for s in stages}, resources=resources)
    return tuple(run_rules(scope, (), (_resource_rule,), ()))

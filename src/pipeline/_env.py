"""`RunEnv`: everything one run's invocations need besides the stage, as one frozen value.

The clock, the reporter (a do-nothing one when nobody observes), the cache of the run and the
runners travel together instead of positionally through every step; the slots for resources
and middleware are where flow control plugs in. `current_stage` tells code running inside a
stage (`context.acquire()`, `context.step()`) which run and stage it belongs to.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.cache._step import StageCache

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pipeline._outcome import AttemptRecord
    from pipeline._reporter import Reporter
    from pipeline.cache._serialize import Serializer
    from pipeline.cache._step import CacheTally
    from pipeline.cache._store import CacheStore
    from pipeline.clock import Clock
    from pipeline.definition import PipelineDefinition, StageDefinition
    from pipeline.resources import Resource
    from pipeline.result import StepRun
    from pipeline.runners import Runner


@dataclass(frozen=True, slots=True, eq=False)
class RunEnv:
    """The fixed environment of one run (built by the executor, read by every invocation)."""

    clock: Clock
    reporter: Reporter
    pipeline_name: str
    runners: Mapping[str, Runner]
    store: CacheStore | None = None
    serializer: Serializer | None = None
    tally: CacheTally | None = None
    middleware: tuple[Any, ...] = ()
    resources: Mapping[str, Resource] = field(default_factory=dict)
    chain_key: object = None
    """Identifies the executor's fixed settings, so a stage's attempt chain can be reused."""
    definition: PipelineDefinition | None = None
    """The definition being run (durable steps read their stage's `cache_version` from it)."""
    plain: bool = False
    """No observers, middleware or output checks in this run: a stage with no `timeout_ms`,
    `uses=` or runner needs no attempt chain (`pipeline._attempt.plain_link`)."""
    validate_outputs: bool = False
    """Check each output against its declared type (`PipelineExecutor(validate_outputs=True)`)."""
    outputs: Mapping[str, Any] = field(default_factory=dict)
    """The outputs of the stages that succeeded so far (the run state's dict, read-only here;
    conditions that ask for them read it: `CONDITION_ARGS_ATTR`)."""
    cut_short: dict[str, list[AttemptRecord]] = field(default_factory=dict)
    """Attempts on a remote runner that the run cancelled (fail-fast, a cancel, its timeout),
    by stage: they go on the cancelled stage's record, with whether their work stopped."""
    steps: dict[str, list[StepRun]] = field(default_factory=dict)
    """Durable steps (`context.step`) each stage made, in the order they ended (mutable: the
    one per-run log in this otherwise fixed value; they go on the stages' run records)."""

    def cache_for(self, sdef: StageDefinition) -> StageCache | None:
        """The cache step of `sdef` in this run, or None when it is not cached."""
        if self.store is None or not sdef.cache:
            return None
        assert self.serializer is not None  # set together with the store
        assert self.tally is not None
        return StageCache(sdef, self.store, self.serializer, self.tally, self.pipeline_name)


CONDITION_ARGS_ATTR = "__pipeline_condition_args__"
"""A condition with this attribute set to True is called as `condition(context, input,
outputs)` (its stage's input and the outputs of the stages that succeeded so far, read-only)
rather than `condition(context)`; declarative `when:` expressions use it."""

current_stage: ContextVar[tuple[RunEnv, str] | None] = ContextVar(
    "pipeline_current_stage", default=None
)
"""The run and stage id the running code belongs to (set as each stage starts; fan-out item
tasks inherit it, and `current_item` tells them apart)."""

current_item: ContextVar[int | None] = ContextVar("pipeline_current_item", default=None)
"""The fan-out item the running code belongs to, or None."""

current_lineage: ContextVar[str | None] = ContextVar("pipeline_current_lineage", default=None)
"""The lineage id of the streamed item the running code belongs to (`source:3/map`), or None."""


def run_reporter(env: RunEnv) -> Reporter:
    """The reporter of the run the calling code belongs to (`env`'s outside a run).

    Links read it per call rather than keep it, so one built chain serves every run of its
    executor, observed or not.
    """
    scope = current_stage.get()
    return env.reporter if scope is None else scope[0].reporter

"""Which stages stream: producers, their streaming consumers, and the groups they run in.

A *producer* is a stage whose `execute` is an async generator (or an `@stage` async generator
function). A *streaming consumer* of a producer is a stage whose only input is that producer
and that is either a FAN_OUT (it maps over items as they arrive, and is itself a producer for
its own streaming consumers) or annotated to receive `AsyncIterator[T]` / `AsyncIterable[T]`
(when it is itself an async generator, a *pipe*, its own items stream on in turn).
A producer that is not itself a streaming consumer is the *root* of a group: the root and every
streaming consumer reachable from it run together, in one task group (`pipeline._stream`).

This module only reads definitions (no anyio); the group is found once per definition and kept
on it, so a definition in which nothing streams costs one dict lookup per worker.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from pipeline._validation import execute_kind
from pipeline._wrapped import unwrap_stage
from pipeline.definition import ExecutionPattern
from pipeline.errors import ValidationIssue
from pipeline.functions import FunctionStage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping

    from pipeline._validation import Scope
    from pipeline.context import PipelineContext
    from pipeline.definition import PipelineDefinition, StageDefinition

NodeKind = Literal["source", "map", "iter", "pipe"]
"""`source`: an async generator stage; `map`: a FAN_OUT over a stream; `iter`: a stage given an
async iterator over a stream; `pipe`: an async generator stage given one (its items stream on)."""

ITERATOR_BUFFER: Final = 8
"""Items that may wait for a stage reading its input as an `AsyncIterator` (it has no
`buffer=`, which is FAN_OUT only)."""

_STREAMS_ATTR: Final = "__pipeline_streams__"
"""Where `stream_groups` keeps its answer on the `PipelineDefinition` (not a field)."""

_ITERATOR_ORIGINS: Final = (collections.abc.AsyncIterator, collections.abc.AsyncIterable)
_ITERATOR_TEXT: Final = re.compile(
    r"^\s*['\"]?(?:(?:collections\.abc|typing|abc|t)\.)?Async(?:Iterator|Iterable)\b"
)
"""An `AsyncIterator[...]` / `AsyncIterable[...]` annotation kept as text (unresolvable)."""


@dataclass(slots=True, eq=False)
class StreamNode:
    """One stage of a streaming group."""

    sid: str
    kind: NodeKind
    producer: str | None
    """The node it consumes (None for the root)."""
    consumers: list[str] = field(default_factory=list)
    """Its streaming consumers, in definition order."""
    retain: bool = True
    """Whether its outputs are collected into a list: it has a consumer that does not stream
    (or none at all). Otherwise its result's output is None and nothing is kept."""


@dataclass(slots=True, eq=False)
class StreamGroup:
    """A producer that is not itself a streaming consumer, and every node streaming from it."""

    root: str
    nodes: dict[str, StreamNode]
    """Root first, then each consumer after its producer."""

    def descendants(self, sid: str) -> list[str]:
        """The nodes streaming (directly or not) from `sid`."""
        out: list[str] = []
        stack = list(self.nodes[sid].consumers)
        while stack:
            nxt = stack.pop()
            out.append(nxt)
            stack.extend(self.nodes[nxt].consumers)
        return out


def producer_body(
    stage: object,
) -> Callable[[Any, PipelineContext[Any]], AsyncIterator[Any]] | None:
    """The async generator function a producer stage yields its items from, else None."""
    if isinstance(stage, FunctionStage):
        fn: Any = stage.fn
        return fn if stage.is_producer else None
    if execute_kind(stage) != "producer":
        return None
    body: Callable[[Any, PipelineContext[Any]], AsyncIterator[Any]] = stage.execute  # type: ignore[attr-defined]  # checked above
    return body


def is_producer(sdef: StageDefinition) -> bool:
    """`sdef` streams items out of an async generator (FAN_OUT stages map; they never are)."""
    return sdef.pattern is not ExecutionPattern.FAN_OUT and producer_body(sdef.stage) is not None


def streams_out(sdef: StageDefinition, by_id: Mapping[str, StageDefinition]) -> bool:
    """`sdef` hands its items on while it runs: a producer, or a FAN_OUT over a stream."""
    seen = 0
    while sdef.pattern is ExecutionPattern.FAN_OUT and seen < len(by_id):
        if len(sdef.inputs) != 1 or sdef.inputs[0] not in by_id:
            return False
        sdef, seen = by_id[sdef.inputs[0]], seen + 1
    return is_producer(sdef)


def wants_iterator(stage: object) -> bool:
    """The stage's input is annotated `AsyncIterator[T]` or `AsyncIterable[T]` (or as text)."""
    stage = unwrap_stage(stage)
    if isinstance(stage, FunctionStage):
        fn: Any = stage.fn
        skip_self = False
    else:
        fn = getattr(type(stage), "execute", None)
        skip_self = True
    if fn is None:
        return False
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    if len(params) <= int(skip_self):
        return False
    param = params[int(skip_self)]
    raw = param.annotation
    if raw is inspect.Parameter.empty:
        return False
    if isinstance(raw, str):
        try:
            target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else fn.__call__
            raw = typing.get_type_hints(target).get(param.name, raw)
        except Exception:  # noqa: BLE001  # unresolvable: read the text
            return bool(_ITERATOR_TEXT.match(raw))
        if isinstance(raw, str):
            return bool(_ITERATOR_TEXT.match(raw))
    return is_iterator_type(raw)


def is_iterator_type(tp: Any) -> bool:
    """`tp` is `AsyncIterator[T]` / `AsyncIterable[T]` (typing or collections.abc, bare or not)."""
    origin = typing.get_origin(tp) or tp
    return origin in _ITERATOR_ORIGINS


def stream_groups(definition: PipelineDefinition) -> Mapping[str, StreamGroup]:
    """The streaming groups of a valid definition, by root id (empty when nothing streams)."""
    kept: Mapping[str, StreamGroup] | None = definition.__dict__.get(_STREAMS_ATTR)
    if kept is None:
        kept = _find_groups(definition)
        definition.__dict__[_STREAMS_ATTR] = kept
    return kept


def _find_groups(definition: PipelineDefinition) -> dict[str, StreamGroup]:
    if not any(map(is_producer, definition.stages)):
        return {}  # the common case: one cheap look at each stage (~0.1 us), no dict of them
    plan = definition.plan
    stages = {s.id: s for s in definition.stages}
    sources = [
        sid for sid in plan.order if is_producer(stages[sid]) and not is_pipe(stages[sid], stages)
    ]
    if not sources:
        return {}
    groups: dict[str, StreamGroup] = {}
    owner: dict[str, StreamGroup] = {}
    for root in sources:
        group = StreamGroup(root, {root: StreamNode(root, "source", None)})
        groups[root] = group
        owner[root] = group
    for sid in plan.order:  # producers come before their consumers
        found = owner.get(sid)
        if found is None:
            continue
        group = found
        node = group.nodes[sid]
        if node.kind == "iter":
            continue  # it consumes a stream; what it returns is one value
        successors = tuple(dict.fromkeys(plan.successors[sid]))
        streaming = 0
        for succ in successors:
            consumer = stages[succ]
            kind = _consumer_kind(consumer, sid)
            if kind is None:
                continue
            streaming += 1
            node.consumers.append(succ)
            group.nodes[succ] = StreamNode(succ, kind, sid)
            owner[succ] = group  # an iter node is recorded, not expanded (see above)
        node.retain = streaming < len(successors) or not successors
    return groups


def _consumer_kind(consumer: StageDefinition, producer: str) -> NodeKind | None:
    if tuple(consumer.inputs) != (producer,):
        return None  # several inputs: it gets the collected values, when all are done
    if consumer.pattern is ExecutionPattern.FAN_OUT:
        return "map"
    if wants_iterator(consumer.stage):
        return "pipe" if is_producer(consumer) else "iter"
    return None  # a producer of its own is a new group, fed the collected list


def is_pipe(sdef: StageDefinition, by_id: Mapping[str, StageDefinition]) -> bool:
    """`sdef` is an async generator reading its only input, a stream, as an `AsyncIterator`."""
    inputs = sdef.inputs
    return (
        len(inputs) == 1
        and inputs[0] in by_id
        and sdef.pattern is not ExecutionPattern.FAN_OUT
        and wants_iterator(sdef.stage)
        and streams_out(by_id[inputs[0]], by_id)
    )


def stream_resource_issues(scope: Scope) -> Iterator[ValidationIssue]:
    """Stages streaming together that share a `uses=` resource one of them holds throughout.

    A producer, a pipe or an iterator consumer holds its resources for its whole stream; a
    stage streaming with it (upstream, downstream or beside it) that needs the same resource
    can wait for it forever while the holder waits for that stage's items: a deadlock whenever
    the capacity is short. Validation cannot see capacities, so any such pair is an issue.
    """
    stages = scope.stages
    if all(not s.uses for s in stages):
        return
    by_id = {s.id: s for s in stages}
    members: dict[str, list[StageDefinition]] = {}
    for s in stages:
        if s.uses:
            members.setdefault(_stream_root(s, by_id), []).append(s)
    for group in members.values():
        for i, first in enumerate(group):
            for second in group[i + 1 :]:
                holders = [x for x in (first, second) if x.pattern is not ExecutionPattern.FAN_OUT]
                shared = sorted(set(first.uses) & set(second.uses))
                if not holders or not shared:
                    continue
                holder = holders[0]
                other = second if holder is first else first
                yield ValidationIssue(
                    code="resource_weight",
                    stage_id=holder.id,
                    message=(
                        f"Stages {holder.id!r} and {other.id!r} stream together and both use "
                        f"resource {shared[0]!r}; {holder.id!r} holds it for its whole stream, "
                        f"so {other.id!r} may wait for it forever (a deadlock); give one of them "
                        f"another resource, or acquire it per item inside {holder.id!r} with "
                        f"context.acquire({shared[0]!r})"
                    ),
                )


def _stream_root(sdef: StageDefinition, by_id: Mapping[str, StageDefinition]) -> str:
    """The root producer `sdef` streams from (itself when it does not stream from one)."""
    seen = {sdef.id}
    while len(sdef.inputs) == 1 and (up := by_id.get(sdef.inputs[0])) is not None:
        streaming = sdef.pattern is ExecutionPattern.FAN_OUT or wants_iterator(sdef.stage)
        if not streaming or up.id in seen or not streams_out(up, by_id):
            break
        seen.add(up.id)
        sdef = up
    return sdef.id

"""One O(stages + edges) pass over a definition's wiring, shared by validation and the plan.

Pure: it reads stage ids and inputs only. What the pass means (issues, waves) is
`pipeline._validation`'s and `pipeline.plan`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from pipeline.definition import StageDefinition


@dataclass(slots=True)
class Graph:
    """One O(stages + edges) pass over a definition, shared by validation and the plan."""

    successors: dict[str, list[str]]
    """The stages that list each stage as an input (known ids only), in definition order."""
    wave_of: dict[str, int] | None
    """Each stage's wave (Kahn's algorithm), or None when the inputs form a cycle."""


def scan(stages: Sequence[StageDefinition]) -> Graph:
    """Successors and waves of `stages`; inputs naming no stage are ignored (validation's job)."""
    successors: dict[str, list[str]] = {s.id: [] for s in stages}
    pending: dict[str, int] = {}
    wave_of: dict[str, int] = {}
    ready: list[str] = []
    for s in stages:
        sid, inputs = s.id, s.inputs
        if len(inputs) == 1:  # the common case, without de-duplicating (~0.2 us a stage)
            dep = inputs[0]
            if dep in successors:
                pending[sid] = 1
                successors[dep].append(sid)
                continue
            deps: list[str] = []
        else:
            deps = [d for d in dict.fromkeys(inputs) if d in successors]
        pending[sid] = len(deps)
        for dep in deps:
            successors[dep].append(sid)
        if not deps:
            ready.append(sid)
            wave_of[sid] = 0
    i = 0
    while i < len(ready):
        sid = ready[i]
        i += 1
        wave = wave_of[sid] + 1
        for succ in successors[sid]:
            if wave_of.get(succ, -1) < wave:  # the deepest input decides
                wave_of[succ] = wave
            pending[succ] -= 1
            if pending[succ] == 0:
                ready.append(succ)
    return Graph(successors, wave_of if len(ready) == len(successors) else None)


def heaviest_chain(
    order: Iterable[str],
    predecessors: Mapping[str, Sequence[str]],
    durations: Mapping[str, float],
) -> tuple[tuple[str, ...], float]:
    """The chain of dependent stages with the largest total duration, and that total.

    `order` must be topological; only its stages count, each weighing `durations.get(id, 0)`.
    Among chains of equal total the one with more stages wins (so instant stages at the end of
    a chain stay on it); a stage extends the input declared first among equals, and the chain
    ending first in `order` wins among equal ends. `((), 0.0)` when `order` is empty.
    """
    best: dict[str, tuple[float, int]] = {}  # (total, stages) of the best chain ending here
    parent: dict[str, str | None] = {}
    for sid in order:
        via: str | None = None
        for dep in predecessors.get(sid, ()):
            if dep in best and (via is None or best[dep] > best[via]):
                via = dep
        total, stages = best[via] if via is not None else (0.0, 0)
        best[sid] = (total + durations.get(sid, 0.0), stages + 1)
        parent[sid] = via
    if not best:
        return (), 0.0
    end = max(best, key=best.__getitem__)  # max() keeps the first of equal values
    path: list[str] = []
    node: str | None = end
    while node is not None:
        path.append(node)
        node = parent[node]
    return tuple(reversed(path)), best[end][0]

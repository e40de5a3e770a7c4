"""The `ExecutionPlan`: a frozen value built once from a valid definition.

Predecessors, successors and waves, printable and assertable without running anything
(stdlib `graphlib` sorts). Running the plan is `pipeline.executor`'s job.
"""

from __future__ import annotations

import graphlib
from typing import TYPE_CHECKING

from pipeline._model import FrozenModel

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.definition import StageDefinition


class ExecutionPlan(FrozenModel):
    """Topological facts about a valid pipeline definition."""

    order: tuple[str, ...]
    """Stage ids in a topological order (within a wave: definition order)."""
    waves: tuple[tuple[str, ...], ...]
    """Wave k holds the stages whose deepest input is in wave k-1 (entry points: wave 0)."""
    wave_of: dict[str, int]
    """The wave index of each stage."""
    predecessors: dict[str, tuple[str, ...]]
    """Each stage's inputs, in declared order."""
    successors: dict[str, tuple[str, ...]]
    """The stages that list each stage as an input, in definition order."""

    def downstream(self, stage_id: str) -> tuple[str, ...]:
        """Every stage that depends on `stage_id`, directly or not, in plan order."""
        seen: set[str] = set()
        stack = [stage_id]
        while stack:
            for succ in self.successors[stack.pop()]:
                if succ not in seen:
                    seen.add(succ)
                    stack.append(succ)
        return tuple(s for s in self.order if s in seen)


def build_plan(stages: Sequence[StageDefinition]) -> ExecutionPlan:
    """Build the plan of a *valid* list of stage definitions."""
    predecessors = {s.id: tuple(s.inputs) for s in stages}
    successors: dict[str, list[str]] = {s.id: [] for s in stages}
    for s in stages:
        for dep in dict.fromkeys(s.inputs):
            successors[dep].append(s.id)
    wave_of: dict[str, int] = {}
    for sid in graphlib.TopologicalSorter(predecessors).static_order():
        wave_of[sid] = 1 + max((wave_of[d] for d in predecessors[sid]), default=-1)
    depth = 1 + max(wave_of.values(), default=-1)
    buckets: list[list[str]] = [[] for _ in range(depth)]
    for s in stages:  # definition order within each wave; O(stages), not O(stages * depth)
        buckets[wave_of[s.id]].append(s.id)
    waves = tuple(tuple(bucket) for bucket in buckets)
    return ExecutionPlan(
        order=tuple(sid for wave in waves for sid in wave),
        waves=waves,
        wave_of=wave_of,
        predecessors=predecessors,
        successors={k: tuple(v) for k, v in successors.items()},
    )

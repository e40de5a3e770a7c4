"""The `ExecutionPlan`: a frozen value built once from a valid definition.

Predecessors, successors and waves, printable and assertable without running anything
(one Kahn pass, shared with validation). Running the plan is `pipeline.executor`'s job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._graph import Graph, heaviest_chain, scan
from pipeline._model import FrozenModel, fast_model

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

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

    def critical_path(self, durations: Mapping[str, float]) -> tuple[tuple[str, ...], float]:
        """The chain of dependent stages with the largest total duration, and that total.

        `durations` weighs each stage (a stage missing from it weighs 0, as one that never ran).
        Among chains of equal total the one with more stages wins (so instant stages at the end
        of a chain stay on it); a stage extends the input declared first among equals, and the
        chain ending first in plan order wins among equal ends. `((), 0.0)` for an empty plan.
        """
        return heaviest_chain(self.order, self.predecessors, durations)


def build_plan(stages: Sequence[StageDefinition], graph: Graph | None = None) -> ExecutionPlan:
    """Build the plan of a *valid* list of stage definitions (reusing `graph` if given)."""
    if graph is None:
        graph = scan(stages)
    wave_of = graph.wave_of
    assert wave_of is not None  # a valid definition has no cycle
    depth = 1 + max(wave_of.values(), default=-1)
    buckets: list[list[str]] = [[] for _ in range(depth)]
    for s in stages:  # definition order within each wave; O(stages), not O(stages * depth)
        buckets[wave_of[s.id]].append(s.id)
    waves = tuple(tuple(bucket) for bucket in buckets)
    # Built from a valid definition by the code above, so not validated again (that cost
    # ~2 us a stage); tests/unit/test_model_bypass.py checks the bypass builds what validation
    # would.
    return fast_model(
        ExecutionPlan,
        {
            "order": tuple(sid for wave in waves for sid in wave),
            "waves": waves,
            "wave_of": wave_of,
            "predecessors": {s.id: tuple(s.inputs) for s in stages},
            "successors": {k: tuple(v) for k, v in graph.successors.items()},
        },
    )

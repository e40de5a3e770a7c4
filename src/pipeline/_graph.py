"""One O(stages + edges) pass over a definition's wiring, shared by validation and the plan.

Pure: it reads stage ids and inputs only. What the pass means (issues, waves) is
`pipeline._validation`'s and `pipeline.plan`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

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
        deps = [d for d in dict.fromkeys(s.inputs) if d in successors]
        pending[s.id] = len(deps)
        for dep in deps:
            successors[dep].append(s.id)
        if not deps:
            ready.append(s.id)
            wave_of[s.id] = 0
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

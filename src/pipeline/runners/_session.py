"""Opening the runners a run uses: each is entered for the run (re-entrant, so kept-open works).

A runner that is an async context manager (a process pool, a Dask client) is entered by the
executor around each run whose stages name it. `RemoteRunner`s count their entries, so a
caller who entered the runner already keeps it open across runs: the run's entry and exit
only move the count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pipeline.definition import StageDefinition


def openable(runners: Mapping[str, object]) -> dict[str, Any]:
    """The runners, by name, that are async context managers (computed once per executor)."""
    return {
        name: runner
        for name, runner in runners.items()
        if callable(getattr(runner, "__aenter__", None))
        and callable(getattr(runner, "__aexit__", None))
    }


def used_by(
    openable: Mapping[str, Any], stages: Sequence[StageDefinition]
) -> list[tuple[str, Any]]:
    """The openable runners named by `stages`, as `(name, runner)` in name order."""
    names = {s.runner for s in stages if s.runner is not None and s.runner in openable}
    return [(name, openable[name]) for name in sorted(names)]

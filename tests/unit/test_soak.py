"""Soak, small: a few hundred runs with observers and a cache leave memory, tasks and threads flat.

`benchmarks/soak.py` runs the same harness for 10,000 runs per configuration; this keeps its
invariants checked on every test run, on both backends and both built-in stores.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import anyio
import pytest
from benchmarks.soak import Store, soak, soak_store

from pipeline.cache import MemoryCache
from tests.unit._support import BACKENDS

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.events import PipelineEvent

RUNS = 200
WARMUP = 50  # the first sample; the next 150 runs are traced
CLEAR_EVERY = 50  # run i gets input i // 2: every other run is a cache hit
MAX_GROWTH = 512 * 1024
"""Above what stays alive legitimately: trio keeps each exited cancel scope that had a deadline
(the runs' shielded cache-write scopes) in its deadline heap until it expires or the heap holds
1,000 stale entries more than twice the live ones (`trio._core._run.Deadlines`): up to ~250 KB.
A leak of ~3.5 KB per run crosses it (an observer keeping its ~22 events per run leaks ~23 KB); `benchmarks/soak.py` bounds 10,000 runs by 1 MiB."""


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_runs_leave_memory_tasks_and_threads_flat(
    backend: str, kind: Store, tmp_path: Path
) -> None:
    """After warm-up, 150 more runs (cache hits, misses, clears, both observer kinds) keep
    tracemalloc growth small and add no task and no thread."""
    run = functools.partial(
        soak_store, kind, tmp_path, runs=RUNS, warmup=WARMUP, clear_every=CLEAR_EVERY, label=kind
    )
    report = anyio.run(run, backend=backend)

    assert report.problems(max_growth=MAX_GROWTH) == []
    assert report.last.tasks == report.first.tasks
    assert report.last.threads <= report.first.threads
    assert report.sync_events == report.async_events > 0
    assert report.hits > 0
    assert report.writes > 0


class HoardingObserver:
    """Keeps every event: the leak the soak must notice."""

    def __init__(self) -> None:
        self.kept: list[PipelineEvent] = []

    def on_event(self, event: PipelineEvent, /) -> None:
        self.kept.append(event)


def test_soak_reports_an_observer_that_keeps_every_event() -> None:
    """The harness is not blind: an observer holding its events shows up as memory growth.

    One backend: this checks the harness's measurement, not the executor.
    """
    hoarder = HoardingObserver()
    run = functools.partial(
        soak,
        MemoryCache(),
        runs=2 * WARMUP,
        warmup=WARMUP,
        clear_every=CLEAR_EVERY,
        label="hoarding",
        observers=(hoarder,),
    )
    report = anyio.run(run, backend="asyncio")

    assert report.growth >= MAX_GROWTH
    (problem,) = report.problems(max_growth=MAX_GROWTH)
    assert problem.startswith("hoarding: memory grew")
    assert len(hoarder.kept) == report.sync_events

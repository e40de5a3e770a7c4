"""Runners: where the body of one stage attempt runs.

A runner only *runs* an attempt; retries, timeouts, the cache, events and fail-fast stay in the
executor, so there is one of each whatever the runner. Built in: `"inline"` (the event loop,
the default for async stages) and `"threads"` (an anyio worker thread, the default for sync
function stages). Pass more by name with `PipelineExecutor(runners={...})` and pick one per
stage with `StageDefinition(runner="name")`: `ProcessRunner` (local worker processes, extra
`processes`) and `pipeline.runners.dask.DaskRunner` (a Dask cluster, extra `dask`; import
that module to use it) send the work to other processes (`RemoteRunner`).
"""

from __future__ import annotations

from pipeline.runners._base import (  # the base first: pipeline._attempt imports it
    INLINE,
    THREADS,
    InlineRunner,
    Runner,
    ThreadRunner,
    default_runner_name,
    sync_body,
)
from pipeline.runners._remote import RemoteRunner
from pipeline.runners._worker import RemoteContext
from pipeline.runners.process import ProcessRunner

__all__ = [
    "INLINE",
    "THREADS",
    "InlineRunner",
    "ProcessRunner",
    "RemoteContext",
    "RemoteRunner",
    "Runner",
    "ThreadRunner",
    "default_runner_name",
    "sync_body",
]

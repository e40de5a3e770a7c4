"""Runners: where the body of one stage attempt runs.

A runner only *runs* an attempt; retries, timeouts, the cache, events and fail-fast stay in the
executor, so there is one of each whatever the runner. Built in: `"inline"` (the event loop,
the default for async stages) and `"threads"` (an anyio worker thread, the default for sync
function stages). Pass more by name with `PipelineExecutor(runners={...})` and pick one per
stage with `StageDefinition(runner="name")`.
"""

from __future__ import annotations

from pipeline.runners._base import (
    INLINE,
    THREADS,
    InlineRunner,
    Runner,
    ThreadRunner,
    default_runner_name,
    sync_body,
)

__all__ = [
    "INLINE",
    "THREADS",
    "InlineRunner",
    "Runner",
    "ThreadRunner",
    "default_runner_name",
    "sync_body",
]

"""Seeing through wrappers that stand for a stage (`__wrapped_stage__`)."""

from __future__ import annotations


def unwrap_stage(stage: object) -> object:
    """The stage a wrapper stands for: follows `__wrapped_stage__` until an object has none.

    A wrapper that only observes a stage (such as `pipeline.testing.record_run`'s recorder) sets
    `__wrapped_stage__` so that the stage's output type and code fingerprint are the original's.
    """
    seen = 0
    while (inner := getattr(stage, "__wrapped_stage__", None)) is not None and seen < 100:
        stage, seen = inner, seen + 1
    return stage

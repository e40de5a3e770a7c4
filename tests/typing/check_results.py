"""Pinned inference of `StageResult` constructors: checked by mypy, never run."""

from __future__ import annotations

from typing import Any, assert_type

from pipeline import (
    StageResult,
    StageStatus,
    cancelled_result,
    failure_result,
    skipped_result,
    success_result,
)

assert_type(StageResult.success(1), StageResult[int])
assert_type(StageResult.success("a", stage_name="s", metadata={"k": 1}), StageResult[str])
assert_type(success_result([1.0]), StageResult[list[float]])
assert_type(StageResult.failure("boom"), StageResult[Any])
assert_type(failure_result("boom"), StageResult[Any])
assert_type(StageResult.skipped(reason="no"), StageResult[Any])
assert_type(skipped_result("no"), StageResult[Any])
assert_type(StageResult.cancelled(reason="stop"), StageResult[Any])
assert_type(cancelled_result("stop"), StageResult[Any])

result = StageResult.success(3)
assert_type(result.success, bool)
assert_type(result.output, int | None)
assert_type(result.status, StageStatus)
assert_type(StageResult[int](success=False, error="x"), StageResult[int])

"""StageResult / PipelineResult: constructors, status derivation, immutability, lookups."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    PipelineRunError,
    StageDefinition,
    StageResult,
    StageStatus,
    cancelled_result,
    failure_result,
    skipped_result,
    success_result,
)

# -- constructors: class-level style -------------------------------------------------------------


def test_success_constructor_carries_value_name_and_metadata() -> None:
    r = StageResult.success(42, stage_name="count", metadata={"rows": 3})
    assert r.success is True
    assert r.output == 42
    assert r.stage_name == "count"
    assert r.metadata == {"rows": 3}
    assert r.error is None
    assert r.status is StageStatus.SUCCEEDED


def test_success_constructor_defaults() -> None:
    r = StageResult.success("x")
    assert r.stage_name == "unknown"
    assert r.metadata == {}


def test_success_constructor_on_parametrised_class() -> None:
    r = StageResult[int].success(7, stage_name="s")
    assert r.success is True
    assert r.output == 7


def test_failure_constructor() -> None:
    r = StageResult.failure("boom", stage_name="s", metadata={"code": 5})
    assert r.success is False
    assert r.status is StageStatus.FAILED
    assert r.error == "boom"
    assert r.output is None
    assert r.stage_name == "s"
    assert r.metadata == {"code": 5}


def test_skipped_constructor_is_successful_with_skip_metadata() -> None:
    r = StageResult.skipped(reason="no lyrics")
    assert r.success is True
    assert r.status is StageStatus.SKIPPED
    assert r.output is None
    assert r.metadata["skipped"] is True
    assert r.metadata["skip_reason"] == "no lyrics"


def test_cancelled_constructor_error_text() -> None:
    r = StageResult.cancelled(reason="shutting down")
    assert r.success is False
    assert r.status is StageStatus.CANCELLED
    assert r.error == "[CANCELLED] shutting down"


# -- constructors: function style ----------------------------------------------------------------


def test_success_result_function() -> None:
    r = success_result([1, 2], stage_name="s", metadata={"n": 2})
    assert (r.success, r.output, r.stage_name, r.metadata) == (True, [1, 2], "s", {"n": 2})
    assert r.status is StageStatus.SUCCEEDED


def test_failure_result_function() -> None:
    r = failure_result("bad input", stage_name="s")
    assert (r.success, r.error, r.stage_name, r.status) == (
        False,
        "bad input",
        "s",
        StageStatus.FAILED,
    )


def test_skipped_result_function() -> None:
    r = skipped_result("condition false", stage_name="s", metadata={"extra": 1})
    assert r.success is True
    assert r.status is StageStatus.SKIPPED
    assert r.metadata == {"extra": 1, "skipped": True, "skip_reason": "condition false"}


def test_cancelled_result_function() -> None:
    r = cancelled_result("user abort", stage_name="s")
    assert r.success is False
    assert r.status is StageStatus.CANCELLED
    assert r.error == "[CANCELLED] user abort"
    assert r.stage_name == "s"


def test_constructor_metadata_is_copied() -> None:
    meta: dict[str, Any] = {"a": 1}
    r = StageResult.success(1, metadata=meta)
    meta["a"] = 2
    assert r.metadata == {"a": 1}


# -- `success` is a bool on instances --------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [
        StageResult.success(1),
        StageResult.failure("x"),
        StageResult.skipped(reason="r"),
        StageResult.cancelled(reason="r"),
        StageResult(success=True, output=1),
        StageResult[int](success=False, error="e"),
    ],
)
def test_success_attribute_is_bool_on_instances(result: StageResult[Any]) -> None:
    assert isinstance(result.success, bool)


def test_success_field_is_required_on_parametrised_model() -> None:
    # pydantic generic pitfall: the class-level constructor must not become the field default
    field = StageResult[int].model_fields["success"]
    assert field.is_required()
    with pytest.raises(pydantic.ValidationError):
        StageResult[int].model_validate({"output": 1})


def test_model_validate_round_trip() -> None:
    r = StageResult[int].success(3, stage_name="s")
    again = StageResult[int].model_validate(r.model_dump())
    assert again == r
    assert again.success is True


# -- status derivation -------------------------------------------------------------------------------


def test_hand_built_failure_is_failed() -> None:
    r: StageResult[Any] = StageResult(success=False, error="e")
    assert r.status is StageStatus.FAILED


def test_hand_built_success_is_succeeded() -> None:
    r = StageResult(success=True, output=5)
    assert r.status is StageStatus.SUCCEEDED
    assert r.stage_name == "unknown"


def test_explicit_compatible_status_is_kept() -> None:
    assert StageResult(success=True, status=StageStatus.SKIPPED).status is StageStatus.SKIPPED
    assert StageResult(success=False, status=StageStatus.CANCELLED).status is StageStatus.CANCELLED


@pytest.mark.parametrize(
    ("success", "status"),
    [
        (True, StageStatus.FAILED),
        (True, StageStatus.CANCELLED),
        (False, StageStatus.SUCCEEDED),
        (False, StageStatus.SKIPPED),
    ],
)
def test_status_contradicting_success_is_rejected(success: bool, status: StageStatus) -> None:
    with pytest.raises(pydantic.ValidationError, match="contradicts"):
        StageResult(success=success, status=status)


def test_status_values_are_strings() -> None:
    assert {s.value for s in StageStatus} == {"succeeded", "failed", "skipped", "cancelled"}


# -- immutability ------------------------------------------------------------------------------------


def test_stage_result_is_frozen() -> None:
    r = StageResult.success(1)
    with pytest.raises(pydantic.ValidationError):
        r.output = 2  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        r.success = False  # type: ignore[misc]
    assert r.output == 1


def test_stage_result_rejects_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        StageResult.model_validate({"success": True, "bogus": 1})


# -- PipelineResult ------------------------------------------------------------------------------------


def _pipeline_result(success: bool = True) -> PipelineResult:
    ok = StageResult.success(10, stage_name="a")
    bad = StageResult.failure("exploded", stage_name="b")
    skipped = StageResult.skipped(reason="cond", stage_name="c")
    return PipelineResult(
        pipeline_name="demo",
        success=success,
        outputs={"a": 10},
        stage_results={"a": ok, "b": bad, "c": skipped},
        failed_stages=["b"],
        skipped_stages=["c"],
    )


def test_get_output_and_get_result() -> None:
    res = _pipeline_result()
    assert res.get_output("a") == 10
    assert res.get_result("b").error == "exploded"


def test_get_result_unknown_id_names_known_ids() -> None:
    res = _pipeline_result()
    with pytest.raises(KeyError) as info:
        res.get_result("zzz")
    text = str(info.value)
    assert "zzz" in text
    for sid in ("a", "b", "c"):
        assert repr(sid) in text


def test_get_output_unknown_id_names_known_ids() -> None:
    res = _pipeline_result()
    with pytest.raises(KeyError) as info:
        res.get_output("zzz")
    assert "'a'" in str(info.value)
    assert "zzz" in str(info.value)


def test_get_output_of_failed_stage_says_why() -> None:
    res = _pipeline_result()
    with pytest.raises(KeyError, match="failed"):
        res.get_output("b")
    with pytest.raises(KeyError, match="skipped"):
        res.get_output("c")


def test_raise_for_failure_returns_self_on_success() -> None:
    res = _pipeline_result(success=True)
    assert res.raise_for_failure() is res


def test_raise_for_failure_raises_pipeline_run_error() -> None:
    res = _pipeline_result(success=False)
    with pytest.raises(PipelineRunError) as info:
        res.raise_for_failure()
    assert info.value.result is res
    assert "demo" in str(info.value)
    assert "exploded" in str(info.value)


def test_raise_for_failure_of_an_invalid_definition_names_the_problems() -> None:
    class Echo:
        name = "echo"

        async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            return StageResult.success(input)

    bad = PipelineDefinition("bad", [StageDefinition("a", Echo(), inputs=["ghost"])])
    res = PipelineExecutor().run_sync(bad)
    with pytest.raises(PipelineRunError) as info:
        res.raise_for_failure()
    assert "Stage 'a' depends on unknown stage 'ghost'" in str(info.value)


def test_pipeline_result_is_frozen() -> None:
    res = _pipeline_result()
    with pytest.raises(pydantic.ValidationError):
        res.success = False  # type: ignore[misc]

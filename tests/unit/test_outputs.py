"""`PipelineExecutor(validate_outputs=True)` (SPEC section 10, `pipeline._outputs`).

Strict checks of each output (each fan-out item's) against its declared type; never of a cache
hit. Every scenario runs on asyncio and trio.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from pipeline import (
    DefinitionError,
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
    StageDefinition,
    StageStatus,
    stage,
)
from pipeline.cache import MemoryCache, PickleSerializer
from tests.unit._support import on_both_backends


class Row(BaseModel):
    n: int


class SpecialRow(Row):
    pass


@stage
async def load(x: Any, ctx: PipelineContext[Any]) -> list[int]:
    return [1, 2, 3]


@stage
async def anything(x: Any, ctx: PipelineContext[Any]) -> Any:
    return x


@stage
async def untyped(x, ctx):  # type: ignore[no-untyped-def]  # unannotated on purpose
    return x


def pipeline_of(*stages: StageDefinition) -> PipelineDefinition:
    return PipelineDefinition("checked", list(stages))


@stage
async def five_as_text(x: Any, ctx: PipelineContext[Any]) -> int:
    return "5"  # type: ignore[return-value]  # the wrong type on purpose


@stage
async def five(x: Any, ctx: PipelineContext[Any]) -> int:
    return 5


@on_both_backends
async def test_validate_outputs_is_strict_and_names_the_type() -> None:
    d = pipeline_of(StageDefinition("five", five_as_text))
    unchecked = await PipelineExecutor().execute(d)
    assert unchecked.success
    assert unchecked.outputs["five"] == "5"
    checked = await PipelineExecutor(validate_outputs=True).execute(d)
    assert not checked.success
    assert checked.failed_stages == ["five"]
    error = checked.stage_results["five"].error or ""
    assert error.startswith("stage 'five' returned str, which is not its declared output type int")
    assert "output_type=" in error
    ok = await PipelineExecutor(validate_outputs=True).execute(
        pipeline_of(StageDefinition("f", five))
    )
    assert ok.success
    assert ok.outputs["f"] == 5


@on_both_backends
async def test_validate_outputs_wants_the_model_not_its_fields() -> None:
    @stage
    async def as_dict(x: Any, ctx: PipelineContext[Any]) -> Row:
        return {"n": 1}  # type: ignore[return-value]  # the wrong type on purpose

    @stage
    async def as_model(x: Any, ctx: PipelineContext[Any]) -> Row:
        return SpecialRow(n=1)

    executor = PipelineExecutor(validate_outputs=True)
    bad = await executor.execute(pipeline_of(StageDefinition("r", as_dict)))
    assert "returned dict, which is not its declared output type Row" in (
        bad.stage_results["r"].error or ""
    )
    good = await executor.execute(pipeline_of(StageDefinition("r", as_model)))
    assert good.success


@on_both_backends
async def test_validate_outputs_checks_fan_out_items_one_by_one() -> None:
    @stage
    async def item(x: int, ctx: PipelineContext[Any]) -> int:
        return str(x) if x == 2 else x  # type: ignore[return-value]  # item 2 is wrong

    d = pipeline_of(
        StageDefinition("load", load),
        StageDefinition(
            "each", item, inputs=["load"], pattern=ExecutionPattern.FAN_OUT,
            max_concurrent_fan_out=1,
        ),
    )  # fmt: skip
    result = await PipelineExecutor(validate_outputs=True).execute(d)
    each = result.stage_results["each"]
    assert each.metadata["failed_items"] == [1]
    assert "item 1 of FAN_OUT stage 'each' returned str" in (each.error or "")
    assert "declared output type int" in (each.error or "")


@on_both_backends
async def test_validate_outputs_never_checks_cache_hits() -> None:
    store = MemoryCache()
    d = pipeline_of(StageDefinition("five", five_as_text))
    first = await PipelineExecutor(cache=store, cache_serializer=PickleSerializer()).execute(d)
    assert first.success  # stored unchecked
    again = await PipelineExecutor(
        cache=store, cache_serializer=PickleSerializer(), validate_outputs=True
    ).execute(d)
    assert again.success
    assert again.outputs["five"] == "5"
    assert again.stage_results["five"].metadata.get("cached") is True


@on_both_backends
async def test_validate_outputs_mismatch_is_retried_like_any_failure() -> None:
    calls: list[int] = []

    @stage
    async def flaky(x: Any, ctx: PipelineContext[Any]) -> int:
        calls.append(1)
        return 5 if len(calls) > 1 else "five"  # type: ignore[return-value]  # first try wrong

    d = pipeline_of(StageDefinition("f", flaky, retry_config=RetryConfig(max_attempts=2,
                                                                       initial_delay_ms=0)))  # fmt: skip
    result = await PipelineExecutor(validate_outputs=True).execute(d)
    assert result.success
    assert result.outputs["f"] == 5
    assert len(calls) == 2


@on_both_backends
async def test_validate_outputs_leaves_undeclared_outputs_alone() -> None:
    d = pipeline_of(StageDefinition("a", anything), StageDefinition("u", untyped, inputs=["a"]))
    result = await PipelineExecutor(validate_outputs=True).execute(d, "text")
    assert result.success
    assert result.outputs["u"] == "text"


@on_both_backends
async def test_validate_outputs_checks_plain_classes_by_isinstance() -> None:
    class Plain:
        pass

    d = pipeline_of(StageDefinition("p", anything, output_type=Plain))
    executor = PipelineExecutor(validate_outputs=True)
    assert (await executor.execute(d, Plain())).success
    bad = await executor.execute(d, "not plain")
    assert "declared output type" in (bad.stage_results["p"].error or "")
    assert "Plain" in (bad.stage_results["p"].error or "")


@on_both_backends
async def test_one_definition_run_with_and_without_the_check() -> None:
    d = pipeline_of(StageDefinition("five", five_as_text))
    assert (await PipelineExecutor().execute(d)).success
    failed = await PipelineExecutor(validate_outputs=True).execute(d)
    assert failed.stage_results["five"].status is StageStatus.FAILED
    assert (await PipelineExecutor().execute(d)).success


def test_validate_outputs_must_be_a_bool() -> None:
    with pytest.raises(DefinitionError) as caught:
        PipelineExecutor(validate_outputs="yes")  # type: ignore[arg-type]  # the bad value on purpose
    assert caught.value.field == "validate_outputs"

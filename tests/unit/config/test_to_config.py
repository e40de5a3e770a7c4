"""`PipelineDefinition.to_config`: importable definitions written back; load reads them again."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from pipeline import (
    ConfigError,
    ExecutionPattern,
    PipelineDefinition,
    RetryConfig,
    StageDefinition,
)
from pipeline.config import CelCondition, load
from pipeline.functions import FunctionStage
from tests.unit.config import stages as S
from tests.unit.config.test_load import YAML

FORMATS = ["yaml", "toml", "json"]


def _unwrap(stage: Any) -> Any:
    return getattr(stage, "__wrapped_stage__", stage)


def _same_stage(a: Any, b: Any) -> bool:
    a, b = _unwrap(a), _unwrap(b)
    if isinstance(a, FunctionStage) and isinstance(b, FunctionStage):
        return a.fn is b.fn
    return type(a) is type(b) and vars(a) == vars(b) if hasattr(a, "__dict__") else a is b


def assert_equivalent(a: PipelineDefinition, b: PipelineDefinition, *, toml: bool) -> None:
    assert (a.name, a.description, a.fail_fast) == (b.name, b.description, b.fail_fast)
    assert len(a.stages) == len(b.stages)
    for x, y in zip(a.stages, b.stages, strict=True):
        assert _same_stage(x.stage, y.stage), (x.id, x.stage, y.stage)
        for f in dataclasses.fields(StageDefinition):
            if f.name == "stage":
                continue
            left, right = getattr(x, f.name), getattr(y, f.name)
            if toml and f.name == "max_concurrent_fan_out" and left is None:
                left = 0  # TOML has no null: 0 means "no cap" too
            assert left == right, (x.id, f.name, left, right)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_loaded_file_round_trips(fmt: str) -> None:
    original = load(YAML, format="yaml")
    text = original.to_config(fmt)  # type: ignore[arg-type]
    again = load(text, format=fmt)  # type: ignore[arg-type]
    assert_equivalent(original, again, toml=fmt == "toml")
    assert isinstance(again.stages[0].stage, S.Add)
    assert again.stages[0].stage.n == 2  # the params came along


def _python_definition() -> PipelineDefinition:
    return PipelineDefinition(
        "built",
        [
            StageDefinition("a", S.double, description="a @stage function"),
            StageDefinition("b", FunctionStage(S.triple), inputs=["a"], timeout_ms=250.5),
            StageDefinition("c", S.ADD_TEN, inputs=["b"], cache_version=3, uses={"llm": 2}),
            StageDefinition("d", S.Pair(), inputs=["a", "c"], critical=False),
            StageDefinition(
                "e",
                S.Facts(),
                inputs=["d"],
                pattern=ExecutionPattern.FAN_OUT,
                max_concurrent_fan_out=None,
                batch_size=2,
                runner="threads",
                condition=CelCondition("size(input) == 2"),
                retry_config=RetryConfig(
                    max_attempts=4,
                    retry_on=(S.Flaky,),
                    retry_if=S.retry_always,
                    jitter=0.5,
                    jitter_seed=7,
                    retryable_errors=["busy"],
                ),
            ),
        ],
        description="made in Python",
        fail_fast=False,
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_python_definition_of_importable_parts_round_trips(fmt: str) -> None:
    original = _python_definition()
    text = original.to_config(fmt)  # type: ignore[arg-type]
    again = load(text, format=fmt)  # type: ignore[arg-type]
    assert_equivalent(original, again, toml=fmt == "toml")
    assert again.stages[2].stage is S.ADD_TEN  # a module-level instance, by its own name
    assert again.stages[0].stage is S.double


def test_each_format_is_valid_syntax() -> None:
    definition = _python_definition()
    assert json.loads(definition.to_config("json"))["name"] == "built"
    assert tomllib.loads(definition.to_config("toml"))["stages"][4]["max_concurrent_fan_out"] == 0
    assert yaml.safe_load(definition.to_config())["stages"][1]["stage"].endswith(":triple")


class _Local:
    name = "local"

    async def execute(self, input: Any, context: Any) -> Any:  # pragma: no cover
        return input


def _cases() -> list[tuple[str, StageDefinition, str]]:
    def nested(x: Any, ctx: Any) -> Any:  # pragma: no cover
        return x

    class Inner(_Local):
        pass

    return [
        ("lambda", StageDefinition("s", FunctionStage(lambda x, c: x)), "'stage'"),
        ("local function", StageDefinition("s", FunctionStage(nested)), "'stage'"),
        ("local class", StageDefinition("s", Inner()), "'stage'"),
        ("instance with arguments", StageDefinition("s", S.Add(5)), "'stage'"),
        ("python condition", StageDefinition("s", S.double, condition=lambda c: True),
         "'condition'"),
        ("retry_if lambda", StageDefinition(
            "s", S.double, retry_config=RetryConfig(retry_if=lambda e: True)),
         "'retry_config.retry_if'"),
        ("local exception", StageDefinition(
            "s", S.double, retry_config=RetryConfig(retry_on=(type("E", (Exception,), {}),))),
         "'retry_config.retry_on'"),
        ("declared type", StageDefinition("s", S.double, input_type=int), "'input_type'"),
    ]  # fmt: skip


@pytest.mark.parametrize(("what", "sdef", "field"), _cases(), ids=[c[0] for c in _cases()])
def test_a_part_that_is_not_importable_names_the_stage_and_field(
    what: str, sdef: StageDefinition, field: str
) -> None:
    definition = PipelineDefinition("p", [sdef])
    for fmt in FORMATS:
        with pytest.raises(ConfigError) as caught:
            definition.to_config(fmt)  # type: ignore[arg-type]
        message = str(caught.value)
        assert "stage 's'" in message
        assert f"field {field}" in message
        assert caught.value.fix


def test_the_python_flagship_names_its_lambda_condition() -> None:
    from examples.render_pipeline import PIPELINE

    with pytest.raises(ConfigError, match="stage 'lyrics' field 'condition'"):
        PIPELINE.to_config()


def test_toml_cannot_hold_a_null_param() -> None:
    text = (
        'name: p\nstages: [{id: a, stage: "tests.unit.config.stages:Record", params: {key: null}}]'
    )
    definition = load(text, format="yaml")
    assert "key: null" in definition.to_config("yaml")
    with pytest.raises(ConfigError, match="cannot be written as TOML"):
        definition.to_config("toml")


class Unhashable:
    """A stage that cannot be a dict key."""

    name = "unhashable"
    __hash__ = None  # type: ignore[assignment]

    async def execute(self, input: Any, context: Any) -> Any:  # pragma: no cover
        return input


def test_an_unhashable_stage_class_with_no_arguments_is_written_by_its_class() -> None:
    original = PipelineDefinition("p", [StageDefinition("a", Unhashable())])
    text = original.to_config("json")
    assert json.loads(text)["stages"][0] == {"id": "a", "stage": f"{__name__}:Unhashable"}

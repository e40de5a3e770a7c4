"""`pipeline.config.load`: the three formats, references, the registry and the schema."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import pytest

from pipeline import (
    ConfigError,
    ExecutionPattern,
    PipelineDefinition,
    PipelineError,
    PipelineExecutor,
    RetryConfig,
    StageDefinition,
)
from pipeline.builder import TupleInputStage
from pipeline.config import CelCondition, json_schema, load
from pipeline.functions import FunctionStage
from tests.unit.config import stages as S

if TYPE_CHECKING:
    from pathlib import Path

M = "tests.unit.config.stages"

YAML = f"""
name: demo
description: three stages
fail_fast: false
stages:
  - id: start
    stage: {M}:Add
    params: {{n: 2}}
  - id: twice
    stage: {M}:double
    inputs: [start]
    pattern: SEQUENTIAL
    timeout_ms: 500
    retry_config:
      max_attempts: 3
      initial_delay_ms: 5
      retry_on: ["{M}:Flaky", "builtins:TimeoutError"]
      retry_if: {M}:retry_always
      jitter: full
  - id: thrice
    stage: {M}:triple
    inputs: [twice]
    when: outputs.twice > 4
    critical: false
    cache: false
    cache_version: "2"
    runner: inline
    description: the last one
"""

TOML = f"""
name = "demo"
description = "three stages"
fail_fast = false

[[stages]]
id = "start"
stage = "{M}:Add"
params = {{ n = 2 }}

[[stages]]
id = "twice"
stage = "{M}:double"
inputs = ["start"]
pattern = "SEQUENTIAL"
timeout_ms = 500

[stages.retry_config]
max_attempts = 3
initial_delay_ms = 5
retry_on = ["{M}:Flaky", "builtins:TimeoutError"]
retry_if = "{M}:retry_always"
jitter = "full"

[[stages]]
id = "thrice"
stage = "{M}:triple"
inputs = ["twice"]
when = "outputs.twice > 4"
critical = false
cache = false
cache_version = "2"
runner = "inline"
description = "the last one"
"""

JSON = json.dumps(
    {
        "name": "demo",
        "description": "three stages",
        "fail_fast": False,
        "stages": [
            {"id": "start", "stage": f"{M}:Add", "params": {"n": 2}},
            {
                "id": "twice",
                "stage": f"{M}:double",
                "inputs": ["start"],
                "pattern": "SEQUENTIAL",
                "timeout_ms": 500,
                "retry_config": {
                    "max_attempts": 3,
                    "initial_delay_ms": 5,
                    "retry_on": [f"{M}:Flaky", "builtins:TimeoutError"],
                    "retry_if": f"{M}:retry_always",
                    "jitter": "full",
                },
            },
            {
                "id": "thrice",
                "stage": f"{M}:triple",
                "inputs": ["twice"],
                "when": "outputs.twice > 4",
                "critical": False,
                "cache": False,
                "cache_version": "2",
                "runner": "inline",
                "description": "the last one",
            },
        ],
    },
    indent=2,
)

DOCS = {"yaml": YAML, "toml": TOML, "json": JSON}


def _check_demo(definition: PipelineDefinition) -> None:
    assert definition.name == "demo"
    assert definition.description == "three stages"
    assert definition.fail_fast is False
    start, twice, thrice = definition.stages
    assert isinstance(start.stage, S.Add)
    assert start.stage.n == 2
    assert twice.stage is S.double  # a @stage instance is used as is
    assert twice.pattern is ExecutionPattern.SEQUENTIAL
    assert twice.timeout_ms == 500
    assert twice.retry_config == RetryConfig(
        max_attempts=3,
        initial_delay_ms=5,
        retry_on=(S.Flaky, TimeoutError),
        retry_if=S.retry_always,
        jitter="full",
    )
    assert isinstance(thrice.stage, FunctionStage)
    assert thrice.stage.fn is S.triple
    assert thrice.condition == CelCondition("outputs.twice > 4")
    assert (thrice.critical, thrice.cache, thrice.cache_version) == (False, False, "2")
    assert (thrice.runner, thrice.description) == ("inline", "the last one")


@pytest.mark.parametrize("fmt", ["yaml", "toml", "json"])
def test_each_format_gives_the_same_definition(fmt: str) -> None:
    definition = load(DOCS[fmt], format=fmt)  # type: ignore[arg-type]
    _check_demo(definition)


@pytest.mark.parametrize(("fmt", "suffix"), [("yaml", ".yaml"), ("yaml", ".yml"),
                                             ("toml", ".toml"), ("json", ".json")])  # fmt: skip
def test_a_path_or_a_str_naming_a_file_is_read_by_suffix(
    tmp_path: Path, fmt: str, suffix: str
) -> None:
    path = tmp_path / f"flow{suffix.upper() if suffix == '.yml' else suffix}"
    path.write_text(DOCS[fmt], encoding="utf-8")
    _check_demo(load(path))
    _check_demo(load(str(path)))


def test_text_needs_a_format() -> None:
    with pytest.raises(ConfigError, match='format="yaml"') as caught:
        load(YAML)
    assert caught.value.source == "<text>"
    with pytest.raises(ConfigError, match="no such file"):
        load("missing/flow.yaml")
    with pytest.raises(ConfigError, match="unknown format 'xml'"):
        load(YAML, format="xml")  # type: ignore[arg-type]


def test_a_missing_path_and_an_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.yaml")
    odd = tmp_path / "flow.ini"
    odd.write_text("x")
    with pytest.raises(ConfigError, match=r"unknown file suffix '\.ini'"):
        load(odd)
    odd.write_text(YAML)
    _check_demo(load(odd, format="yaml"))  # an explicit format wins over the suffix


def test_config_error_is_a_pipeline_error_exported_from_pipeline() -> None:
    import pipeline

    assert pipeline.ConfigError is ConfigError
    assert issubclass(ConfigError, PipelineError)


def test_field_names_are_those_of_the_definitions() -> None:
    schema = json_schema()
    stage_keys = set(schema["$defs"]["StageSpec"]["properties"])
    fields = {f.name for f in dataclasses.fields(StageDefinition)}
    python_only = {"condition", "input_type", "output_type"}  # when: / annotations instead
    assert stage_keys == (fields - python_only) | {"params", "when"}
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(PipelineDefinition)}
    retry_keys = set(schema["$defs"]["RetrySpec"]["properties"])
    assert retry_keys == {f.name for f in dataclasses.fields(RetryConfig) if f.init}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("spelling", ["fan_out", "FAN_OUT", "Fan_Out"])
def test_pattern_is_the_enum_value_case_insensitive(spelling: str) -> None:
    text = f"""
name: p
stages:
  - {{id: a, stage: "{M}:Record"}}
  - {{id: b, stage: "{M}:Add", inputs: [a], pattern: {spelling}, batch_size: 2, buffer: 3,
      max_concurrent_fan_out: 7, uses: {{}}}}
"""
    b = load(text, format="yaml").stages[1]
    assert (b.pattern, b.batch_size, b.buffer, b.max_concurrent_fan_out) == (
        ExecutionPattern.FAN_OUT, 2, 3, 7,
    )  # fmt: skip


def test_references_class_function_and_instance() -> None:
    text = f"""
name: p
stages:
  - {{id: a, stage: "{M}:ADD_TEN"}}
  - {{id: b, stage: "{M}:Add", inputs: [a]}}
  - {{id: c, stage: "{M}:triple", inputs: [b]}}
"""
    a, b, c = load(text, format="yaml").stages
    assert a.stage is S.ADD_TEN
    assert isinstance(b.stage, S.Add)
    assert b.stage.n == 1  # the class's default: no params
    assert isinstance(c.stage, FunctionStage)
    assert c.stage.fn is S.triple


def test_registry_names_and_no_imports() -> None:
    registry: dict[str, object] = {"add": S.Add, "triple": S.triple, "ten": S.ADD_TEN}
    text = """
name: p
stages:
  - {id: a, stage: ten}
  - {id: b, stage: add, params: {n: 5}, inputs: [a]}
  - {id: c, stage: triple, inputs: [b]}
"""
    a, b, c = load(text, format="yaml", registry=registry, allow_imports=False).stages
    assert a.stage is S.ADD_TEN
    assert isinstance(b.stage, S.Add)
    assert b.stage.n == 5
    assert isinstance(c.stage, FunctionStage)
    assert c.stage.fn is S.triple


def test_a_stage_annotated_with_a_tuple_receives_its_inputs_as_a_tuple() -> None:
    text = f"""
name: p
stages:
  - {{id: a, stage: "{M}:Add", params: {{n: 1}}}}
  - {{id: b, stage: "{M}:Add", params: {{n: 2}}}}
  - {{id: pair, stage: "{M}:Pair", inputs: [b, a]}}
"""
    pair = load(text, format="yaml").stages[2]
    assert isinstance(pair.stage, TupleInputStage)


@pytest.mark.anyio
async def test_a_loaded_definition_runs(anyio_backend: str) -> None:
    text = f"""
name: p
stages:
  - {{id: a, stage: "{M}:Add", params: {{n: 1}}}}
  - {{id: b, stage: "{M}:Add", params: {{n: 2}}}}
  - {{id: pair, stage: "{M}:Pair", inputs: [b, a]}}
"""
    result = await PipelineExecutor().execute(load(text, format="yaml"), 10)
    assert result.success
    assert result.outputs["pair"] == [12, 11]


def test_schema_describes_the_format() -> None:
    schema = json_schema()
    assert schema["required"] == ["name"]
    stage = schema["$defs"]["StageSpec"]
    assert set(stage["required"]) == {"id", "stage"}
    assert stage["additionalProperties"] is False


def test_importing_the_package_loads_neither_yaml_nor_cel() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pipeline.config\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('yaml', 'cel_expr_python', 'cel', 'celpy')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=25, check=True
    )
    assert done.stdout.strip() == "[]"

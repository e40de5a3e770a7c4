"""Every error in a file is one `ConfigError` at the offending key or value, saying the fix."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from pipeline import ConfigError
from pipeline.config import load

if TYPE_CHECKING:
    from pathlib import Path

M = "tests.unit.config.stages"

BASE = f"""name: p
stages:
  - id: a
    stage: {M}:Add
  - id: b
    stage: {M}:Add
    inputs: [a]
"""
# line 6 is `    stage: ...` of b; line 7 its inputs.

YAML_CASES = [
    # (what, replace this, with that, line, column, words in the message)
    ("unknown key", "    inputs: [a]", "    inputz: [a]", 7, 5,
     ["unknown key 'inputz'", "did you mean 'inputs'"]),
    ("unknown top key", "name: p", "name: p\nversion: 2", 2, 1, ["unknown key 'version'"]),
    ("wrong type", "    inputs: [a]", "    inputs: [a]\n    critical: 'no'", 8, 15,
     ["stages[1].critical is 'no'", "true or false"]),
    ("str for int", "    inputs: [a]", "    inputs: [a]\n    timeout_ms: '5'", 8, 17,
     ["timeout_ms", "a number"]),
    ("missing field", f"    stage: {M}:Add\n    inputs", "    inputs", 5, 5,
     ["stages[1].stage is missing", "add 'stage'"]),
    ("bad pattern", "    inputs: [a]", "    inputs: [a]\n    pattern: sideways", 8, 14,
     ["unknown pattern 'sideways'", "fan_out"]),
    ("missing module", f"    stage: {M}:Add\n    inputs", "    stage: nosuch.mod:X\n    inputs",
     6, 12, ["cannot import module 'nosuch.mod'"]),
    ("missing attribute", f"    stage: {M}:Add\n    inputs",
     f"    stage: {M}:Nope\n    inputs", 6, 12, ["attribute not found"]),
    ("not a stage", f"    stage: {M}:Add\n    inputs",
     f"    stage: {M}:NOT_A_STAGE\n    inputs", 6, 12, ["is a int, not a stage"]),
    ("params on a function", f"    stage: {M}:Add\n    inputs",
     f"    stage: {M}:triple\n    params: {{n: 1}}\n    inputs", 7, 13,
     ["params given", "remove params"]),
    ("bad params", "    inputs: [a]", "    inputs: [a]\n    params: {m: 1}", 8, 13,
     ["Add(**params) raised TypeError", "fix params"]),
    ("raising constructor", f"    stage: {M}:Add\n    inputs",
     f"    stage: {M}:Cranky\n    inputs", 6, 12, ["Cranky(**params) raised RuntimeError"]),
    ("FAN_OUT-only option", "    inputs: [a]", "    inputs: [a]\n    batch_size: 4", 8, 17,
     ["batch_size is set on a SEQUENTIAL stage", "FAN_OUT stages only"]),
    ("invalid value", "    inputs: [a]", "    inputs: [a]\n    timeout_ms: -3", 8, 17,
     ["timeout_ms", "positive"]),
    ("retry field", "    inputs: [a]", "    inputs: [a]\n    retry_config: {max_attempts: 0}", 8,
     34, ["retry_config.max_attempts", ">= 1"]),
    ("retry_on not an exception", "    inputs: [a]",
     f"    inputs: [a]\n    retry_config: {{retry_on: ['{M}:Add']}}", 8, 31,
     ["not an exception class"]),
    ("unknown input", "    inputs: [a]", "    inputs: [zz]", 7, 13, ["unknown stage 'zz'"]),
    ("cycle", "  - id: a\n", "  - id: a\n    inputs: [b]\n", 4, 13, ["Circular dependency", "a -> b -> a"]),
    ("duplicate id", "  - id: b", "  - id: a", 5, 9, ["Duplicate stage IDs: 'a'"]),
    ("CEL syntax", "    inputs: [a]", "    inputs: [a]\n    when: outputs.a >", 8, 22,
     ["Syntax error"]),
    ("CEL unknown variable", "    inputs: [a]", "    inputs: [a]\n    when: secrets.key == 1",
     8, 18, ["undeclared reference to 'secrets", "state, metrics, outputs, input"]),
    ("CEL not a bool", "    inputs: [a]", "    inputs: [a]\n    when: '1 + 2'", 8, 11,
     ["gives a int, not a bool"]),
    ("CEL quoted", "    inputs: [a]", '    inputs: [a]\n    when: "state.x == nope"', 8, 23,
     ["undeclared reference to 'nope'"]),
    ("YAML syntax", "    inputs: [a]", "    inputs: [a\n", 9, 1, ["invalid YAML"]),
    ("duplicate key", "    inputs: [a]", "    inputs: [a]\n    inputs: [a]", 8, 5,
     ["duplicate key 'inputs'"]),
    ("conditional without when", "    inputs: [a]", "    inputs: [a]\n    pattern: conditional",
     8, 14, ["CONDITIONAL"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "old", "new", "line", "column", "words"),
    YAML_CASES,
    ids=[c[0] for c in YAML_CASES],
)
def test_yaml_errors_point_at_the_key_or_value(
    what: str, old: str, new: str, line: int, column: int, words: list[str]
) -> None:
    text = BASE.replace(old, new, 1)
    assert text != BASE
    with pytest.raises(ConfigError) as caught:
        load(text, format="yaml")
    error = caught.value
    assert (error.line, error.column) == (line, column), str(error)
    message = str(error)
    assert message.startswith(f"<text>:{line}:{column}: ")
    for word in words:
        assert word in message
    assert "\n" not in message
    assert error.fix  # says what to change


def test_imports_can_be_refused() -> None:
    with pytest.raises(ConfigError, match="imports are disabled") as caught:
        load(BASE, format="yaml", allow_imports=False, registry={})
    assert (caught.value.line, caught.value.column) == (4, 12)


def test_registry_misses_suggest_names() -> None:
    text = "name: p\nstages:\n  - {id: a, stage: ad}\n"
    with pytest.raises(ConfigError, match="did you mean 'add'") as caught:
        load(text, format="yaml", registry={"add": object()})
    assert (caught.value.line, caught.value.column) == (3, 20)
    with pytest.raises(ConfigError, match="no registry was given"):
        load(text, format="yaml")


def test_json_errors_carry_positions_of_syntax_keys_and_values() -> None:
    with pytest.raises(ConfigError, match="invalid JSON") as caught:
        load('{"name": "p",\n "stages": [}', format="json")
    assert (caught.value.line, caught.value.column) == (2, 13)
    doc = {"name": "p", "stages": [{"id": "a", "stage": f"{M}:Add", "bogus": 1,
                                    "critical": "yes"}]}  # fmt: skip
    text = json.dumps(doc, indent=2)
    with pytest.raises(ConfigError, match="unknown key 'bogus'") as caught:
        load(text, format="json")
    assert (caught.value.line, caught.value.column) == (7, 7)  # at "bogus"
    del doc["stages"][0]["bogus"]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="critical is 'yes'") as caught:
        load(json.dumps(doc, indent=2), format="json")
    assert (caught.value.line, caught.value.column) == (7, 19)  # at the value


def test_toml_errors_carry_positions() -> None:
    with pytest.raises(ConfigError, match="invalid TOML") as caught:
        load('name = "p"\nstages = [\n', format="toml")
    assert caught.value.line == 3
    assert caught.value.column is not None
    text = f'name = "p"\n\n[[stages]]\nid = "a"\nstage = "{M}:Add"\n\n[[stages]]\nid = "b"\nstage = "{M}:Add"\nstagee = "x"\n'
    with pytest.raises(ConfigError, match="unknown key 'stagee'") as caught:
        load(text, format="toml")
    assert (caught.value.line, caught.value.column) == (10, 1)


def test_not_a_mapping() -> None:
    for text, fmt in (("- a\n- b\n", "yaml"), ("[1]", "json"), ("", "yaml")):
        with pytest.raises(ConfigError, match="not a mapping") as caught:
            load(text, format=fmt)  # type: ignore[arg-type]
        assert caught.value.line == 1 or fmt == "json"


def test_a_bad_file_never_half_loads() -> None:
    # the first stages are fine, the last is not: nothing comes back, only the error
    text = BASE + f"  - id: c\n    stage: {M}:Add\n    inputs: [b]\n    when: nope\n"
    with pytest.raises(ConfigError, match="nope"):
        load(text, format="yaml")


def test_a_file_that_is_not_utf8_points_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: p\ndescription: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        load(path)
    assert (caught.value.line, caught.value.column) == (2, 17)

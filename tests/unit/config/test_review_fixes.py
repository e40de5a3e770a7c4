"""Review findings on declarative files: positions inside escaped values, YAML merge keys and
tags, JSON duplicate keys, TOML dotted keys, and what a CEL condition converts per evaluation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from pipeline import ConfigError, PipelineContext, PipelineExecutor, StageResult, StageStatus
from pipeline.config import load

M = "tests.unit.config.stages"


def error_of(text: str, fmt: str = "yaml", **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(text, format=fmt, **kw)  # type: ignore[arg-type]
    return caught.value


def pointed_at(text: str, error: ConfigError) -> str:
    assert error.line is not None, str(error)
    assert error.column is not None, str(error)
    return text.splitlines()[error.line - 1][error.column - 1 :]


# -- CEL positions inside quoted values ------------------------------------------------------------
YAML_STAGE = f"name: p\nstages:\n  - id: a\n    stage: {M}:Add\n    when: "
TOML_STAGE = f'name = "p"\n[[stages]]\nid = "a"\nstage = "{M}:Add"\nwhen = '
JSON_STAGE = f'{{"name": "p",\n "stages": [{{"id": "a", "stage": "{M}:Add",\n  "when": '


@pytest.mark.parametrize(
    ("text", "fmt", "starts"),
    [
        # written verbatim: the error points into the expression, at the unknown name
        (YAML_STAGE + "state.a == 1 && foo == 1\n", "yaml", "foo == 1"),
        (YAML_STAGE + '"state.a == 1 && foo == 1"\n', "yaml", "foo == 1"),
        (YAML_STAGE + "'state.a == 1 && foo == 1'\n", "yaml", "foo == 1"),
        (TOML_STAGE + '"state.a == 1 && foo == 1"\n', "toml", "foo == 1"),
        (TOML_STAGE + "'state.a == \"x\" && foo == 1'\n", "toml", "foo == 1"),
        (JSON_STAGE + '"state.a == 1 && foo == 1"}]}', "json", "foo == 1"),
        # escapes make the source longer than the value: the error points at the value
        (YAML_STAGE + '"state.a == \\"x\\" && foo == 1"\n', "yaml", '"state.a'),
        (YAML_STAGE + "'state.a == ''x'' && foo == 1'\n", "yaml", "'state.a"),
        (YAML_STAGE + '"state.a == \\x27x\\x27 && foo == 1"\n', "yaml", '"state.a'),
        (TOML_STAGE + '"state.a == \\"x\\" && foo == 1"\n', "toml", '"state.a'),
        (JSON_STAGE + '"state.a == \\"x\\" && foo == 1"}]}', "json", '"state.a'),
        (JSON_STAGE + '"state.a == \\u0031 && foo == 1"}]}', "json", '"state.a'),
    ],
)
def test_a_cel_error_column_is_exact_or_points_at_the_value(
    text: str, fmt: str, starts: str
) -> None:
    error = error_of(text, fmt)
    assert "undeclared reference to 'foo'" in str(error)
    assert pointed_at(text, error).startswith(starts), (pointed_at(text, error), str(error))


# -- YAML merge keys and tags ----------------------------------------------------------------------
def test_yaml_merge_keys_work_and_the_mapping_s_own_keys_win() -> None:
    text = f"""
name: merged
stages:
  - &base
    id: a
    stage: {M}:Add
    params: {{n: 5}}
    critical: false
    timeout_ms: 500
  - <<: *base
    id: b
    inputs: [a]
    timeout_ms: 900
  - <<: [*base, {{critical: true, description: second}}]
    id: c
    inputs: [b]
"""
    a, b, c = load(text, format="yaml").stages
    assert (b.id, b.inputs, b.timeout_ms, b.critical) == ("b", ("a",), 900, False)
    assert getattr(b.stage, "n", None) == 5  # params merged too
    assert (c.critical, c.description, c.timeout_ms) == (False, "second", 500)  # first wins
    assert a.timeout_ms == 500


def test_an_error_in_a_merged_value_points_where_it_is_written() -> None:
    text = f"""name: merged
stages:
  - &base
    id: a
    stage: {M}:Add
    timeout_ms: -1
  - <<: *base
    id: b
"""
    error = error_of(text)
    assert "timeout_ms" in str(error)
    assert (error.line, pointed_at(text, error)) == (6, "-1")


def test_a_key_twice_in_one_mapping_is_still_an_error_with_merge_keys() -> None:
    text = f"""name: merged
stages:
  - &base {{id: a, stage: "{M}:Add"}}
  - <<: *base
    id: b
    id: c
"""
    error = error_of(text)
    assert "duplicate key 'id'" in str(error)
    assert (error.line, pointed_at(text, error)) == (6, "id: c")


def test_merges_of_merges_cannot_blow_up_the_document() -> None:
    lines = [f'name: p\nstages:\n  - &l0 {{id: a, stage: "{M}:Add", x1: 1, x2: 2, x3: 3}}']
    for level in range(1, 8):
        merged = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"  - &l{level} {{<<: [{merged}], id: s{level}}}")
    error = error_of("\n".join(lines) + "\n")
    assert "too large" in str(error)
    recursive = error_of(f'name: p\nstages:\n  - &a {{id: a, stage: "{M}:Add", <<: *a}}\n')
    assert "nested too deeply" in str(recursive)


@pytest.mark.parametrize("merged", ["3", "[1, 2]", "text"])
def test_a_merge_of_something_else_than_a_mapping_says_so(merged: str) -> None:
    text = f"name: merged\nstages:\n  - id: a\n    stage: {M}:Add\n    <<: {merged}\n"
    error = error_of(text)
    assert "merge key (<<) must be followed by a mapping" in str(error)
    assert error.line == 3


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object:tests.unit.config.stages.Add {n: 3}", "python/object"),
        ('!!python/object/apply:os.system ["echo hi"]', "python/object/apply"),
        ("!!set {a: null}", "set"),
        ("!custom {a: 1}", "!custom"),
    ],
)
def test_a_tag_on_a_mapping_or_list_is_refused_not_dropped(value: str, tag: str) -> None:
    text = f"name: p\nstages:\n  - id: a\n    stage: {M}:Add\n    params: {value}\n"
    error = error_of(text)
    assert "is not supported" in str(error)
    assert tag in str(error)
    assert pointed_at(text, error) == value


# -- JSON duplicate keys, TOML dotted keys ---------------------------------------------------------
def test_a_json_key_twice_is_an_error_at_the_second() -> None:
    text = f'{{"name": "p",\n "stages": [{{"id": "a", "stage": "{M}:Add",\n   "id": "b"}}]}}'
    error = error_of(text, "json")
    assert "duplicate key 'id'" in str(error)
    assert (error.line, pointed_at(text, error)) == (3, '"id": "b"}]}')


def test_a_toml_dotted_key_error_points_at_its_value() -> None:
    text = f'name = "p"\n[[stages]]\nid = "a"\nstage = "{M}:Add"\nretry_config.max_attempts = "x"\n'
    error = error_of(text, "toml")
    assert "max_attempts" in str(error)
    assert (error.line, pointed_at(text, error)) == (5, '"x"')


# -- what a condition converts ---------------------------------------------------------------------
class Unconvertible(Mapping[str, int]):
    """An output a condition cannot turn into CEL data (reading its items raises)."""

    def __getitem__(self, key: str) -> int:
        raise RuntimeError("read")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("read")

    def __len__(self) -> int:
        return 1


class Slotted:
    __slots__ = ("_hidden", "level")

    def __init__(self, level: int) -> None:
        self.level = level
        self._hidden = "x"


async def make_unconvertible(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
    return StageResult.success(Unconvertible())


async def make_slotted(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
    return StageResult.success(Slotted(2))


REGISTRY = {"unconvertible": make_unconvertible, "slotted": make_slotted}


def gated(when: str) -> Any:
    text = f"""
name: lazy
fail_fast: false
stages:
  - {{id: big, stage: unconvertible}}
  - {{id: small, stage: slotted, inputs: [big]}}
  - {{id: gated, stage: "{M}:Record", inputs: [small], when: "{when}"}}
"""
    return load(text, format="yaml", registry=REGISTRY)


@pytest.mark.anyio
async def test_a_condition_converts_only_the_outputs_it_names(anyio_backend: str) -> None:
    result = await PipelineExecutor().execute(gated("outputs.small.level == 2"), None)
    assert result.stage_results["gated"].status is StageStatus.SUCCEEDED  # big was never read
    everything = await PipelineExecutor().execute(gated("outputs.size() == 2"), None)
    failed = everything.stage_results["gated"]
    assert failed.status is StageStatus.FAILED  # a use of the whole map converts all of it
    assert "condition of stage 'gated' raised" in (failed.error or "")


@pytest.mark.anyio
async def test_slotted_objects_become_maps_of_their_public_slots(anyio_backend: str) -> None:
    text = f"""
name: slots
stages:
  - {{id: small, stage: slotted}}
  - {{id: gated, stage: "{M}:Record", inputs: [small],
      when: "input.level == 2 && !has(input._hidden)"}}
"""
    result = await PipelineExecutor().execute(load(text, format="yaml", registry=REGISTRY), None)
    assert result.stage_results["gated"].status is StageStatus.SUCCEEDED, result.stage_results

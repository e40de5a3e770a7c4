"""Fuzz: random and mutated documents, in all three formats, only ever raise `ConfigError`.

The loader runs with `allow_imports=False` and a registry (as for an untrusted file), so a
mutation can reach every stage of loading (syntax, schema, references, params, CEL, wiring)
without importing anything. Mutations start from valid files (the flagship example and a
test document, in YAML, TOML and JSON). Derandomized: the same cases every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import examples.render_pipeline as flagship
import pytest
import yaml  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings, strategies as st

from pipeline import ConfigError, PipelineDefinition
from pipeline.config import load
from tests.unit.config import stages as S
from tests.unit.config.test_load import JSON, TOML, YAML

FUZZ = settings(
    max_examples=700,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
M = "tests.unit.config.stages:"
REGISTRY: dict[str, object] = {
    "Add": S.Add, "double": S.double, "triple": S.triple, "Record": S.Record, "Pair": S.Pair,
    "Facts": S.Facts, "Cranky": S.Cranky, "ADD_TEN": S.ADD_TEN, "NOT_A_STAGE": S.NOT_A_STAGE,
    "Flaky": S.Flaky, "retry_always": S.retry_always, "TimeoutError": TimeoutError,
    **{name: getattr(flagship, name) for name in dir(flagship) if name.endswith("Stage")},
}  # fmt: skip
ROOT = Path(__file__).resolve().parents[3]
FLAGSHIP = (ROOT / "examples" / "render_pipeline.yaml").read_text(encoding="utf-8")


def _registry_names(text: str) -> str:
    return text.replace(M, "").replace("examples.render_pipeline:", "").replace("builtins:", "")


SEEDS: list[tuple[str, str]] = [
    ("yaml", _registry_names(YAML)),
    ("toml", _registry_names(TOML)),
    ("json", _registry_names(JSON)),
    ("yaml", _registry_names(FLAGSHIP)),
    ("json", json.dumps(yaml.safe_load(_registry_names(FLAGSHIP)))),
]


def _load(text: str, fmt: str) -> None:
    try:
        result = load(text, format=fmt, registry=REGISTRY, allow_imports=False)  # type: ignore[arg-type]
    except ConfigError as exc:
        error = exc
    else:
        assert isinstance(result, PipelineDefinition)
        assert not result.issues  # whatever loads is valid
        return
    message = str(error)
    assert message
    assert "\n" not in message  # one line
    if fmt == "yaml":  # YAML errors always carry a line and a column
        assert error.line is not None
        assert error.column is not None


def test_the_seeds_load() -> None:
    for fmt, text in SEEDS:
        load(text, format=fmt, registry=REGISTRY, allow_imports=False)  # type: ignore[arg-type]


@FUZZ
@given(text=st.text(max_size=200), fmt=st.sampled_from(["yaml", "toml", "json"]))
def test_random_text(text: str, fmt: str) -> None:
    _load(text, fmt)


EDIT = st.tuples(
    st.sampled_from(["delete", "insert", "replace", "duplicate_line", "swap_lines"]),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=40),
    st.text(alphabet=st.sampled_from(list(" \n\t:-[]{}\"'#=,.0123456789abcxyz_!&|<>()")),
            max_size=8),
)  # fmt: skip


def _mutate(text: str, edits: list[tuple[str, int, int, str]]) -> str:
    for kind, where, size, chunk in edits:
        at = where % (len(text) + 1)
        if kind == "delete":
            text = text[:at] + text[at + size :]
        elif kind == "insert":
            text = text[:at] + chunk + text[at:]
        elif kind == "replace":
            text = text[:at] + chunk + text[at + len(chunk) :]
        else:
            lines = text.split("\n")
            i, j = where % len(lines), (where + size) % len(lines)
            if kind == "duplicate_line":
                lines.insert(i, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


@FUZZ
@given(seed=st.sampled_from(SEEDS), edits=st.lists(EDIT, min_size=1, max_size=4))
def test_mutated_text_of_valid_files(
    seed: tuple[str, str], edits: list[tuple[str, int, int, str]]
) -> None:
    fmt, text = seed
    _load(_mutate(text, edits), fmt)


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["Add", "double", "x:y", "a", "start", "fan_out", "state.x > 1",
                     "outputs.start == 3", "size(input) > 0", "-1", "full"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=6,
)
KEYS = st.sampled_from(["id", "stage", "params", "inputs", "pattern", "when", "retry_config",
                        "timeout_ms", "critical", "max_concurrent_fan_out", "cache_version",
                        "uses", "batch_size", "buffer", "runner", "bogus", "retry_on",
                        "max_attempts", "jitter", "name", "stages"])  # fmt: skip


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*path, i))
    return found


@FUZZ
@given(
    seed=st.sampled_from(SEEDS[:3] + SEEDS[3:4]),
    choice=st.integers(min_value=0, max_value=10_000),
    key=KEYS,
    value=VALUES,
    fmt=st.sampled_from(["yaml", "json"]),
)
def test_structurally_mutated_documents(
    seed: tuple[str, str], choice: int, key: str, value: Any, fmt: str
) -> None:
    seed_fmt, text = seed
    import tomllib

    data = tomllib.loads(text) if seed_fmt == "toml" else yaml.safe_load(text)
    paths = _paths(data)
    path = paths[choice % len(paths)]
    node: Any = data
    for part in path:
        node = node[part]
    if isinstance(node, dict):
        node[key] = value
    elif isinstance(node, list):
        node.append(value)
    elif path:
        parent: Any = data
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = value
    try:
        out = json.dumps(data) if fmt == "json" else yaml.safe_dump(data)
    except (ValueError, OverflowError):
        return
    _load(out, fmt)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_hostile_documents(fmt: str) -> None:
    bombs = {
        "yaml": ["a: &a [*a]", "a: &a [" + "*a, " * 50 + "]", "[" * 5000 + "]" * 5000,
                 "!!python/object/apply:os.system ['true']", "name: !!binary 'AAA'"],
        "json": ["[" * 100_000 + "]" * 100_000, '{"name": "\\ud800", "stages": []}'],
    }  # fmt: skip
    for text in bombs[fmt]:
        _load(text, fmt)

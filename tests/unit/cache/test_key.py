"""Cache keys: canonical fingerprints of inputs, versions and (opted-in) stage source."""

from __future__ import annotations

import ast
import copy
import datetime
import enum
import importlib.util
import os
import subprocess
import sys
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
from pydantic import BaseModel

import pipeline.cache._key as key_module
from pipeline.cache import (
    UnfingerprintableError,
    canonical_json,
    code_fingerprint,
    fingerprint,
    make_key,
)

if TYPE_CHECKING:
    from types import ModuleType


class Point(BaseModel):
    x: int
    y: float


class OtherPoint(BaseModel):
    x: int
    y: float


@dataclass
class DPoint:
    x: int
    y: float


class Pair(NamedTuple):
    a: int
    b: int


class Color(enum.Enum):
    RED = "red"


def test_dict_key_order_does_not_change_the_fingerprint() -> None:
    a = {"x": 1, "y": {"p": [1, 2], "q": None}, 3: "int key"}
    b = {3: "int key", "y": {"q": None, "p": [1, 2]}, "x": 1}
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(OrderedDict(a)) == fingerprint(b)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([1, 2], (1, 2)),
        ([1, 2], [2, 1]),
        (1, 1.0),
        (1, True),
        (0, False),
        ("1", 1),
        (None, "None"),
        ({"1": 1}, {1: 1}),
        ([[1]], [1]),
        (["list", [1]], [1]),
        (Point(x=1, y=2.0), OtherPoint(x=1, y=2.0)),
        (Point(x=1, y=2.0), DPoint(x=1, y=2.0)),
        (Point(x=1, y=2.0), {"x": 1, "y": 2.0}),
        (Pair(1, 2), (1, 2)),
        (b"ab", "ab"),
        (Color.RED, "red"),
        ({1, 2}, [1, 2]),
        (0.0, -0.0),
    ],
)
def test_different_values_have_different_fingerprints(left: object, right: object) -> None:
    assert fingerprint(left) != fingerprint(right)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "text",
        0.1 + 0.2,
        float("inf"),
        float("nan"),
        [1, (2, 3), {"a": {4, 5}}],
        Point(x=1, y=0.5),
        DPoint(x=1, y=0.5),
        {
            "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            "id": uuid.UUID(int=7),
        },
        Pair(1, 2),
        Color.RED,
        frozenset({"b", "a"}),
    ],
)
def test_equal_values_have_equal_stable_fingerprints(value: object) -> None:
    assert fingerprint(value) == fingerprint(copy.deepcopy(value))  # by value, not identity
    assert len(fingerprint(value)) == 64


def test_fingerprints_are_the_same_in_another_process() -> None:
    """Cache keys outlive the process: set order and str hashing must not leak into them."""
    value = {"tags": frozenset({"alpha", "beta", "gamma", "delta"}), "ids": {"x", "y", "z"}}
    code = (
        "from pipeline.cache import fingerprint\n"
        "value = {'tags': frozenset({'alpha', 'beta', 'gamma', 'delta'}), 'ids': {'x', 'y', 'z'}}\n"
        "print(fingerprint(value))\n"
    )
    seeds = {os.environ.get("PYTHONHASHSEED"), "random"}
    seed = next(s for s in ("1", "2") if s not in seeds)  # a hash seed unlike this process's
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
        env={**os.environ, "PYTHONHASHSEED": seed},
    )
    assert done.stdout.strip() == fingerprint(value)


def test_floats_are_stable_text() -> None:
    assert canonical_json(0.1 + 0.2) == '["float","0.30000000000000004"]'
    assert fingerprint([0.1 + 0.2]) == fingerprint([0.30000000000000004])


def test_models_hash_by_field_values() -> None:
    assert fingerprint(Point(x=1, y=2.0)) == fingerprint(Point(y=2.0, x=1))
    assert fingerprint(Point(x=1, y=2.0)) != fingerprint(Point(x=1, y=2.5))
    assert fingerprint(DPoint(1, 2.0)) != fingerprint(DPoint(2, 2.0))


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (Opaque(), "input"),
        ({"k": [1, Opaque()]}, "input['k'][1]"),
        (lambda: 1, "input"),
    ],
)
def test_unfingerprintable_values_raise_naming_where(value: object, path: str) -> None:
    with pytest.raises(UnfingerprintableError) as info:
        fingerprint(value)
    assert info.value.path == path
    assert "no JSON form" in info.value.reason


def test_cycles_and_deep_nesting_are_unfingerprintable() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    with pytest.raises(UnfingerprintableError, match="cycle"):
        fingerprint(cyclic)
    deep: list[Any] = []
    for _ in range(500):
        deep = [deep]
    with pytest.raises(UnfingerprintableError, match="nested deeper"):
        fingerprint(deep)


def test_shared_but_acyclic_references_are_fine() -> None:
    shared = [1, 2]
    assert fingerprint([shared, shared]) == fingerprint([[1, 2], [1, 2]])


def test_key_covers_stage_version_code_input_and_level() -> None:
    fp = fingerprint({"a": 1})
    base = make_key("s", fp)
    assert base.stage_id == "s"
    assert make_key("s", fp) == base
    others = [
        make_key("t", fp),
        make_key("s", fingerprint({"a": 2})),
        make_key("s", fp, version=1),
        make_key("s", fp, version="0"),
        make_key("s", fp, code="abc"),
        make_key("s", fp, item=True),
    ]
    assert len({k.digest for k in [base, *others]}) == len(others) + 1


def _load(path: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # inspect finds class source through it
    spec.loader.exec_module(module)
    return module


STAGE_SOURCE = """
class Stage:
    name = "s"

    async def execute(self, input, context):
        return {body}
"""


def test_code_fingerprint_follows_the_class_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load(name: str, body: str) -> ModuleType:
        return _load(tmp_path / f"{name}.py", name, STAGE_SOURCE.format(body=body), monkeypatch)

    one, same, changed = (
        load("cache_one", "input"),
        load("cache_same", "input"),
        load("cache_two", "input + 1"),
    )
    assert code_fingerprint(one.Stage()) == code_fingerprint(same.Stage())
    assert code_fingerprint(one.Stage()) != code_fingerprint(changed.Stage())


def test_code_fingerprint_without_source_is_unfingerprintable() -> None:
    namespace: dict[str, Any] = {}
    exec("class Stage:\n    name = 's'\n", namespace)  # no file behind it
    with pytest.raises(UnfingerprintableError, match="source unavailable"):
        code_fingerprint(namespace["Stage"]())


def test_key_module_is_pure() -> None:
    """`_key` imports no event-loop machinery (the architecture's pure-module rule)."""
    tree = ast.parse(Path(key_module.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert not imported & {"anyio", "asyncio", "trio", "sqlite3", "threading"}

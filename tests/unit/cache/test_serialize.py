"""Values: JSON through pydantic restored to the declared type; pickle only when opted in."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from pipeline import PipelineContext, PipelineStage, StageResult
from pipeline.cache import (
    JsonSerializer,
    PickleSerializer,
    UncacheableOutputError,
    output_type_of,
)
from pipeline.cache._serialize import seal, unseal


class Item(BaseModel):
    name: str
    tags: tuple[str, ...] = ()


@dataclass
class Box:
    items: list[Item]
    size: float


@pytest.mark.parametrize(
    ("value", "output_type"),
    [
        (Item(name="a", tags=("x",)), Item),
        (Box(items=[Item(name="a")], size=1.5), Box),
        ([Item(name="a"), Item(name="b")], list[Item]),
        ({"k": Box(items=[], size=0.0)}, dict[str, Box]),
        ((1, "two"), tuple[int, str]),
        (3, int),
        (0.1 + 0.2, float),
        (None, None),
        ({"plain": [1, 2.5, "x", None, True, {"n": {}}]}, Any),
        ("text", Any),
    ],
)
def test_json_round_trips_equal(value: object, output_type: Any) -> None:
    json = JsonSerializer()
    restored = json.loads(json.dumps(value, output_type), output_type)
    assert restored == value
    assert type(restored) is type(value)


@pytest.mark.parametrize(
    ("value", "output_type", "why"),
    [
        (Item(name="a"), Any, "declare output_type"),
        ((1, 2), Any, "declare output_type"),
        (object(), Any, "does not serialize"),
        ("not an int", int, "does not serialize"),
        (float("nan"), float, "output not cached"),
    ],
)
def test_json_refuses_values_that_would_not_restore_equal(
    value: object, output_type: Any, why: str
) -> None:
    with pytest.raises(UncacheableOutputError, match=why):
        JsonSerializer().dumps(value, output_type)


class Exploit:
    ran = False

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (Exploit.mark, ())

    @staticmethod
    def mark() -> None:
        Exploit.ran = True


def test_json_never_loads_a_pickle_entry() -> None:
    blob = seal(PickleSerializer(), pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match="written as 'pickle'"):
        JsonSerializer().loads(unseal(JsonSerializer(), blob), Any)
    assert not Exploit.ran


def test_unsealing_checks_the_header() -> None:
    with pytest.raises(ValueError, match="no format header"):
        unseal(JsonSerializer(), b"headless")
    assert unseal(JsonSerializer(), seal(JsonSerializer(), b"[1]")) == b"[1]"


def test_pickle_round_trips_what_json_cannot() -> None:
    value = {"set": {1, 2}, "tuple": (1, 2)}
    pickled = PickleSerializer()
    assert pickled.loads(pickled.dumps(value, Any), Any) == value


class Annotated:
    name = "annotated"

    async def execute(self, input: object, context: PipelineContext[Any]) -> StageResult[Item]:
        return StageResult.success(Item(name="x"))


class FromBase(PipelineStage[int, Box]):
    name = "from_base"

    async def execute(self, input: int, context: PipelineContext[Any], /) -> StageResult[Box]:
        return StageResult.success(Box(items=[], size=input))


class Unresolvable:
    name = "unresolvable"

    async def execute(self, input: object, context: object) -> StageResult[NoSuchType]:  # type: ignore[name-defined]  # noqa: F821  # deliberately unresolvable
        raise NotImplementedError


class Untyped:
    name = "untyped"

    async def execute(self, input, context):  # type: ignore[no-untyped-def]  # deliberately untyped
        raise NotImplementedError


def test_output_type_comes_from_definition_then_annotation_then_bases() -> None:
    assert output_type_of(Annotated()) is Item
    assert output_type_of(Annotated(), declared=Box) is Box
    assert output_type_of(FromBase()) is Box
    assert output_type_of(Unresolvable()) is Any
    assert output_type_of(Untyped()) is Any

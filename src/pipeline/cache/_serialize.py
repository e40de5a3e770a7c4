"""How cached outputs become bytes and back: JSON through pydantic by default, pickle on request.

Also finds a stage's declared output type, which the JSON serializer restores values to.
Keys live in `pipeline.cache._key`; stores only ever see bytes.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import functools
import inspect
import pickle
import typing
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Final, Protocol, TypeGuard, TypeVar, final

from pydantic import BaseModel, TypeAdapter

from pipeline._wrapped import unwrap_stage
from pipeline.errors import UncacheableOutputError as UncacheableOutputError  # importable here too
from pipeline.functions import FunctionStage
from pipeline.protocol import PipelineStage
from pipeline.result import StageResult

_SEPARATOR: Final = b"\n"


class Serializer(Protocol):
    """Turns a stage's output into bytes and back; `format` names it inside every entry."""

    @property
    def format(self) -> str:
        """A short name stored with each entry (no newline); loading checks it matches."""
        ...

    def dumps(self, value: Any, output_type: Any) -> bytes:
        """Serialize `value`, declared as `output_type` (`typing.Any` when undeclared)."""
        ...

    def loads(self, data: bytes, output_type: Any) -> Any:
        """Restore a value written by `dumps` with the same `output_type`."""
        ...


@functools.lru_cache(maxsize=512)
def _cached_adapter(output_type: Any) -> TypeAdapter[Any]:
    return TypeAdapter(output_type)


def type_adapter(output_type: Any) -> TypeAdapter[Any]:
    """A (memoized) pydantic `TypeAdapter` for `output_type`."""
    try:
        return _cached_adapter(output_type)
    except TypeError:  # an unhashable annotation: build one without the memo
        return TypeAdapter(output_type)


@final
class JsonSerializer:
    """The default: JSON through a pydantic `TypeAdapter` of the stage's output type.

    `dumps` checks that the value restores equal (a model without a declared type would come
    back as a dict, a tuple as a list) and refuses it otherwise, so a cache hit never hands a
    stage a value of a different shape than a real run would have.
    """

    format = "json"

    def dumps(self, value: Any, output_type: Any) -> bytes:
        """JSON bytes of `value`; `UncacheableOutputError` when it would not restore equal."""
        iterator = find_iterator(value)
        if iterator is not None:
            msg = f"it holds a {iterator}, an iterator that serialising would consume"
            raise UncacheableOutputError(msg)
        adapter = type_adapter(output_type)
        try:
            data = adapter.dump_json(value, warnings="error")
            restored = adapter.validate_json(data)
        except Exception as exc:  # pydantic raises several kinds here
            msg = f"{type(value).__name__} does not serialize as {_type_repr(output_type)} ({exc})"
            raise UncacheableOutputError(msg) from exc
        try:
            same = same_value(restored, value)
        except Exception as exc:  # a user's __eq__ may raise too
            msg = f"{type(value).__name__} could not be compared after a round trip ({exc!r})"
            raise UncacheableOutputError(msg) from exc
        if not same:
            hint = " (declare output_type on the stage)" if output_type is Any else ""
            msg = (
                f"{_type_repr(type(value))} does not come back from JSON as an equal value "
                f"of the same type{hint}"
            )
            raise UncacheableOutputError(msg)
        return data

    def loads(self, data: bytes, output_type: Any) -> Any:
        """Validate `data` back into `output_type`; never executes stored code."""
        return type_adapter(output_type).validate_json(data)


@final
class PickleSerializer:
    """Opt-in pickle: any picklable output round-trips, but loading runs code from the store.

    Use it only with a cache file nobody else can write. `JsonSerializer` refuses to load
    entries written by this serializer, and vice versa.
    """

    format = "pickle"

    def dumps(self, value: Any, output_type: Any) -> bytes:
        """`pickle.dumps(value)`."""
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes, output_type: Any) -> Any:
        """`pickle.loads(data)`: executes whatever the entry says."""
        return pickle.loads(data)  # the user opted into pickle


def seal(serializer: Serializer, payload: bytes) -> bytes:
    """Prefix `payload` with the serializer's format name."""
    return serializer.format.encode() + _SEPARATOR + payload


def unseal(serializer: Serializer, blob: bytes) -> bytes:
    """The payload of `blob`; `ValueError` when another serializer (or nothing) wrote it."""
    fmt, sep, payload = blob.partition(_SEPARATOR)
    if not sep:
        raise ValueError("entry has no format header (corrupt)")
    if fmt != serializer.format.encode():
        name = fmt.decode(errors="replace")
        raise ValueError(f"entry was written as {name!r}; serializer is {serializer.format!r}")
    return payload


def _type_repr(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


_resolved: weakref.WeakKeyDictionary[object, Any] = weakref.WeakKeyDictionary()
"""The answer of `output_type_of` per stage object (not per class: every `@stage` function is
a `FunctionStage`, each with its own return type). Weak, so a stage's entry goes with it."""


def output_type_of(stage: object, declared: Any = None) -> Any:
    """The type cached values of `stage` restore to.

    In this order: `declared` (the definition's `output_type`); for a `@stage` function, its
    return annotation (`-> T` or `-> StageResult[T]`); the return annotation of `execute`
    (`StageResult[Foo]` -> `Foo`); a `PipelineStage[In, Out]` base's `Out`; else `typing.Any`
    (plain JSON values). A wrapper that sets `__wrapped_stage__` resolves as the stage it wraps.
    The answer is computed once per stage object (a stage that cannot be a weak dictionary key,
    being unhashable or without weak references, is resolved on every call).
    """
    if declared is not None:
        return declared
    stage = unwrap_stage(stage)
    try:
        return _resolved[stage]
    except KeyError:
        pass
    except Exception:  # noqa: BLE001  # unhashable, no weak references, or a raising __eq__
        return _resolve(stage)
    found = _resolve(stage)
    with contextlib.suppress(Exception):  # as above: such a stage is just not remembered
        _resolved[stage] = found
    return found


def _resolve(stage: object) -> Any:
    """`output_type_of` of an unwrapped stage, without the memo."""
    if isinstance(stage, FunctionStage):
        return return_type_of(stage.fn)
    return _annotation_of(type(stage))


def return_type_of(fn: Any) -> Any:
    """What calling `fn` gives: its return annotation (`StageResult[T]` gives `T`), else `Any`.

    Partials resolve as the function they wrap and callable objects by their `__call__`; a
    missing, unresolvable or generic (`TypeVar`) annotation gives `typing.Any`.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    try:
        ret = typing.get_type_hints(target).get("return", Any)
    except Exception:  # noqa: BLE001  # unresolvable annotations: plain JSON values
        return Any
    if _is_result_type(ret):
        return _result_arg(ret)
    if typing.get_origin(ret) in _STREAMS and inspect.isasyncgenfunction(target):
        # A producer's (an async generator's) items, collected: what list consumers receive.
        return list[_concrete(typing.get_args(ret)[0])]  # type: ignore[misc]  # a runtime type expression
    return _concrete(ret)


_STREAMS: Final = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)
"""Return annotations of an async generator function (SPEC 11 producers)."""


def _is_result_type(tp: Any) -> TypeGuard[type[StageResult[Any]]]:
    return isinstance(tp, type) and issubclass(tp, StageResult)


def _result_arg(tp: type[StageResult[Any]]) -> Any:
    args = tp.__pydantic_generic_metadata__["args"]
    return _concrete(args[0]) if args else Any


def _concrete(tp: Any) -> Any:
    return Any if tp is None or isinstance(tp, TypeVar) else tp


def _annotation_of(cls: type[Any]) -> Any:
    try:
        ret = typing.get_type_hints(cls.execute).get("return")
    except Exception:  # noqa: BLE001  # unresolvable annotations: fall through to the bases
        ret = None
    if _is_result_type(ret):
        found = _result_arg(ret)
        if found is not Any:
            return found
    for base in getattr(cls, "__orig_bases__", ()):
        if typing.get_origin(base) is PipelineStage:
            out = typing.get_args(base)[1]
            if not isinstance(out, TypeVar):
                return out
    return Any


_SCALARS: Final = frozenset({int, float, str, bool, type(None), bytes})


def same_value(restored: Any, value: Any) -> bool:
    """Equal *and* of the same type throughout: what a cache hit must give back.

    `StrEnum.A == "a"`, `Counter() == {}` and `1 == 1.0`, but a stage that received the plain
    value on a hit could behave differently from the run that stored it. Containers of plain
    scalars are compared by C-level maps, so a 200,000-item list costs milliseconds.
    """
    if type(restored) is not type(value):
        return False
    if isinstance(value, list | tuple):
        return len(restored) == len(value) and _same_items(restored, value)
    if isinstance(value, dict):
        if len(restored) != len(value):
            return False
        if isinstance(value, defaultdict) and restored.default_factory is not value.default_factory:
            return False
        return _same_items(list(restored), list(value)) and _same_items(
            list(restored.values()), list(value.values())
        )
    if isinstance(value, set | frozenset):
        return {_typed(x) for x in restored} == {_typed(x) for x in value}
    if isinstance(value, BaseModel):
        return bool(restored == value) and same_value(dict(restored), dict(value))
    if dataclasses.is_dataclass(value):
        return bool(restored == value) and all(
            same_value(getattr(restored, f.name), getattr(value, f.name))
            for f in dataclasses.fields(value)
        )
    return bool(restored == value)


def _same_items(restored: Sequence[Any], value: Sequence[Any]) -> bool:
    kinds = list(map(type, value))
    if kinds != list(map(type, restored)):
        return False
    if _SCALARS.issuperset(kinds):
        return (
            bool(restored == value)
            if type(restored) is type(value)
            else list(restored) == list(value)
        )
    return all(map(same_value, restored, value))


def _typed(x: Any) -> Any:
    """A hashable form of a set member that differs when any type inside it differs."""
    if isinstance(x, tuple | frozenset):
        inner = tuple(map(_typed, x)) if isinstance(x, tuple) else frozenset(map(_typed, x))
        return (type(x), inner)
    return (type(x), x)


def find_iterator(value: Any, depth: int = 0) -> str | None:
    """The type name of an iterator inside `value`, if there is one (serialising consumes it)."""
    if isinstance(value, Iterator | AsyncIterator):
        return type(value).__name__
    if depth > 50:
        return None
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    elif isinstance(value, BaseModel):
        items = [getattr(value, name) for name in type(value).model_fields]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, f.name) for f in dataclasses.fields(value)]
    else:
        return None
    inner = [x for x in items if type(x) not in _SCALARS]
    for x in inner:
        found = find_iterator(x, depth + 1)
        if found is not None:
            return found
    return None

"""How cached outputs become bytes and back: JSON through pydantic by default, pickle on request.

Also finds a stage's declared output type, which the JSON serializer restores values to.
Keys live in `pipeline.cache._key`; stores only ever see bytes.
"""

from __future__ import annotations

import functools
import pickle
import typing
from typing import Any, Final, Protocol, TypeVar, final

from pydantic import TypeAdapter

from pipeline.errors import PipelineError
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


class UncacheableOutputError(PipelineError, TypeError):
    """A stage's output cannot be stored faithfully, so it is not cached.

    Raised by `JsonSerializer.dumps`; the executor reports it as a cache warning.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"output not cached: {reason}")


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
        adapter = type_adapter(output_type)
        try:
            data = adapter.dump_json(value, warnings="error")
            restored = adapter.validate_json(data)
        except Exception as exc:  # pydantic raises several kinds here
            msg = f"{type(value).__name__} does not serialize as {_type_repr(output_type)} ({exc})"
            raise UncacheableOutputError(msg) from exc
        if restored != value:
            hint = " (declare output_type on the stage)" if output_type is Any else ""
            msg = f"{type(value).__name__} does not restore equal from JSON{hint}"
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


_annotated: dict[type[Any], Any] = {}


def output_type_of(stage: object, declared: Any = None) -> Any:
    """The type cached values of `stage` restore to.

    `declared` (the definition's `output_type`) wins; else the return annotation of
    `execute` (`StageResult[Foo]` -> `Foo`); else a `PipelineStage[In, Out]` base's `Out`;
    else `typing.Any` (plain JSON values).
    """
    if declared is not None:
        return declared
    cls = type(stage)
    try:
        return _annotated[cls]
    except KeyError:
        found = _annotated[cls] = _annotation_of(cls)
        return found


def _annotation_of(cls: type[Any]) -> Any:
    try:
        ret = typing.get_type_hints(cls.execute).get("return")
    except Exception:  # noqa: BLE001  # unresolvable annotations: fall through to the bases
        ret = None
    if isinstance(ret, type) and issubclass(ret, StageResult):
        args = ret.__pydantic_generic_metadata__["args"]
        if args and not isinstance(args[0], TypeVar):
            return args[0]
    for base in getattr(cls, "__orig_bases__", ()):
        if typing.get_origin(base) is PipelineStage:
            out = typing.get_args(base)[1]
            if not isinstance(out, TypeVar):
                return out
    return Any

"""Cache keys: a stable fingerprint of a stage's input, version and (optionally) code.

Pure functions over values; nothing here touches a store, a thread or the event loop. How keys
are used (lookup, write, stats) lives in `pipeline.cache._step`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Any, Final, final

import pydantic_core
from pydantic import BaseModel

from pipeline.errors import PipelineError

KEY_SCHEMA: Final = "pipeline-cache/1"
"""Changes whenever the key layout changes, so old entries can never be read by new code."""

_MAX_DEPTH: Final = 200


class UnfingerprintableError(PipelineError, TypeError):
    """A value has no stable fingerprint, so a stage fed with it is not cached.

    Raised by `fingerprint()` and `code_fingerprint()`; the executor turns it into a cache
    warning on the stage's run record and runs the stage uncached.
    """

    def __init__(self, reason: str, *, path: str = "input") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"cannot fingerprint {path}: {reason}")


@final
@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where one cached output lives: the stage it belongs to and a hex digest.

    `digest` already covers the stage id; `stage_id` is kept apart so stores can drop every
    entry of one stage (`invalidate`).
    """

    stage_id: str
    digest: str


def _canon(value: Any, path: str, depth: int, seen: set[int]) -> Any:
    """A JSON tree that is equal for equal values and tags every container with its kind.

    Plain str/int/bool/None stay bare; every other value becomes a list whose first element
    names its kind, so `[1]` (a list) and `(1,)` (a tuple) or `1` and `1.0` never collide.
    """
    if value is None or type(value) in (str, int, bool):
        return value
    if depth > _MAX_DEPTH:
        raise UnfingerprintableError(f"nested deeper than {_MAX_DEPTH} levels", path=path)
    if isinstance(value, float):
        # repr() is the shortest string that round-trips: stable across runs and platforms.
        return ["float", repr(value)]
    if isinstance(value, enum.Enum):
        return ["enum", _type_name(value), _canon(value.value, path, depth + 1, seen)]
    if isinstance(value, str | int):  # subclasses of str/int that are not enums
        return [_type_name(value), str(value) if isinstance(value, str) else int(value)]
    ident = id(value)
    if ident in seen:
        raise UnfingerprintableError("it contains a reference cycle", path=path)
    seen.add(ident)
    try:
        return _canon_container(value, path, depth + 1, seen)
    finally:
        seen.discard(ident)


def _canon_container(value: Any, path: str, depth: int, seen: set[int]) -> Any:
    if isinstance(value, list | tuple):
        kind = "list" if isinstance(value, list) else "tuple"
        if kind == "tuple" and type(value) is not tuple:  # NamedTuple and friends
            kind = _type_name(value)
        return [kind, [_canon(v, f"{path}[{i}]", depth, seen) for i, v in enumerate(value)]]
    if isinstance(value, dict):
        pairs = [
            (_canon(k, f"{path} key {k!r}", depth, seen), _canon(v, f"{path}[{k!r}]", depth, seen))
            for k, v in value.items()
        ]
        pairs.sort(key=lambda kv: _dumps(kv[0]))
        return ["dict", [list(kv) for kv in pairs]]
    if isinstance(value, set | frozenset):
        items = [_canon(v, f"{path} item", depth, seen) for v in value]
        return ["set", sorted(items, key=_dumps)]
    if isinstance(value, BaseModel):
        fields = {name: getattr(value, name) for name in type(value).model_fields}
        fields.update(value.model_extra or {})
        return ["model", _type_name(value), _canon(fields, path, depth, seen)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ["dataclass", _type_name(value), _canon(fields, path, depth, seen)]
    if isinstance(value, bytes | bytearray):
        return ["bytes", value.hex()]
    try:
        # Dates, UUIDs, Decimals, Paths, ...: whatever pydantic knows how to put in JSON.
        plain = pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError:
        raise UnfingerprintableError(
            f"{_type_name(value)} has no JSON form (use a pydantic model, a dataclass or "
            "plain data, or set cache=False on the stage)",
            path=path,
        ) from None
    return ["json", _type_name(value), _canon(plain, path, depth, seen)]


def _type_name(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _dumps(tree: Any) -> str:
    return json.dumps(tree, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    """The canonical JSON text of `value` (what `fingerprint` hashes).

    Raises:
        UnfingerprintableError: `value` (or something inside it) has no stable JSON form.
    """
    try:
        return _dumps(_canon(value, "input", 0, set()))
    except RecursionError:  # pragma: no cover - _MAX_DEPTH stops well before Python does
        raise UnfingerprintableError("nested too deeply") from None


def fingerprint(value: Any) -> str:
    """A sha256 hex digest of `value`'s canonical JSON.

    Dicts hash the same in any key order; lists and tuples, `1` and `1.0`, `True` and `1`
    differ; pydantic models and dataclasses hash by class and field values.

    Raises:
        UnfingerprintableError: `value` has no stable fingerprint.
    """
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


_code_fingerprints: dict[type[Any], str] = {}


def code_fingerprint(stage: object) -> str:
    """A sha256 hex digest of the source of `stage`'s class (and its wrapped function, if any).

    Raises:
        UnfingerprintableError: the source is not available (built in, REPL, frozen app).
    """
    cls = type(stage)
    known = _code_fingerprints.get(cls)
    wrapped = getattr(stage, "__wrapped__", None)
    if known is not None and wrapped is None:
        return known
    parts: list[str] = []
    for obj in (cls, wrapped):
        if obj is None:
            continue
        try:
            parts.append(inspect.getsource(obj))
        except (OSError, TypeError) as exc:
            raise UnfingerprintableError(f"source unavailable ({exc})", path="stage code") from None
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    if wrapped is None:
        _code_fingerprints[cls] = digest
    return digest


def make_key(
    stage_id: str,
    input_fingerprint: str,
    *,
    version: str | int = 0,
    code: str | None = None,
    item: bool = False,
) -> CacheKey:
    """The key of one stage invocation (`item=True`: one fan-out item).

    Stage-level and item-level entries of the same stage never share a key.
    """
    parts = [KEY_SCHEMA, "item" if item else "stage", stage_id, version, code, input_fingerprint]
    digest = hashlib.sha256(_dumps(parts).encode()).hexdigest()
    return CacheKey(stage_id, digest)

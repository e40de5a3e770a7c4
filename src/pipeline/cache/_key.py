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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Final, final

import pydantic_core
from pydantic import BaseModel

from pipeline._text import exception_text
from pipeline._wrapped import unwrap_stage
from pipeline.errors import (
    OverBudgetError as OverBudgetError,  # importable here too
    UnfingerprintableError as UnfingerprintableError,
)

KEY_SCHEMA: Final = "pipeline-cache/2"
"""Changes whenever the key layout changes, so old entries can never be read by new code."""

_MAX_DEPTH: Final = 200

INLINE_FINGERPRINT_NODES: Final = 10_000
"""Values (containers and scalars) fingerprinted on the event loop before the rest moves on.

Past this many, the executor restarts the fingerprint in a worker thread, so a large input
never blocks the event loop for more than a few milliseconds (~1 ms per 1,000 values).
"""


class _Walk:
    """The state of one canonicalisation: the containers on the path and the value budget."""

    __slots__ = ("left", "seen")

    def __init__(self, budget: int | None) -> None:
        self.seen: set[int] = set()
        self.left = budget


@final
@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where one cached output lives: the stage it belongs to and a hex digest.

    `digest` already covers the stage id; `stage_id` is kept apart so stores can drop every
    entry of one stage (`invalidate`).
    """

    stage_id: str
    digest: str


def _canon(value: Any, path: str, depth: int, walk: _Walk) -> Any:
    """A JSON tree that is equal for equal values and tags every container with its kind.

    Plain str/int/bool/None stay bare; every other value becomes a list whose first element
    names its kind, so `[1]` (a list) and `(1,)` (a tuple) or `1` and `1.0` never collide.
    """
    if walk.left is not None:
        walk.left -= 1
        if walk.left < 0:
            raise OverBudgetError
    if value is None or type(value) in (str, int, bool):
        return value
    if depth > _MAX_DEPTH:
        raise UnfingerprintableError(f"nested deeper than {_MAX_DEPTH} levels", path=path)
    if isinstance(value, float):
        # repr() is the shortest string that round-trips: stable across runs and platforms.
        return ["float", repr(value)]
    if isinstance(value, enum.Enum):
        return ["enum", _type_name(value), _canon(value.value, path, depth + 1, walk)]
    if isinstance(value, str | int):  # subclasses of str/int that are not enums
        return [_type_name(value), str(value) if isinstance(value, str) else int(value)]
    if isinstance(value, Iterator | AsyncIterator):
        raise UnfingerprintableError(
            f"{_type_name(value)} is an iterator: fingerprinting would consume it (it is "
            "handed to the stage untouched; pass a list or tuple to make the stage cacheable)",
            path=path,
        )
    ident = id(value)
    if ident in walk.seen:
        raise UnfingerprintableError("it contains a reference cycle", path=path)
    walk.seen.add(ident)
    try:
        return _canon_container(value, path, depth + 1, walk)
    finally:
        walk.seen.discard(ident)


def _canon_container(value: Any, path: str, depth: int, walk: _Walk) -> Any:
    if isinstance(value, list | tuple):
        kind = "list" if isinstance(value, list) else "tuple"
        if kind == "tuple" and type(value) is not tuple:  # NamedTuple and friends
            kind = _type_name(value)
        return [kind, [_canon(v, f"{path}[{i}]", depth, walk) for i, v in enumerate(value)]]
    if isinstance(value, dict):
        pairs = [
            (_canon(k, f"{path} key {k!r}", depth, walk), _canon(v, f"{path}[{k!r}]", depth, walk))
            for k, v in value.items()
        ]
        pairs.sort(key=lambda kv: _dumps(kv[0]))
        return ["dict", [list(kv) for kv in pairs]]
    if isinstance(value, set | frozenset):
        items = [_canon(v, f"{path} item", depth, walk) for v in value]
        return ["set", sorted(items, key=_dumps)]
    if isinstance(value, BaseModel):
        fields = {name: getattr(value, name) for name in type(value).model_fields}
        fields.update(value.model_extra or {})
        return ["model", _type_name(value), _canon(fields, path, depth, walk)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ["dataclass", _type_name(value), _canon(fields, path, depth, walk)]
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
    return ["json", _type_name(value), _canon(plain, path, depth, walk)]


def _type_name(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _dumps(tree: Any) -> str:
    return json.dumps(tree, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any, *, budget: int | None = None) -> str:
    """The canonical JSON text of `value` (what `fingerprint` hashes).

    Raises:
        UnfingerprintableError: `value` (or something inside it) has no stable JSON form, or
            reading it raised (an unset dataclass field, a property that fails, ...).
        OverBudgetError: `budget` is set and `value` holds more values than that.
    """
    try:
        return _dumps(_canon(value, "input", 0, _Walk(budget)))
    except (UnfingerprintableError, OverBudgetError):
        raise
    except RecursionError:  # pragma: no cover - _MAX_DEPTH stops well before Python does
        raise UnfingerprintableError("nested too deeply") from None
    except Exception as exc:  # any error reading a user's value: no fingerprint
        raise UnfingerprintableError(f"reading it raised {exception_text(exc)}") from exc


def fingerprint(value: Any, *, budget: int | None = None) -> str:
    """A sha256 hex digest of `value`'s canonical JSON.

    Dicts hash the same in any key order; lists and tuples, `1` and `1.0`, `True` and `1`
    differ; pydantic models and dataclasses hash by class and field values. Iterators and
    generators have no fingerprint (computing one would consume them).

    Args:
        value: The value to fingerprint.
        budget: At most this many values are read; past it `OverBudgetError` is raised (the
            executor then fingerprints in a worker thread). None: no limit.

    Raises:
        UnfingerprintableError: `value` has no stable fingerprint.
        OverBudgetError: `value` holds more than `budget` values.
    """
    return hashlib.sha256(_encode(canonical_json(value, budget=budget))).hexdigest()


def _encode(text: str) -> bytes:
    # A lone surrogate ("\ud800") is a valid Python str but not valid UTF-8; it still has one
    # stable byte form, so it fingerprints instead of failing.
    return text.encode("utf-8", "surrogatepass")


_code_fingerprints: dict[type[Any], str] = {}


def code_fingerprint(stage: object) -> str:
    """A sha256 hex digest of the source of `stage`'s class (and its wrapped function, if any).

    Raises:
        UnfingerprintableError: the source is not available (built in, REPL, frozen app).
    """
    stage = unwrap_stage(stage)
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
        except Exception as exc:  # noqa: BLE001  # OSError, TypeError, or a broken loader
            reason = f"source unavailable ({exception_text(exc)})"
            raise UnfingerprintableError(reason, path="stage code") from None
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
    pipeline: str = "",
) -> CacheKey:
    """The key of one stage invocation (`item=True`: one fan-out item).

    Stage-level and item-level entries of the same stage never share a key, and neither do
    stages of the same id in two pipelines (`pipeline` is the pipeline's name).
    """
    parts = [
        KEY_SCHEMA,
        "item" if item else "stage",
        pipeline,
        stage_id,
        version,
        code,
        input_fingerprint,
    ]
    digest = hashlib.sha256(_encode(_dumps(parts))).hexdigest()
    return CacheKey(stage_id, digest)

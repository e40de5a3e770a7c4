"""Stage input and output types, and the `type_mismatch` rule checking them along every edge.

A stage's types are read once per stage class or `@stage` function (output types in section 6's
order, through `pipeline.cache._serialize.output_type_of`); whether a producer's type fits its
consumer's is decided by `beartype.door.is_subhint` (the optional `types` extra), memoized per
pair of types. The run-time check of outputs (`validate_outputs=True`) is `pipeline._outputs`.
"""

from __future__ import annotations

import collections.abc
import contextlib
import difflib
import functools
import inspect
import logging
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

from pydantic import BaseModel

from pipeline._stream_graph import stream_resource_issues, streams_out
from pipeline._validation import has_async_execute, register_late_rule
from pipeline._wrapped import unwrap_stage
from pipeline.cache._serialize import output_type_of
from pipeline.definition import ExecutionPattern
from pipeline.errors import ValidationIssue
from pipeline.functions import FunctionStage
from pipeline.protocol import PipelineStage

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pipeline._validation import Scope
    from pipeline.definition import StageDefinition

logger = logging.getLogger("pipeline")

EXTRA_HINT: Final = "pip install 'wavepipe[types]'"
"""How to get the library that decides type assignability (beartype)."""

_UNKNOWN: Final = object()

FIX: Final = (
    "change one of the two types (the annotations, or input_type=/output_type=) "
    "or put a converting stage between them"
)

# -- reading a stage's types -------------------------------------------------------------------

_outputs: dict[object, Any] = {}
_inputs: dict[object, Any] = {}
"""Resolved types per stage class, or per function for a `FunctionStage`. Plain dicts, read
once per stage of every new definition (a weak dictionary's lookup cost ~0.25 us a stage of
"validate + plan" in benchmarks/overhead.py); they hold their keys, so each starts over past
`MAX_BY_CODE` entries."""

_by_code: dict[tuple[object, ...], Any] = {}
"""Resolved types per (kind, code, globals, annotations) of a plain function: the functions a
factory makes in a loop share all four, so their types are read once, not once each."""

MAX_BY_CODE: Final = 4096
"""Each memo here starts over past this many entries (they hold their keys strongly)."""


def _per_code(stage: object, memo: dict[object, Any], resolve: Callable[[Any], Any]) -> Any:
    """`resolve(stage)`, remembered per class (per function for a `FunctionStage`)."""
    stage = unwrap_stage(stage)
    key = stage.fn if isinstance(stage, FunctionStage) else type(stage)
    try:
        return memo[key]
    except KeyError:
        pass
    except Exception:  # noqa: BLE001  # an unhashable callable: resolved on every call
        return _strip(resolve(stage))
    code = _code_key(key, memo is _outputs)
    found = _by_code.get(code, _UNKNOWN) if code is not None else _UNKNOWN
    if found is _UNKNOWN:
        found = _strip(resolve(stage))
        if code is not None:
            if len(_by_code) >= MAX_BY_CODE:
                _by_code.clear()
            _by_code[code] = found
    if len(memo) >= MAX_BY_CODE:
        memo.clear()
    memo[key] = found
    return found


def _code_key(fn: object, output: bool) -> tuple[object, ...] | None:
    """What a plain function's types depend on; None for anything else (or unhashable)."""
    if not inspect.isfunction(fn) or hasattr(fn, "__wrapped__"):
        return None  # a wrapper's annotations resolve in the wrapped function's module
    try:
        key = (output, fn.__code__, id(fn.__globals__), *fn.__annotations__.items())
        hash(key)
    except Exception:  # noqa: BLE001  # an unhashable annotation
        return None
    return key


def output_type(sdef: StageDefinition) -> Any:
    """The declared type of one output of `sdef` (one item's for FAN_OUT); `Any` if none."""
    declared = sdef.output_type
    if declared is not None:
        return _strip(declared)
    return _per_code(sdef.stage, _outputs, output_type_of)


def edge_type(sdef: StageDefinition) -> Any:
    """What dependents of `sdef` receive: its output type, `list[item type]` for FAN_OUT."""
    out = output_type(sdef)
    return list[out] if sdef.pattern is ExecutionPattern.FAN_OUT else out  # type: ignore[valid-type]  # a runtime type expression


def input_type(sdef: StageDefinition) -> Any:
    """The declared input type of `sdef` (one item's for FAN_OUT); `Any` if none.

    From `StageDefinition(input_type=...)`, else the annotation of `execute`'s input parameter
    (or a `PipelineStage[In, Out]` base's `In`), else a `@stage` function's first parameter.
    """
    declared = sdef.input_type
    if declared is not None:
        return _strip(declared)
    return stage_input_type(sdef.stage)


def stage_input_type(stage: object) -> Any:
    """The input annotation of a stage object (`execute`'s, a base's or a `@stage` function's).

    Read once per class or function; `Any` when there is none or it cannot be resolved.
    """
    return _per_code(stage, _inputs, _resolve_input)


def _resolve_input(stage: object) -> Any:
    if isinstance(stage, FunctionStage):
        return _first_parameter_type(stage.fn, skip_self=False)
    cls = type(stage)
    found = _first_parameter_type(getattr(cls, "execute", None), skip_self=True)
    if found is not Any:
        return found
    for base in getattr(cls, "__orig_bases__", ()):
        if typing.get_origin(base) is PipelineStage:
            return _concrete(typing.get_args(base)[0])
    return Any


def _first_parameter_type(fn: Any, *, skip_self: bool) -> Any:
    """The annotation of `fn`'s first positional parameter (after `self`); unresolvable: Any."""
    if fn is None:
        return Any
    try:
        if inspect.isfunction(fn) and not hasattr(fn, "__wrapped__"):
            # A plain function: its parameter names and that one annotation, evaluated alone
            # (a quarter of what `get_type_hints` of the whole function costs).
            code = fn.__code__
            if code.co_argcount <= skip_self:
                return Any
            name = code.co_varnames[int(skip_self)]
            if name not in fn.__annotations__:
                return Any
            one = types.SimpleNamespace(
                __annotations__={name: fn.__annotations__[name]}, __globals__=fn.__globals__
            )
            return _concrete(typing.get_type_hints(one)[name])
        positional = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(positional) <= skip_self:
            return Any
        target = fn
        while isinstance(target, functools.partial):
            target = target.func
        if not inspect.isroutine(target):
            target = getattr(target, "__call__", target)  # noqa: B004  # a callable instance
        return _concrete(typing.get_type_hints(target).get(positional[int(skip_self)], Any))
    except Exception:  # noqa: BLE001  # unresolvable annotations count as none
        return Any


def _concrete(tp: Any) -> Any:
    return Any if tp is None or isinstance(tp, TypeVar) else tp


def _strip(tp: Any) -> Any:
    """`Annotated[T, ...]` as `T`: constraints are the run-time check's business, not wiring's."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


# -- assignability -------------------------------------------------------------------------------

_verdicts: dict[tuple[Any, Any], bool | None] = {}
"""`fits(out, expected)` per pair of (hashable) types: types are few, edges many."""


MIN_BEARTYPE: Final = (0, 23)
"""The first beartype whose `is_subhint` lets `Any` inside a hint pass (`list[Any]` fits
`list[int]`); older ones would report a partly unannotated edge (an unannotated FAN_OUT
producer gives `list[Any]`) as a mismatch."""


@functools.cache
def _is_subhint() -> Callable[[Any, Any], bool] | None:
    """`beartype.door.is_subhint`, imported on first use; None (and one warning) without it."""
    try:
        import beartype  # the optional `types` extra
        from beartype.door import is_subhint
    except ImportError:
        logger.warning(
            "pipeline: edge types are not checked because beartype is not installed; "
            "%s to check them in validate()",
            EXTRA_HINT,
        )
        return None
    version = tuple(getattr(beartype, "__version_info__", MIN_BEARTYPE))[:2]
    if version < MIN_BEARTYPE:
        logger.warning(
            "pipeline: beartype %s is older than %s; an edge type with Any inside it may be "
            "reported as a mismatch (%s upgrades it)",
            beartype.__version__,
            ".".join(map(str, MIN_BEARTYPE)),
            EXTRA_HINT,
        )
    return is_subhint


def fits(out: Any, expected: Any) -> bool | None:
    """Whether a value of type `out` is acceptable where `expected` is declared.

    True or False as the library decides; None when it cannot tell (an unsupported hint, or
    beartype is not installed), which callers treat as a pass.
    """
    if out is Any or expected is Any or out is expected:
        return True
    try:
        key = (out, expected)
        known = _verdicts.get(key, _UNKNOWN)
    except TypeError:  # an unhashable type expression
        return _decide(out, expected)
    if known is not _UNKNOWN:
        return typing.cast("bool | None", known)
    verdict = _decide(out, expected)
    if verdict is not None or _is_subhint() is not None:
        _verdicts[key] = verdict
    return verdict


def _decide(out: Any, expected: Any) -> bool | None:
    with contextlib.suppress(Exception):  # a raising __eq__ on a user's type object
        if out == expected:
            return True
    if typing.is_typeddict(expected):
        return _fits_typeddict(out, expected)
    if typing.is_typeddict(out):
        out = dict[str, Any]  # the library cannot place a TypedDict among other mappings
    return _library(out, expected)


def _library(out: Any, expected: Any) -> bool | None:
    is_subhint = _is_subhint()
    if is_subhint is None:
        return None
    try:
        return is_subhint(out, expected)
    except Exception:  # noqa: BLE001  # a hint the library does not support: cannot tell
        return None


def _fits_typeddict(out: Any, expected: Any) -> bool | None:
    """A TypedDict fits when it has each required key of `expected` with a fitting type."""
    if not typing.is_typeddict(out):
        # Another mapping may hold the keys (cannot tell); a non-mapping cannot.
        return None if _library(out, Mapping[Any, Any]) is not False else False
    want, wanted = _typeddict_keys(expected)
    have, required = _typeddict_keys(out)
    return all(key in required and fits(have[key], want[key]) is not False for key in wanted)


def _typeddict_keys(tp: Any) -> tuple[dict[str, Any], frozenset[str]]:
    """A TypedDict's value types and required keys.

    `Required[...]`/`NotRequired[...]` are read from the resolved hints: under
    `from __future__ import annotations` Python 3.11 cannot see them when it makes the class,
    so its `__required_keys__` would count a `NotRequired` key as required.
    """
    try:
        raw = typing.get_type_hints(tp, include_extras=True)
    except Exception:  # noqa: BLE001  # unresolvable annotations count as none
        return dict.fromkeys(getattr(tp, "__annotations__", {}), Any), tp.__required_keys__
    required = set(tp.__required_keys__)
    for key, hint in raw.items():
        inner = hint
        while typing.get_origin(inner) is Annotated:
            inner = typing.get_args(inner)[0]
        origin = typing.get_origin(inner)
        if origin is typing.NotRequired:
            required.discard(key)
        elif origin is typing.Required:
            required.add(key)
    plain = typing.get_type_hints(tp)  # without Annotated/Required/NotRequired, at any depth
    return {key: _strip(plain[key]) for key in raw}, frozenset(required)


def type_name(tp: Any) -> str:
    """A short readable name: `int`, `list[Row]`, `int | None`, `Any`."""
    if tp is Any:
        return "Any"
    if tp is None or tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None and args:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', None) or type_name(origin)}[{inner}]"
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


# -- the rule ------------------------------------------------------------------------------------


def edge_type_issues(scope: Scope) -> Iterator[ValidationIssue]:
    """A `type_mismatch` issue for every edge whose producer's type does not fit its consumer.

    Unannotated (or `Any`) sides pass, so a definition without annotations costs one type
    lookup per stage with inputs.
    """
    by_id: dict[str, StageDefinition] = {}
    for s in scope.stages:
        by_id.setdefault(s.id, s)  # the first definition wins, as in `get_stage`
    for s in scope.stages:
        if not s.inputs:
            continue
        expected = input_type(s)
        if expected is Any or not has_async_execute(s.stage):
            continue  # untyped, or not a stage at all (reported as invalid_stage already)
        producers = [by_id[d] for d in s.inputs if d in by_id]
        if len(producers) < len(s.inputs):
            continue  # an unknown input is reported already; its type is anyone's guess
        if s.pattern is ExecutionPattern.FAN_OUT:
            if len(producers) == 1:
                yield from _fan_out_edge(s, expected, producers[0])
        elif len(producers) == 1:
            yield from _single_edge(s, expected, producers[0], by_id)
        else:
            yield from _multi_edge(s, expected, producers)


def _mismatch(consumer: StageDefinition, message: str) -> ValidationIssue:
    return ValidationIssue(code="type_mismatch", stage_id=consumer.id, message=message)


def _single_edge(
    s: StageDefinition,
    expected: Any,
    producer: StageDefinition,
    by_id: Mapping[str, StageDefinition] | None = None,
) -> Iterator[ValidationIssue]:
    out = edge_type(producer)
    if typing.get_origin(expected) in _ITERATORS or expected in _ITERATORS:
        if not streams_out(producer, by_id or {}):
            yield _mismatch(
                s,
                f"Stage {s.id!r} reads its input as {type_name(expected)} but stage "
                f"{producer.id!r} does not stream (only an async generator stage, or a FAN_OUT "
                "over one, does); annotate the input as a list instead",
            )
            return
        # A streaming consumer (SPEC 11) reads the items its producer's list would hold.
        (item,) = typing.get_args(expected)[:1] or (Any,)
        expected = list[item]  # type: ignore[valid-type]  # a runtime type expression
    if fits(out, expected) is False:
        yield _mismatch(
            s,
            f"Stage {s.id!r} expects input {type_name(expected)} but stage {producer.id!r} "
            f"produces {type_name(out)}; {FIX}",
        )


_ITERATORS: Final = (collections.abc.AsyncIterator, collections.abc.AsyncIterable)


def _fan_out_edge(
    s: StageDefinition, expected: Any, producer: StageDefinition
) -> Iterator[ValidationIssue]:
    out = edge_type(producer)
    as_list = fits(out, list[expected])
    if as_list is not False or fits(out, tuple[expected, ...]) is not False:
        return
    if fits(out, list[Any]) is False and fits(out, tuple[Any, ...]) is False:
        problem = "; a FAN_OUT stage maps over a list or tuple, so its input stage must produce one"
    else:
        problem = f"; {FIX}"
    yield _mismatch(
        s,
        f"FAN_OUT stage {s.id!r} expects items of {type_name(expected)} but stage "
        f"{producer.id!r} produces {type_name(out)}{problem}",
    )


def _multi_edge(
    s: StageDefinition, expected: Any, producers: list[StageDefinition]
) -> Iterator[ValidationIssue]:
    keyed = _keyed_fields(expected)
    if keyed is None:
        yield from _positional_or_mapping(s, expected, producers)
        return
    fields, required = keyed
    by_key = {p.id: p for p in producers}
    for key, want in fields.items():
        producer = by_key.get(key)
        if producer is None:
            if key in required:
                yield _missing_key(s, expected, key, want, by_key.keys() - fields.keys())
            continue
        out = edge_type(producer)
        if fits(out, want) is False:
            yield _mismatch(
                s,
                f"Stage {s.id!r} expects input[{key!r}] to be {type_name(want)} but stage "
                f"{producer.id!r} produces {type_name(out)}; {FIX}",
            )


def _missing_key(
    s: StageDefinition, expected: Any, key: str, want: Any, unclaimed: set[str]
) -> ValidationIssue:
    close = difflib.get_close_matches(key, sorted(unclaimed), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return _mismatch(
        s,
        f"Stage {s.id!r} expects input[{key!r}] ({type_name(want)}, a key of "
        f"{type_name(expected)}) but has no input stage {key!r}; {hint}the keys must be the "
        "ids in its inputs: rename the key or add the input",
    )


def _keyed_fields(tp: Any) -> tuple[dict[str, Any], frozenset[str]] | None:
    """A TypedDict's or pydantic model's fields and required keys; None for other types."""
    try:
        return _keyed_fields_memo(tp)
    except TypeError:  # an unhashable type expression
        return _read_keyed_fields(tp)


@functools.lru_cache(maxsize=1024)
def _keyed_fields_memo(tp: Any) -> tuple[dict[str, Any], frozenset[str]] | None:
    return _read_keyed_fields(tp)


def _read_keyed_fields(tp: Any) -> tuple[dict[str, Any], frozenset[str]] | None:
    if typing.is_typeddict(tp):
        return _typeddict_keys(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields: dict[str, Any] = {}
        required: set[str] = set()
        for name, info in tp.model_fields.items():
            key = info.alias or name
            fields[key] = Any if info.annotation is None else _strip(info.annotation)
            if info.is_required():
                required.add(key)
        return fields, frozenset(required)
    return None


def _positional_or_mapping(
    s: StageDefinition, expected: Any, producers: list[StageDefinition]
) -> Iterator[ValidationIssue]:
    """Several inputs into a type that is not keyed by stage id."""
    args = typing.get_args(expected)
    if (
        _receives_a_tuple(s.stage)
        and typing.get_origin(expected) is tuple
        and len(args) == len(producers)
        and Ellipsis not in args
    ):
        # A stage the builder wires from a tuple of refs receives its inputs as a tuple; any
        # other stage with several inputs receives `{id: output}`, whatever it annotates.
        for i, (producer, want) in enumerate(zip(producers, args, strict=True)):
            out = edge_type(producer)
            if fits(out, want) is False:
                yield _mismatch(
                    s,
                    f"Stage {s.id!r} expects input[{i}] to be {type_name(want)} but stage "
                    f"{producer.id!r} produces {type_name(out)}; {FIX}",
                )
        return
    mapping = _mapping_args(expected)
    if mapping is None:
        if fits(dict[str, Any], expected) is False:
            yield _receives_a_dict(s, expected, producers)
        return
    key_type, value_type = mapping
    if fits(str, key_type) is False:
        yield _receives_a_dict(s, expected, producers)
        return
    for producer in producers:
        out = edge_type(producer)
        if fits(out, value_type) is False:
            yield _mismatch(
                s,
                f"Stage {s.id!r} expects input values of {type_name(value_type)} but stage "
                f"{producer.id!r} produces {type_name(out)}; {FIX}",
            )


def _receives_a_dict(
    s: StageDefinition, expected: Any, producers: list[StageDefinition]
) -> ValidationIssue:
    ids = ", ".join(repr(p.id) for p in producers)
    return _mismatch(
        s,
        f"Stage {s.id!r} expects input {type_name(expected)} but has {len(producers)} "
        f"inputs ({ids}), so it receives a dict {{stage id: output}}; annotate its input "
        "as a TypedDict (or pydantic model) keyed by those ids",
    )


def _mapping_args(tp: Any) -> tuple[Any, Any] | None:
    """`(K, V)` of a parametrized mapping type that a plain `dict` is; None otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(origin, type) and issubclass(dict, origin) and len(args) == 2:
        return args[0], args[1]
    return None


register_late_rule(edge_type_issues)
register_late_rule(stream_resource_issues)


def _receives_a_tuple(stage: object) -> bool:
    """Whether the builder's tuple adapter is among `stage`'s wrappers (a recorder may wrap it)."""
    for _ in range(100):
        if getattr(stage, "__pipeline_tuple_input__", False):
            return True
        inner = getattr(stage, "__wrapped_stage__", None)
        if inner is None:
            return False
        stage = inner
    return False

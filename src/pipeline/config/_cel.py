"""CEL `when:` conditions: compiled and type-checked at load time, evaluated per run.

The engine is Google's `cel-expr-python` (the C++ cel-cpp runtime; extra `cel`): its
compiler checks syntax, variable names and types before anything runs, with the position of
each problem, and one evaluation costs a few microseconds (`benchmarks/cel_conditions.py`
compares it with the other CEL packages). Nothing here evaluates Python: an expression can
only read the four variables and call CEL's functions plus `sum`, `avg`, `min` and `max` over
lists of numbers (and the `math.` and string extensions).

Variables: `state` (the context's state), `metrics` (its metrics), `outputs` (the outputs of
the stages that succeeded so far, by id) and `input` (this stage's input). Values are turned
into CEL data: mappings, lists (tuples and sets too), str, bytes, numbers, bool, None;
pydantic models and dataclasses become maps of their fields, other objects maps of their
public attributes (`__slots__` included). Only the entries of `state` and `outputs` an
expression names (`outputs.x`, `outputs["x"]`) are converted on each evaluation; an expression
that uses the map itself (`"x" in outputs`, `outputs.size()`) gets all of it. A missing key, a type error or a result that is not a bool raises, which
fails the stage (`condition of stage 'x' raised ...`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

from pipeline._env import CONDITION_ARGS_ATTR

if TYPE_CHECKING:
    from pipeline.context import PipelineContext

VARIABLES: Final = ("state", "metrics", "outputs", "input")
"""The names a `when:` expression may read."""

_INT64 = (-(2**63), 2**63 - 1)
_MAX_DEPTH = 32
_POSITION = re.compile(r"<input>:(-?\d+):(-?\d+): ")
_SHOWN = 60
_SELECT = r"""\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)(?![A-Za-z0-9_]|\s*\()|\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\])"""


@dataclasses.dataclass(frozen=True)
class CelIssue:
    """Why a `when:` expression does not compile; the loader makes it a `ConfigError`.

    `line` and `column` are 1-based within the expression, or None when CEL gives none.
    """

    problem: str
    fix: str
    line: int | None = None
    column: int | None = None


def _cel() -> Any:
    try:
        from cel_expr_python import cel  # type: ignore[import-untyped]  # no py.typed
    except ImportError:
        msg = "when: conditions need the CEL engine: pip install 'wavepipe[cel]'"
        raise ImportError(msg) from None
    return cel


def _numbers(values: Any, name: str) -> list[float | int]:
    items = list(values)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):
            msg = f"{name}() takes a list of numbers, got an item {item!r}"
            raise TypeError(msg)
    return items


def _sum(values: Any) -> float:
    return float(math.fsum(_numbers(values, "sum")))


def _avg(values: Any) -> float:
    items = _numbers(values, "avg")
    if not items:
        msg = "avg() of an empty list"
        raise ValueError(msg)
    return float(math.fsum(items)) / len(items)


def _min(values: Any) -> float:
    items = _numbers(values, "min")
    if not items:
        msg = "min() of an empty list"
        raise ValueError(msg)
    return float(min(items))


def _max(values: Any) -> float:
    items = _numbers(values, "max")
    if not items:
        msg = "max() of an empty list"
        raise ValueError(msg)
    return float(max(items))


@functools.cache
def environment() -> Any:
    """The one CEL environment: the four variables, the math and string extensions, stats."""
    cel = _cel()
    from cel_expr_python.ext import (  # type: ignore[import-untyped]  # no py.typed
        ext_math,
        ext_strings,
    )

    dyn = cel.Type.DYN
    by_name = cel.Type.Map(cel.Type.STRING, dyn)
    functions = [
        cel.FunctionDecl(
            name, [cel.Overload(f"{name}_list", cel.Type.DOUBLE, [cel.Type.List(dyn)], impl=impl)]
        )
        for name, impl in (("sum", _sum), ("avg", _avg), ("min", _min), ("max", _max))
    ]
    variables = {"state": by_name, "metrics": by_name, "outputs": by_name, "input": dyn}
    return cel.NewEnv(
        variables=variables,
        extensions=[ext_math.ExtMath(), ext_strings.ExtStrings()],
        functions=functions,
    )


class CelCondition:
    """A compiled CEL `when:` expression, usable as a `StageDefinition` condition.

    Called as `condition(context, input, outputs)` (it asks the executor for its stage's
    input and the finished outputs); returns the expression's bool. Equal when the expressions
    are equal, so definitions loaded twice from one file compare equal.

    Args:
        expression: The CEL source.
    """

    __pipeline_cel__: ClassVar[bool] = True
    """Marks a CEL condition for `PipelineDefinition.to_config` (which imports nothing)."""

    def __init__(self, expression: str) -> None:
        compiled = compile_condition(expression)
        if isinstance(compiled, CelIssue):
            msg = f"{compiled.problem}; {compiled.fix}"
            raise ValueError(msg)  # the loader reports a ConfigError before getting here
        self.expression = expression
        """The CEL source, as written in the file."""
        self._program = compiled
        self._state_names = named_entries(expression, "state")
        self._output_names = named_entries(expression, "outputs")
        self._error = _cel().Type.ERROR
        setattr(self, CONDITION_ARGS_ATTR, True)

    def __call__(
        self,
        context: PipelineContext[Any],
        value: Any = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> bool:
        """Evaluate against the context's state and metrics, `value` and `outputs`."""
        data = {
            "state": _entries(context.state, self._state_names),
            "metrics": to_cel(context.metrics_snapshot()),
            "outputs": _entries({} if outputs is None else outputs, self._output_names),
            "input": to_cel(value),
        }
        result = self._program.eval(data=data)
        if result.type() == self._error:
            msg = f"when: {self.expression!r} failed: {result.value()}"
            raise ValueError(msg)
        verdict = result.value()
        if not isinstance(verdict, bool):
            kind = result.type().name().lower()
            msg = f"when: {self.expression!r} gave {verdict!r} (a {kind}), not a bool"
            raise ValueError(msg)
        return verdict

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CelCondition) and other.expression == self.expression

    def __hash__(self) -> int:
        return hash(("cel", self.expression))

    def __repr__(self) -> str:
        return f"CelCondition({self.expression!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (CelCondition, (self.expression,))


def named_entries(expression: str, variable: str) -> frozenset[str] | None:
    """The keys of `variable` that `expression` reads, or None when it may read any.

    A conservative scan of the text: only when every occurrence of the word `variable` is
    followed by `.name` (not a call) or `["name"]` are those names the answer. Anything else
    (`"x" in outputs`, `outputs.size()`, `outputs[k]`, the word inside a string literal) gives
    None, so a name is never left out: at worst more is converted than needed.
    """
    names: set[str] = set()
    for found in re.finditer(rf"\b{variable}\b", expression):
        select = re.match(_SELECT, expression[found.end() :])
        if select is None:
            return None
        names.add(next(group for group in select.groups() if group is not None))
    return frozenset(names)


def _entries(mapping: Mapping[str, Any], names: frozenset[str] | None) -> dict[Any, Any]:
    """`mapping` as a CEL map, converting only `names` (all of it for None)."""
    if names is None:
        return {_key(k): to_cel(v, 1) for k, v in mapping.items()}
    return {name: to_cel(mapping[name], 1) for name in names if name in mapping}


def compile_condition(expression: str) -> Any:
    """The compiled, type-checked program of `expression`, or a `CelIssue` saying what is wrong.

    Raises:
        ImportError: The `cel` extra is not installed (the message names it).
    """
    cel = _cel()
    if not expression.strip():
        return CelIssue("when: is empty", "write a CEL expression such as state.ready == true")
    try:
        program = environment().compile(expression)
    except Exception as exc:  # noqa: BLE001  # the compiler's only error type is RuntimeError
        return _syntax_error(expression, str(exc))
    kind = program.return_type()
    if kind not in (cel.Type.BOOL, cel.Type.DYN):
        return CelIssue(
            f"when: {_shown(expression)} gives a {kind.name().lower()}, not a bool",
            "compare it, e.g. state.count > 0",
        )
    return program


def _syntax_error(expression: str, message: str) -> CelIssue:
    text = message.removeprefix("INVALID_ARGUMENT: ").removeprefix("ERROR: ")
    where = _POSITION.search(text)
    line = column = None
    if where and int(where[1]) > 0 and int(where[2]) > 0:
        line, column = int(where[1]), int(where[2])
    first = _POSITION.sub("", text.split("\n", 1)[0]).replace(" (in container '')", "")
    fix = "fix the expression"
    if "undeclared reference" in first:
        fix = f"use only the variables {', '.join(VARIABLES)} (and CEL functions)"
    elif "no matching overload" in first:
        fix = "check the operand types (a map key is a str: state.name or state['name'])"
    return CelIssue(f"when: {_shown(expression)}: {first}", fix, line, column)


def _shown(expression: str) -> str:
    text = repr(expression)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 4]}...{text[-1]}"


def to_cel(value: Any, depth: int = 0) -> Any:
    """`value` as CEL data (see the module docstring for what becomes what)."""
    if value is None or isinstance(value, bool | str | bytes | float):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else float(value)
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, enum.Enum):
        return to_cel(value.value, depth + 1)
    if isinstance(value, Mapping):
        return {_key(k): to_cel(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_cel(v, depth + 1) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump) and hasattr(type(value), "model_fields"):
        return to_cel(dump(), depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return to_cel(fields, depth + 1)
    attributes = _attributes(value)
    if attributes is None:
        return str(value)
    public = {k: v for k, v in attributes.items() if not k.startswith("_")}
    return to_cel(public, depth + 1)


def _attributes(value: Any) -> dict[str, Any] | None:
    """An object's instance attributes: its `__dict__` and its `__slots__`, None if neither."""
    found: dict[str, Any] = {}
    has_any = False
    for cls in reversed(type(value).__mro__):
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            has_any = True
            missing = object()
            attribute = getattr(value, name, missing)
            if attribute is not missing:
                found[name] = attribute
    try:
        found.update(vars(value))
    except TypeError:
        if not has_any:
            return None
    return found


def _key(key: Any) -> Any:
    return key if isinstance(key, str | int) and not isinstance(key, bool) else str(key)

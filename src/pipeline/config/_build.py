"""From checked file data to a `PipelineDefinition`: references, conditions, construction checks.

Nothing is returned until every stage is built and the whole definition validates, so a file
never half-loads; each problem is a `ConfigError` at the key or value it is about (through the
`Locator`). The only code that runs is importing the modules that references name and
constructing the classes they name with their `params` (plus `registry` values, which the
caller chose).
"""

from __future__ import annotations

import difflib
import typing
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pipeline import _loading
from pipeline.builder import _tuple_adapter
from pipeline.config._cel import CelCondition, CelIssue, compile_condition
from pipeline.config._dump import remember
from pipeline.config._schema import PipelineSpec, RetrySpec, StageSpec
from pipeline.config._source import dotted
from pipeline.definition import (
    ExecutionPattern,
    PipelineDefinition,
    RetryConfig,
    StageDefinition,
)
from pipeline.errors import ConfigError, DefinitionError, LoadError
from pipeline.functions import FunctionStage

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pipeline.config._source import DataPath, Locator
    from pipeline.errors import ValidationIssue

_ISSUE_FIELDS = {
    "duplicate_id": "id",
    "unknown_input": "inputs",
    "cycle": "inputs",
    "fan_out_inputs": "inputs",
    "type_mismatch": "inputs",
    "missing_condition": "pattern",
    "invalid_stage": "stage",
    "unpicklable": "stage",
    "unknown_runner": "runner",
    "unknown_resource": "uses",
    "resource_weight": "uses",
}
"""Which key of a stage a validation issue points at."""


def check_shape(data: Any, locator: Locator) -> PipelineSpec:
    """The document as a `PipelineSpec`; the first schema error as a `ConfigError` otherwise."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise locator.error((), f"the document is {kind}, not a mapping", _TOP_FIX)
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = min(errors, key=lambda e: _document_order(e, data, locator))
        raise _schema_error(first, data, locator, len(errors)) from None


_TOP_FIX = "start with name: ... and a stages list (see python -m pipeline schema)"


def _schema_error(error: Any, data: Any, locator: Locator, count: int) -> ConfigError:
    kind = error["type"]
    path = _data_path(error["loc"], data, kind)
    where = dotted(path)
    more = f" (and {count - 1} more problem(s))" if count > 1 else ""
    if kind == "extra_forbidden":
        model = _model_at(path)
        known = ", ".join(model.model_fields) if model else ""
        close = difflib.get_close_matches(str(path[-1]), list(model.model_fields) if model else [])
        hint = f"did you mean {close[0]!r}? " if close else ""
        problem = f"unknown key {path[-1]!r} at {where}{more}"
        return locator.error(path, problem, f"{hint}remove it; known keys: {known}", key=True)
    if kind == "missing":
        return locator.error(path[:-1], f"{where} is missing{more}", f"add {path[-1]!r}")
    got = _value_at(path, data)
    message = str(error["msg"]).removeprefix("Value error, ")
    problem = f"{where} is {got!r}: {message}{more}"
    return locator.error(path, problem, _fix_for(kind, message))


def _document_order(error: Any, data: Any, locator: Locator) -> tuple[int, int]:
    """Where an error is in the file, so the first one reported is the first one written."""
    path = _data_path(error["loc"], data, error["type"])
    where = locator.position(path, key=error["type"] == "extra_forbidden")
    return where if where is not None else (0, 0)


def _fix_for(kind: str, message: str) -> str:
    fixes = {
        "bool_type": "use true or false (unquoted)",
        "int_type": "use a whole number (unquoted)",
        "float_type": "use a number (unquoted)",
        "string_type": "use text (quote it)",
        "list_type": "use a list",
        "dict_type": "use a mapping of keys to values",
        "model_type": "use a mapping of keys to values",
        "string_too_short": "use non-empty text",
        "literal_error": 'use "full", a fraction in (0, 1] or leave it out',
    }
    if kind == "value_error":
        return "use one of the values named"
    return fixes.get(kind, f"change the value ({message})")


def _data_path(loc: tuple[Any, ...], data: Any, kind: str = "") -> DataPath:
    """The part of pydantic's `loc` that exists in the document (union tags dropped).

    For a missing key (`kind == "missing"`) the path ends with that key.
    """
    path: list[str | int] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
        elif kind == "missing" and isinstance(node, dict) and isinstance(part, str):
            path.append(part)  # the missing key: named in the message, its mapping located
            break
        else:
            break
        path.append(part)
    return tuple(path)


def _value_at(path: DataPath, data: Any) -> Any:
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    text = repr(node)
    return node if len(text) <= 80 else f"{text[:77]}..."


def _model_at(path: DataPath) -> type[PipelineSpec | StageSpec | RetrySpec] | None:
    names = [p for p in path[:-1] if isinstance(p, str)]
    if not names:
        return PipelineSpec
    if names == ["stages"]:
        return StageSpec
    if names == ["stages", "retry_config"]:
        return RetrySpec
    return None


def build(
    spec: PipelineSpec,
    locator: Locator,
    registry: Mapping[str, object] | None,
    *,
    allow_imports: bool,
) -> PipelineDefinition:
    """The definition the checked `spec` describes, validated; `ConfigError` at the culprit."""
    resolver = _Resolver(locator, registry, allow_imports=allow_imports)
    stages = [_stage(s, ("stages", i), resolver) for i, s in enumerate(spec.stages)]
    try:
        definition = PipelineDefinition(
            spec.name, stages, description=spec.description, fail_fast=spec.fail_fast
        )
    except DefinitionError as exc:  # pragma: no cover - the schema checks these fields
        raise locator.error((exc.field,), f"{exc.field} {exc.problem}", exc.fix) from None
    if definition.issues:
        raise _issue_error(definition.issues, spec, locator)
    return definition


def _issue_error(
    issues: tuple[ValidationIssue, ...], spec: PipelineSpec, locator: Locator
) -> ConfigError:
    issue = issues[0]
    more = f" (and {len(issues) - 1} more problem(s))" if len(issues) > 1 else ""
    path: DataPath = ("stages",)
    if issue.stage_id is not None:
        indexes = [i for i, s in enumerate(spec.stages) if s.id == issue.stage_id]
        if indexes:
            index = indexes[-1] if issue.code == "duplicate_id" else indexes[0]
            path = ("stages", index, _ISSUE_FIELDS.get(issue.code, "id"))
    message, _, fix = issue.message.partition("; ")
    return locator.error(path, f"{message}{more}", fix or "fix the stage's wiring")


class _Resolver:
    """Turns references (`module:attr`) and registry names into objects."""

    def __init__(
        self, locator: Locator, registry: Mapping[str, object] | None, *, allow_imports: bool
    ) -> None:
        self.locator = locator
        self.registry = registry
        self.allow_imports = allow_imports

    def resolve(self, reference: str, path: DataPath, what: str) -> object:
        if ":" not in reference:
            return self._registered(reference, path)
        if not self.allow_imports:
            raise self.locator.error(
                path, f"{what} {reference!r} would import a module, and imports are disabled",
                "use a name from the registry (load(..., registry={...})) or allow imports",
            )  # fmt: skip
        try:
            return _loading.load_attribute(reference, what=what)
        except LoadError as exc:
            problem = f"{what} reference {reference!r}: {exc.problem}: {exc.detail}"
            raise self.locator.error(path, problem, exc.fix) from None

    def _registered(self, name: str, path: DataPath) -> object:
        registry = self.registry
        if registry is None:
            raise self.locator.error(
                path, f"{name!r} is not a module:attr reference and no registry was given",
                f"write it as package.module:{name}, or pass registry={{{name!r}: ...}}",
            )  # fmt: skip
        try:
            return registry[name]
        except KeyError:
            close = difflib.get_close_matches(name, [str(k) for k in registry])
            hint = f"did you mean {close[0]!r}? " if close else ""
            known = ", ".join(sorted(str(k) for k in registry)[:10]) or "none"
            raise self.locator.error(
                path, f"{name!r} is not in the registry",
                f"{hint}use a registered name ({known}) or a module:attr reference",
            ) from None  # fmt: skip


def _stage_object(spec: StageSpec, path: DataPath, resolver: _Resolver) -> Any:
    made, created = _make_stage(spec, path, resolver)
    if created:  # an object used as is may be shared: to_config finds it by its own name
        remember(made, spec.stage, spec.params)
    return made


def _make_stage(spec: StageSpec, path: DataPath, resolver: _Resolver) -> tuple[Any, bool]:
    """The stage object, and whether loading created it (rather than using one as is)."""
    locator = resolver.locator
    found = resolver.resolve(spec.stage, (*path, "stage"), "stage")
    if isinstance(found, type):
        try:
            return found(**spec.params), True
        except Exception as exc:  # noqa: BLE001  # the user's constructor: reported, not raised
            detail = _loading.describe_exception(exc)
            where = (*path, "params") if spec.params else (*path, "stage")
            raise locator.error(
                where, f"{found.__name__}(**params) raised {detail}",
                "fix params (they are the class's keyword arguments)",
            ) from None  # fmt: skip
    if spec.params:
        kind = "function" if _is_function(found) else f"{type(found).__name__} instance"
        raise locator.error(
            (*path, "params"), f"params given, but {spec.stage!r} is a {kind}, not a class",
            "remove params (only a class is constructed with them)",
        )  # fmt: skip
    if _is_function(found):
        function: Any = found  # callable, checked above
        return FunctionStage(function), True
    if callable(getattr(found, "execute", None)):
        return found, False
    raise locator.error(
        (*path, "stage"), f"{spec.stage!r} is a {type(found).__name__}, not a stage",
        "name a stage class, a function (input, context) or a stage instance",
    )  # fmt: skip


def _is_function(obj: object) -> bool:
    return callable(obj) and not isinstance(obj, type) and not hasattr(obj, "execute")


def _maybe_tuple(stage: Any, spec: StageSpec, pattern: ExecutionPattern) -> Any:
    """A stage taking `tuple[A, B, ...]` with as many inputs receives them as a tuple.

    What `PipelineBuilder` does for a tuple of refs; without it such a stage would receive a
    `{id: output}` dict (which validation reports as a type mismatch).
    """
    if len(spec.inputs) < 2 or pattern is ExecutionPattern.FAN_OUT:
        return stage
    from pipeline._types import stage_input_type

    declared = stage_input_type(stage)
    args = typing.get_args(declared)
    fits = typing.get_origin(declared) is tuple and len(args) == len(spec.inputs)
    if fits and Ellipsis not in args:
        return _tuple_adapter(stage, tuple(spec.inputs))
    return stage


def _retry(spec: RetrySpec, path: DataPath, resolver: _Resolver) -> RetryConfig:
    locator = resolver.locator
    retry_on: list[type[BaseException]] = []
    for i, reference in enumerate(spec.retry_on):
        found = resolver.resolve(reference, (*path, "retry_on", i), "exception")
        if not (isinstance(found, type) and issubclass(found, BaseException)):
            raise locator.error(
                (*path, "retry_on", i), f"{reference!r} is not an exception class",
                "name exception classes, e.g. builtins:TimeoutError",
            )  # fmt: skip
        retry_on.append(found)
    retry_if = None
    if spec.retry_if is not None:
        retry_if = resolver.resolve(spec.retry_if, (*path, "retry_if"), "retry_if")
    fields = spec.model_dump(exclude={"retry_on", "retry_if"})
    try:
        return RetryConfig(**fields, retry_on=tuple(retry_on), retry_if=retry_if)  # type: ignore[arg-type]  # checked by RetryConfig
    except DefinitionError as exc:
        problem = f"retry_config.{exc.field} {exc.problem}"
        raise locator.error((*path, exc.field), problem, exc.fix) from None


def _stage(spec: StageSpec, path: DataPath, resolver: _Resolver) -> StageDefinition:
    locator = resolver.locator
    pattern = ExecutionPattern(spec.pattern)
    stage = _maybe_tuple(_stage_object(spec, path, resolver), spec, pattern)
    condition = None
    if spec.when is not None:
        condition = _condition(spec.when, (*path, "when"), locator)
    retry = None
    if spec.retry_config is not None:
        retry = _retry(spec.retry_config, (*path, "retry_config"), resolver)
    try:
        return StageDefinition(
            spec.id, stage, pattern=pattern, inputs=tuple(spec.inputs), condition=condition,
            retry_config=retry, timeout_ms=spec.timeout_ms, critical=spec.critical,
            max_concurrent_fan_out=spec.max_concurrent_fan_out, description=spec.description,
            cache=spec.cache, cache_version=spec.cache_version,
            cache_code_fingerprint=spec.cache_code_fingerprint, runner=spec.runner,
            uses=dict(spec.uses), batch_size=spec.batch_size, buffer=spec.buffer,
        )  # fmt: skip
    except DefinitionError as exc:
        field = "when" if exc.field == "condition" else exc.field
        problem = f"stage {spec.id!r}: {field} {exc.problem}"
        raise locator.error((*path, field), problem, exc.fix) from None


def _condition(expression: str, path: DataPath, locator: Locator) -> CelCondition:
    try:
        compiled = compile_condition(expression)
    except ImportError as exc:
        raise locator.error(path, str(exc), "pip install 'wavepipe[cel]'") from None
    if isinstance(compiled, CelIssue):
        raise locator.error(
            path, compiled.problem, compiled.fix, inside=(compiled.line, compiled.column)
        )
    return CelCondition(expression)

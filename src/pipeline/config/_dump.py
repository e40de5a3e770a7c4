"""`PipelineDefinition.to_config`: a definition made of importable parts, written as a file.

Each stage object becomes a reference `load` resolves to an equal stage: a `@stage` function
or a module-level instance by its own name, a `FunctionStage` of a module-level function by the
function's, an instance of a class whose constructor takes no arguments by its class. A stage
loaded from a file keeps the reference and `params` it was loaded with. Conditions must be CEL
(`when:`), `retry_on` exception classes and `retry_if` module-level functions. Anything else
(a lambda, a local class, an instance built with arguments, a Python condition) raises a
`ConfigError` naming the stage and the field.

This module imports no other `pipeline` module but `errors` (the definition module imports it
lazily; objects are recognised by their attributes), and PyYAML only for YAML output.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import math
import weakref
from typing import Any

from pipeline.errors import ConfigError

_ORIGINS: weakref.WeakKeyDictionary[Any, tuple[str, dict[str, Any]]] = weakref.WeakKeyDictionary()
_STAGE_DEFAULTS: dict[str, Any] = {
    "pattern": "sequential",
    "inputs": [],
    "timeout_ms": None,
    "critical": True,
    "max_concurrent_fan_out": 4,
    "description": None,
    "cache": True,
    "cache_version": 0,
    "cache_code_fingerprint": False,
    "runner": None,
    "uses": {},
    "batch_size": None,
    "buffer": None,
}
_RETRY_FIELDS = (
    "max_attempts",
    "initial_delay_ms",
    "backoff_multiplier",
    "max_delay_ms",
    "retryable_errors",
    "jitter",
    "jitter_seed",
)


def remember(stage: object, reference: str, params: dict[str, Any]) -> None:
    """Record where a loaded stage came from, so `to_config` writes the same reference."""
    with contextlib.suppress(TypeError):  # not weak-referenceable: to_config uses the rules
        _ORIGINS[stage] = (reference, dict(params))


def to_config(definition: Any, fmt: str) -> str:
    """`definition` as `fmt` (`"yaml"`, `"toml"` or `"json"`) text; see the module docstring."""
    source = f"<to_config of pipeline {definition.name!r}>"
    if fmt not in ("yaml", "toml", "json"):
        raise ConfigError(source, f"unknown format {fmt!r}", 'use "yaml", "toml" or "json"')
    data: dict[str, Any] = {"name": definition.name}
    if definition.description is not None:
        data["description"] = definition.description
    if definition.fail_fast is not True:
        data["fail_fast"] = definition.fail_fast
    data["stages"] = [_stage(s, source) for s in definition.stages]
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        try:
            import yaml  # type: ignore[import-untyped]  # no stubs; the yaml extra
        except ImportError:  # pragma: no cover - the yaml extra is part of the dev install
            fix = "pip install 'wavepipe[yaml]' (or write TOML or JSON)"
            raise ConfigError(source, "writing YAML needs PyYAML", fix) from None
        text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return text
    return _toml(data, source)


def _fail(source: str, sid: str, field: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(source, f"stage {sid!r} field {field!r}: {problem}", fix)


def _stage(sdef: Any, source: str) -> dict[str, Any]:
    sid = sdef.id
    out: dict[str, Any] = {"id": sid}
    out.update(_stage_reference(sdef.stage, sid, source))
    for name in ("input_type", "output_type"):
        if getattr(sdef, name) is not None:
            raise _fail(
                source, sid, name, "a Python type, which the file format cannot hold",
                "leave it out (the stage's annotations declare types) before to_config()",
            )  # fmt: skip
    for name, default in _STAGE_DEFAULTS.items():
        value = getattr(sdef, name)
        if name == "pattern":
            value = str(value.value)
        elif name == "inputs":
            value = list(value)
        elif name == "uses":
            value = dict(value)
        if value != default or type(value) is not type(default):
            out[name] = value
    if sdef.condition is not None:
        expression = getattr(sdef.condition, "expression", None)
        if not getattr(sdef.condition, "__pipeline_cel__", False) or not isinstance(
            expression, str
        ):
            raise _fail(
                source, sid, "condition", f"{sdef.condition!r} is Python code, not CEL",
                "express it as a CEL when: expression (pipeline.config.CelCondition)",
            )  # fmt: skip
        out["when"] = expression
    if sdef.retry_config is not None:
        out["retry_config"] = _retry(sdef.retry_config, sid, source)
    return out


def _retry(retry: Any, sid: str, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _RETRY_FIELDS:
        value = getattr(retry, name)
        if isinstance(value, tuple):
            value = list(value)
        out[name] = value
    for kind in retry.retry_on:
        reference = _reference_of(kind)
        if reference is None:
            raise _fail(
                source, sid, "retry_config.retry_on", f"{kind!r} is not importable",
                "use exception classes defined at module level",
            )  # fmt: skip
        out.setdefault("retry_on", []).append(reference)
    if retry.retry_if is not None:
        reference = _reference_of(retry.retry_if)
        if reference is None:
            raise _fail(
                source, sid, "retry_config.retry_if", f"{retry.retry_if!r} is not importable",
                "use a function defined at module level (not a lambda or a local function)",
            )  # fmt: skip
        out["retry_if"] = reference
    return {k: v for k, v in out.items() if v is not None}


def _reference_of(obj: Any) -> str | None:
    """`module:qualname` when importing it gives back `obj` itself; else None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    return f"{module}:{qualname}" if _imports_as(module, qualname, obj) else None


def _imports_as(module: str, attr: str, obj: Any) -> bool:
    try:
        found: Any = importlib.import_module(module)
        for part in attr.split("."):
            found = getattr(found, part)
    except Exception:  # noqa: BLE001  # not importable: the caller reports the stage
        return False
    return found is obj


def _stage_reference(stage: Any, sid: str, source: str) -> dict[str, Any]:
    while getattr(stage, "__pipeline_tuple_input__", False):  # load re-wraps from annotations
        inner = getattr(stage, "__wrapped_stage__", None)
        if inner is None:
            break
        stage = inner
    origin = _origin(stage)
    if origin is not None:
        loaded, params = origin
        return {"stage": loaded, **({"params": params} if params else {})}
    fn = getattr(stage, "fn", None)
    if type(stage).__name__ == "FunctionStage" and fn is not None:
        of_function = _reference_of(fn)
        if of_function is not None:
            return {"stage": of_function}
    found = _module_attribute(stage)
    if found is not None:
        return {"stage": found}
    cls = type(stage)
    of_class = _reference_of(cls)
    if of_class is not None and _no_arguments(cls):
        return {"stage": of_class}
    what = f"FunctionStage of {fn!r}" if fn is not None else f"a {cls.__qualname__} instance"
    raise _fail(
        source, sid, "stage", f"{what} cannot be referenced as module:attr",
        "define the function or class at module level (no lambda, no local class), or make "
        "the configured instance a module-level attribute",
    )  # fmt: skip


def _origin(stage: object) -> tuple[str, dict[str, Any]] | None:
    """The reference and params `stage` was loaded with, if `load` made it."""
    try:
        return _ORIGINS.get(stage)
    except TypeError:  # not weak-referenceable or not hashable: never recorded
        return None


def _module_attribute(stage: Any) -> str | None:
    """`module:NAME` when the stage object itself is a top-level attribute of its module."""
    fn = getattr(stage, "fn", None)
    module_name = getattr(fn, "__module__", None) or type(stage).__module__
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001  # not importable
        return None
    for name, value in vars(module).items():
        if value is stage and not name.startswith("_"):
            return f"{module_name}:{name}"
    return None


def _no_arguments(cls: type) -> bool:
    """Whether the class is constructed with no arguments at all (so no params are lost)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    return not signature.parameters


def _toml(data: dict[str, Any], source: str) -> str:
    lines = [f"{k} = {_toml_value(v, source, k)}" for k, v in data.items() if k != "stages"]
    for stage in data["stages"]:
        lines.extend(["", "[[stages]]"])
        sid = stage["id"]
        for key, value in stage.items():
            if value is None:
                if key == "max_concurrent_fan_out":
                    value = 0  # TOML has no null; 0 also means "no cap"
                else:
                    continue
            lines.append(f"{key} = {_toml_value(value, source, f'{sid}.{key}')}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any, source: str, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):  # a TOML basic string escapes as JSON does, plus DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, source, where) for v in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{_toml_value(str(k), source, where)} = {_toml_value(v, source, where)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    raise ConfigError(
        source, f"{where}: {value!r} ({type(value).__name__}) cannot be written as TOML",
        "use text, numbers, booleans, lists and tables (or write YAML or JSON)",
    )  # fmt: skip

"""Pickling for the runners that send work to another process: cloudpickle, and why it failed.

cloudpickle pickles functions and classes defined in a script's `__main__` (or in a closure)
by value, so they work in a worker that never imported the script. When something cannot be
pickled, `explain` walks the object (attributes, closure cells, referenced globals, container
entries) to name the part that failed, e.g. `attribute 'lock' (_thread.lock)`.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

EXTRA_HINT: Final = "pip install 'wavepipe[processes]'"
"""How to install cloudpickle, named by the error when it is missing."""

MAX_DEPTH: Final = 4
"""How deep `explain` looks for the part of an object that cannot be pickled."""


def cloudpickle_module() -> Any:
    """The `cloudpickle` module, or an ImportError naming the extra that installs it."""
    try:
        import cloudpickle  # type: ignore[import-untyped]  # no stubs; optional extra, imported when first needed
    except ImportError as exc:  # pragma: no cover - the dev environment has it
        msg = f"runners that use other processes need cloudpickle: {EXTRA_HINT}"
        raise ImportError(msg) from exc
    return cloudpickle


def dumps(value: Any) -> bytes:
    """`value` pickled with cloudpickle (raises whatever pickling raised)."""
    data: bytes = cloudpickle_module().dumps(value, protocol=5)
    return data


def try_dumps(value: Any) -> bytes | None:
    """`value` pickled with cloudpickle, or None when it cannot be."""
    try:
        return dumps(value)
    except Exception:  # noqa: BLE001  # any failure means "cannot be pickled"
        return None


def explain(value: Any, what: str) -> str:
    """Why `value` (called `what`) cannot be pickled, naming the innermost part that fails."""
    try:
        dumps(value)
    except Exception as exc:  # noqa: BLE001  # the reason is the point
        reason = _reason(exc)
    else:
        return f"{what} pickles"  # pragma: no cover - only called after a failure
    path = _culprit(value, what, MAX_DEPTH)
    return f"{path}: {reason}" if path != what else f"{what}: {reason}"


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip()
    return f"{name}: {text}" if text else name


def _culprit(value: Any, path: str, depth: int) -> str:
    """The deepest part of `value` that alone fails to pickle (its own path if none does)."""
    if depth == 0:
        return f"{path} ({_type_name(value)})"
    for label, part in _parts(value):
        if part is value or try_dumps(part) is not None:
            continue
        return _culprit(part, f"{path} -> {label}", depth - 1)
    return f"{path} ({_type_name(value)})"


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def _parts(value: Any) -> Iterator[tuple[str, Any]]:
    """The named parts of `value` a pickler would visit (a best effort, for messages only)."""
    if isinstance(value, dict):
        for key, item in list(value.items())[:1000]:
            yield f"[{key!r}]", item
        return
    if isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(list(value)[:1000]):
            yield f"[{i}]", item
        return
    if isinstance(value, types.FunctionType):
        code = value.__code__
        for name, cell in zip(code.co_freevars, value.__closure__ or (), strict=False):
            try:
                yield f"closure variable {name!r}", cell.cell_contents
            except ValueError:  # an empty cell
                continue
        module_globals = value.__globals__
        for name in code.co_names:
            if name in module_globals:
                yield f"global {name!r}", module_globals[name]
        return
    if isinstance(value, types.MethodType):
        yield "the method's object", value.__self__
        return
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        for name, item in attrs.items():
            yield f"attribute {name!r}", item
    for name in getattr(type(value), "__slots__", ()):
        if isinstance(name, str) and hasattr(value, name):
            yield f"attribute {name!r}", getattr(value, name)

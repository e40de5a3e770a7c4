"""Loading an object named by a `module:attr` reference, with one-line errors that say the fix.

`load_attribute` imports the module and walks the dotted attribute; `load_definition` adds what
a definition reference may be (a `PipelineDefinition` or a zero-argument factory returning
one). Every problem is a `LoadError` (in `pipeline.errors`) naming the reference, the cause and
the fix, with the user's own exception as its `__cause__`. Putting the current directory on
`sys.path` is the caller's choice (the CLI does), not done here.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from pipeline.definition import PipelineDefinition
from pipeline.errors import LoadError

if TYPE_CHECKING:
    from types import ModuleType

_MAX_DETAIL = 300
_SHOWN_NAMES = 8
_DEFINITION_EXPECTED = "a PipelineDefinition or a zero-argument function returning one"


def describe_exception(exc: BaseException) -> str:
    """`ExcType: message` of a user's exception on one short line, even if its `__str__` raises."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001  # a user's broken __str__ must not hide the real error
        text = "<the exception's message could not be read>"
    text = " ".join(text.split())
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return f"{name}: {text}" if text else name


def _is_dotted_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _names_of(module: ModuleType, kind: type[Any] | None, expected: str) -> str:
    """The fix for a missing attribute: the module's top-level instances of `kind`, if any."""
    names: list[str] = []
    if kind is not None:
        try:
            names = sorted(name for name, value in vars(module).items() if isinstance(value, kind))
        except Exception:  # noqa: BLE001  # only a hint: a misbehaving namespace gets none
            names = []
    if not names:
        return f"point at {expected}"
    shown = ", ".join(names[:_SHOWN_NAMES]) + (", ..." if len(names) > _SHOWN_NAMES else "")
    return f"check the name; the module defines: {shown}"


def _import(module_name: str, reference: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            fix = (
                f"drop the .py suffix: {module_name.removesuffix('.py')}:ATTR"
                if module_name.endswith(".py")
                else "check the spelling and run from the directory holding it "
                "or add that directory to PYTHONPATH"
            )
            problem = f"cannot import module {module_name!r}"
            raise LoadError(reference, problem, describe_exception(exc), fix) from exc
        raise _import_raised(module_name, reference, exc) from exc
    except Exception as exc:  # any error while importing is the module's, incl. SyntaxError
        raise _import_raised(module_name, reference, exc) from exc


def _import_raised(module_name: str, reference: str, exc: Exception) -> LoadError:
    fix = f"fix the module (python -c 'import {module_name}' shows the traceback)"
    problem = f"module {module_name!r} failed to import"
    return LoadError(reference, problem, describe_exception(exc), fix)


def load_attribute(
    reference: str,
    *,
    what: str,
    example: str = "ATTR",
    kind: type[Any] | None = None,
    expected: str = "an attribute the module defines",
) -> object:
    """Import the module of `reference` (`package.module:attr.sub`) and return the attribute.

    Args:
        reference: `MODULE:ATTR`, dotted Python names on both sides.
        what: What the reference names, for the malformed-reference message
            (`bad {what} reference`).
        example: The `ATTR` shown in the fix of a malformed reference.
        kind: The type the caller wants; a missing attribute's fix lists the module's
            top-level instances of it, and a failing lookup suggests a plain one.
        expected: What to point at instead, when the module has no instance of `kind`.

    Raises:
        LoadError: The reference is malformed, the module cannot be found or raises on import,
            the attribute is missing, or looking it up raises. `KeyboardInterrupt` and
            `SystemExit` from the user's code pass through.
    """
    module_name, sep, attr = reference.partition(":")
    if not (sep and _is_dotted_name(module_name) and _is_dotted_name(attr)):
        raise LoadError(
            reference,
            f"bad {what} reference",
            "expected MODULE:ATTR with dotted Python names on both sides",
            f"write it like package.module:{example} (a module name, not a file path)",
        )
    module = _import(module_name, reference)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            fix = _names_of(module, kind, expected)
            detail = describe_exception(exc)
            raise LoadError(reference, "attribute not found", detail, fix) from exc
        except Exception as exc:  # a module __getattr__ or property of the user's
            fix = "fix the code that attribute runs"
            if kind is not None:
                fix += f", or point at a plain {kind.__name__}"
            problem = f"looking up {part!r} failed"
            raise LoadError(reference, problem, describe_exception(exc), fix) from exc
    return obj


def _call_factory(factory: Any, reference: str) -> PipelineDefinition:
    try:
        signature = inspect.signature(factory)
    except Exception:  # noqa: BLE001  # no signature (a builtin, a broken __signature__): just call
        signature = None
    if signature is not None:
        try:
            signature.bind()
        except TypeError as exc:
            fix = "give its parameters defaults, or point at a PipelineDefinition"
            detail = describe_exception(exc)
            raise LoadError(reference, "factory needs arguments", detail, fix) from exc
    try:
        made = factory()
    except Exception as exc:  # the user's factory: its error is reported, not raised
        fix = "fix the function, or point at a PipelineDefinition"
        raise LoadError(reference, "factory raised", describe_exception(exc), fix) from exc
    if isinstance(made, PipelineDefinition):
        return made
    kind = type(made).__name__
    fix = "return the PipelineDefinition itself"
    if inspect.iscoroutine(made):
        made.close()  # never awaited on purpose: no "coroutine was never awaited" warning
        fix = "make it a plain def (async factories are not supported)"
    detail = f"it returned a {kind}, not a PipelineDefinition"
    raise LoadError(reference, "factory returned the wrong type", detail, fix)


def load_definition(reference: str) -> PipelineDefinition:
    """The `PipelineDefinition` that `reference` (`module:attr`) names, or that its factory makes.

    The attribute may be a `PipelineDefinition` or a zero-argument callable returning one.

    Raises:
        LoadError: As `load_attribute`, or the attribute is neither a definition nor a
            zero-argument factory that returns one (a factory that needs arguments, raises or
            returns something else).
    """
    obj = load_attribute(
        reference,
        what="definition",
        example="PIPELINE",
        kind=PipelineDefinition,
        expected=_DEFINITION_EXPECTED,
    )
    if isinstance(obj, PipelineDefinition):
        return obj
    if callable(obj):
        return _call_factory(obj, reference)
    detail = f"it is a {type(obj).__name__}, not a PipelineDefinition"
    raise LoadError(
        reference, "not a pipeline definition", detail, f"point at {_DEFINITION_EXPECTED}"
    )

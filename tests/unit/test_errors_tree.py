"""One error tree: every exception class of `pipeline` is defined in `pipeline.errors`.

The test imports every module of the package (an optional extra that is not installed skips
only the modules that need it), so an exception class added anywhere else fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import TYPE_CHECKING

import pytest

import pipeline
import pipeline.errors
from pipeline.errors import (
    CacheError,
    LoadError,
    OverBudgetError,
    PipelineError,
    UncacheableOutputError,
    UnfingerprintableError,
    UsageError,
)

if TYPE_CHECKING:
    from types import ModuleType

OPTIONAL_IMPORTS = frozenset({"opentelemetry", "rich", "pytest"})
"""Top-level imports of the optional extras (`otel`, `progress`) and the pytest plugin."""

NOT_IMPORTED = frozenset({"pipeline.__main__"})
"""Importing `python -m pipeline`'s entry point runs the command line."""


def _all_modules() -> list[ModuleType]:
    modules: list[ModuleType] = [pipeline]
    for info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if info.name in NOT_IMPORTED:
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in OPTIONAL_IMPORTS:
                raise
    return modules


def _subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    stack = [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                stack.append(sub)
    return found


def _package_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class whose module is part of `pipeline`, by qualified name."""
    classes: set[type[BaseException]] = set()
    for module in _all_modules():
        classes.update(
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__ == module.__name__
        )
    # Classes defined inside functions or bodies are found through their bases.
    classes.update(
        c for c in _subclasses(BaseException) if c.__module__.split(".")[0] == "pipeline"
    )
    return {f"{c.__module__}.{c.__qualname__}": c for c in classes}


def test_every_exception_class_is_defined_in_errors_under_pipeline_error() -> None:
    found = _package_exceptions()
    assert len(found) >= 13, sorted(found)  # the walk really reached the package
    misplaced = sorted(name for name, cls in found.items() if cls.__module__ != "pipeline.errors")
    assert misplaced == [], "define these in pipeline/errors.py"
    orphans = sorted(name for name, cls in found.items() if not issubclass(cls, PipelineError))
    assert orphans == [], "these must subclass PipelineError"


def test_the_docstring_draws_every_error_of_the_tree() -> None:
    doc = pipeline.errors.__doc__ or ""
    tree = doc.split("\n\n")[1]
    drawn = {line.strip(" │├└─").split(" ")[0] for line in tree.splitlines()}
    defined = {
        name
        for name, cls in vars(pipeline.errors).items()
        if inspect.isclass(cls) and issubclass(cls, BaseException)
    }
    assert drawn == defined


@pytest.mark.parametrize(
    ("module", "name", "cls"),
    [
        ("pipeline", "CacheError", CacheError),
        ("pipeline.cache", "CacheError", CacheError),
        ("pipeline.cache._store", "CacheError", CacheError),
        ("pipeline.cache", "UnfingerprintableError", UnfingerprintableError),
        ("pipeline.cache._key", "UnfingerprintableError", UnfingerprintableError),
        ("pipeline.cache", "OverBudgetError", OverBudgetError),
        ("pipeline.cache._key", "OverBudgetError", OverBudgetError),
        ("pipeline.cache", "UncacheableOutputError", UncacheableOutputError),
        ("pipeline.cache._serialize", "UncacheableOutputError", UncacheableOutputError),
        ("pipeline.cli", "UsageError", UsageError),
    ],
)
def test_moved_errors_stay_importable_where_users_met_them(
    module: str, name: str, cls: type[PipelineError]
) -> None:
    assert getattr(importlib.import_module(module), name) is cls


def test_cache_error_keeps_its_fields_and_message() -> None:
    exc = CacheError("SQLiteCache('runs.db')", "0123456789abcdef", "corrupt row")
    assert (exc.store, exc.key) == ("SQLiteCache('runs.db')", "0123456789abcdef")
    assert str(exc) == "SQLiteCache('runs.db') key 0123456789ab: corrupt row"
    assert str(CacheError("MemoryCache()", None, "closed")) == "MemoryCache(): closed"


def test_fingerprint_and_output_errors_keep_fields_messages_and_type_error_base() -> None:
    unfp = UnfingerprintableError("it contains a reference cycle", path="input[0]")
    assert (unfp.reason, unfp.path) == ("it contains a reference cycle", "input[0]")
    assert str(unfp) == "cannot fingerprint input[0]: it contains a reference cycle"
    out = UncacheableOutputError("set does not come back from JSON")
    assert out.reason == "set does not come back from JSON"
    assert str(out) == "output not cached: set does not come back from JSON"
    # `except TypeError` written against the old classes still catches them.
    assert isinstance(unfp, TypeError)
    assert isinstance(out, TypeError)


def test_the_fingerprint_budget_error_is_raised_from_errors() -> None:
    from pipeline.cache import fingerprint

    with pytest.raises(OverBudgetError):
        fingerprint(list(range(100)), budget=10)


def test_load_error_has_structured_fields_and_a_one_line_message() -> None:
    exc = LoadError("pkg.mod:THING", "attribute not found", "AttributeError: no THING", "fix it")
    assert (exc.reference, exc.problem, exc.detail, exc.fix) == (
        "pkg.mod:THING",
        "attribute not found",
        "AttributeError: no THING",
        "fix it",
    )
    assert str(exc) == "attribute not found (pkg.mod:THING): AttributeError: no THING; fix it"
    assert "\n" not in str(LoadError("a\nb:c", "bad", "detail", "fix"))

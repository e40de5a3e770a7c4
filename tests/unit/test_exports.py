"""The public surface: `pipeline.__all__`, docstrings, the error tree and import side effects."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

import pipeline
import pipeline.errors

if TYPE_CHECKING:
    import types

SPEC_NAMES = {
    "PipelineDefinition",
    "StageDefinition",
    "ExecutionPattern",
    "RetryConfig",
    "PipelineExecutor",
    "PipelineContext",
    "PipelineResult",
    "StageResult",
    "StageStatus",
    "PipelineStage",
    "success_result",
    "failure_result",
    "skipped_result",
    "cancelled_result",
    "resolve_typed_input",
}
"""SPEC section 1: names every user imports from `pipeline`."""

CORE_MODULES = (
    "clock",
    "context",
    "definition",
    "errors",
    "executor",
    "plan",
    "protocol",
    "resolve",
    "result",
)

INTERNAL = {("plan", "build_plan")}
"""Public-looking helpers users reach another way (`PipelineDefinition.plan`)."""

PUBLIC_PACKAGES = ("pipeline.cache", "pipeline.testing")


def _defined_in(module: types.ModuleType) -> dict[str, object]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and "[" not in name  # parametrised generics (StageResult[int]) that pydantic caches here
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == module.__name__
    }


def test_all_is_sorted_and_unique() -> None:
    assert list(pipeline.__all__) == sorted(pipeline.__all__)
    assert len(set(pipeline.__all__)) == len(pipeline.__all__)


def test_all_names_exist() -> None:
    for name in pipeline.__all__:
        assert hasattr(pipeline, name), name


def test_spec_names_are_exported() -> None:
    assert set(pipeline.__all__) >= SPEC_NAMES


def test_every_error_class_is_exported() -> None:
    errors = {
        name
        for name, obj in _defined_in(pipeline.errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    }
    assert errors
    assert set(pipeline.__all__) >= errors


def test_public_classes_and_functions_of_core_modules_are_reachable() -> None:
    reachable = set(pipeline.__all__)
    for package in PUBLIC_PACKAGES:
        reachable |= set(getattr(importlib.import_module(package), "__all__", ()))
    missing = [
        f"pipeline.{modname}.{name}"
        for modname in CORE_MODULES
        for name in _defined_in(importlib.import_module(f"pipeline.{modname}"))
        if name not in reachable and (modname, name) not in INTERNAL
    ]
    assert missing == []


def test_exported_objects_are_the_defining_ones() -> None:
    from pipeline.definition import RetryConfig

    assert pipeline.RetryConfig is RetryConfig


DOCUMENTED = sorted(
    name
    for name in pipeline.__all__
    if inspect.isclass(getattr(pipeline, name)) or inspect.isfunction(getattr(pipeline, name))
)
"""Exported classes and functions (type aliases such as `Scheduling` keep their doc in source)."""


@pytest.mark.parametrize("name", DOCUMENTED)
def test_every_exported_class_and_function_has_a_docstring(name: str) -> None:
    obj = getattr(pipeline, name)
    doc = obj.__doc__
    assert doc is not None
    assert doc.strip()


def test_every_exception_in_errors_subclasses_pipeline_error() -> None:
    exceptions = [
        obj
        for obj in _defined_in(pipeline.errors).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    ]
    assert len(exceptions) >= 7
    for exc in exceptions:
        assert issubclass(exc, pipeline.PipelineError), exc


def test_definition_error_is_also_a_value_error() -> None:
    assert issubclass(pipeline.DefinitionError, ValueError)


def test_definition_module_stays_importable() -> None:
    module = importlib.import_module("pipeline.definition")
    assert module.RetryConfig is pipeline.RetryConfig


def test_no_submodule_shadows_the_stage_decorator() -> None:
    # SPEC 1: a `pipeline/stage.py` would shadow the `stage` decorator once imported
    assert importlib.util.find_spec("pipeline.stage") is None


def test_import_pipeline_pulls_in_no_heavy_optional_dependency() -> None:
    code = (
        "import sys, pipeline\n"
        "heavy = ('rich', 'opentelemetry', 'yaml', 'hypothesis', 'pytest', 'pipeline.testing')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith('pipeline.testing'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=20
    )
    assert out.stdout.strip() == ""

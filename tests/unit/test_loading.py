"""`pipeline._loading`: a `module:attr` reference becomes an object or one structured `LoadError`.

The CLI's wording is pinned by `tests/unit/observe/test_cli_errors.py`; this file checks what a
second user of the loader (a config loader resolving stage classes) relies on: the fields, the
cause chain and the generic fixes.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from typing import TYPE_CHECKING

import pytest

from pipeline import LoadError, PipelineDefinition
from pipeline._loading import load_attribute, load_definition

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SOURCE = textwrap.dedent(
    """
    from typing import Any

    from pipeline import PipelineDefinition, StageDefinition, StageResult


    class Noop:
        name = "noop"

        async def execute(self, input: Any, context: Any) -> StageResult[Any]:
            return StageResult.success(input)


    class Holder:
        @property
        def broken(self) -> int:
            raise RuntimeError("property exploded")


    HOLDER = Holder()
    GOOD = PipelineDefinition("good", [StageDefinition("a", Noop())])
    OTHER = PipelineDefinition("other", [StageDefinition("a", Noop())])


    def make() -> PipelineDefinition:
        return GOOD


    def raises() -> PipelineDefinition:
        raise ValueError("factory exploded")
    """
)


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh importable module holding `SOURCE`; its name."""
    name = f"loading_defs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_dotted_attribute_loads_as_is(module: str) -> None:
    obj = load_attribute(f"{module}:Noop", what="stage class")
    assert isinstance(obj, type)
    assert obj.__name__ == "Noop"
    assert load_attribute(f"{module}:GOOD.name", what="name") == "good"


def test_a_definition_or_its_factory_loads(module: str) -> None:
    good = load_definition(f"{module}:GOOD")
    assert isinstance(good, PipelineDefinition)
    assert good.name == "good"
    assert load_definition(f"{module}:make") is good


@pytest.mark.parametrize("reference", ["no_colon", "pkg/mod.py:X", "mod:", ":X", "mod:1x"])
def test_a_malformed_reference_names_what_was_expected(reference: str) -> None:
    with pytest.raises(LoadError) as info:
        load_attribute(reference, what="stage class", example="MyStage")
    exc = info.value
    assert exc.reference == reference
    assert exc.problem == "bad stage class reference"
    assert exc.fix == "write it like package.module:MyStage (a module name, not a file path)"
    assert exc.__cause__ is None


def test_a_missing_module_is_a_load_error_caused_by_the_import_error() -> None:
    with pytest.raises(LoadError) as info:
        load_attribute("no_such_module_xyz_123:X", what="stage class")
    exc = info.value
    assert exc.problem == "cannot import module 'no_such_module_xyz_123'"
    assert exc.detail.startswith("ModuleNotFoundError: ")
    assert "PYTHONPATH" in exc.fix
    assert isinstance(exc.__cause__, ModuleNotFoundError)


def test_a_missing_attribute_lists_the_instances_of_the_wanted_kind(module: str) -> None:
    with pytest.raises(LoadError) as info:
        load_attribute(f"{module}:GOD", what="definition", kind=PipelineDefinition)
    assert info.value.problem == "attribute not found"
    assert info.value.fix == "check the name; the module defines: GOOD, OTHER"
    assert isinstance(info.value.__cause__, AttributeError)


def test_a_missing_attribute_without_a_kind_says_what_to_point_at(module: str) -> None:
    with pytest.raises(LoadError) as info:
        load_attribute(f"{module}:Nope", what="stage class", expected="a stage class")
    assert info.value.fix == "point at a stage class"


def test_a_lookup_that_raises_chains_the_users_error(module: str) -> None:
    with pytest.raises(LoadError) as info:
        load_attribute(f"{module}:HOLDER.broken", what="value")
    exc = info.value
    assert exc.problem == "looking up 'broken' failed"
    assert exc.detail == "RuntimeError: property exploded"
    assert exc.fix == "fix the code that attribute runs"
    assert isinstance(exc.__cause__, RuntimeError)


def test_a_factory_that_raises_chains_the_users_error(module: str) -> None:
    with pytest.raises(LoadError, match=r"^factory raised \(") as info:
        load_definition(f"{module}:raises")
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "factory exploded"


def test_a_non_definition_is_refused(module: str) -> None:
    with pytest.raises(LoadError) as info:
        load_definition(f"{module}:HOLDER")
    assert info.value.problem == "not a pipeline definition"
    assert info.value.detail == "it is a Holder, not a PipelineDefinition"


def test_the_cli_reports_a_load_error_as_its_usage_error_with_the_same_text(module: str) -> None:
    from pipeline.cli import UsageError, load_definition as cli_load

    with pytest.raises(LoadError) as loaded:
        load_definition(f"{module}:raises")
    with pytest.raises(UsageError) as used:
        cli_load(f"{module}:raises")
    assert str(used.value) == str(loaded.value)
    assert isinstance(used.value.__cause__, ValueError)

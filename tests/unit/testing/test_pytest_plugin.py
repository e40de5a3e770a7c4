"""The `pipeline` pytest plugin: registered through `pytest11`, fixtures only, light to import."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from pipeline import PipelineContext, PipelineExecutor
    from pipeline.testing import FakeClock


def test_registered_through_the_pytest11_entry_point(pytestconfig: pytest.Config) -> None:
    (ep,) = [ep for ep in entry_points(group="pytest11") if ep.name == "pipeline"]
    assert ep.value == "pipeline.testing.pytest_plugin"
    assert pytestconfig.pluginmanager.hasplugin("pipeline")


def test_fixtures(
    fake_clock: FakeClock,
    pipeline_context: PipelineContext[Any],
    pipeline_executor: PipelineExecutor,
) -> None:
    assert fake_clock.now() == 0
    assert pipeline_executor.clock is fake_clock
    assert pipeline_context.state == {}
    assert pipeline_context.metrics == {}


def test_plugin_defines_fixtures_only() -> None:
    import pipeline.testing.pytest_plugin as plugin

    hooks = [name for name in vars(plugin) if name.startswith("pytest_")]
    assert hooks == []


def test_plugin_imports_no_test_tooling() -> None:
    code = (
        "import sys, pipeline.testing.pytest_plugin\n"
        "heavy = {'trio', 'hypothesis', 'mypy'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=20
    )
    assert out.stdout.strip() == "[]"

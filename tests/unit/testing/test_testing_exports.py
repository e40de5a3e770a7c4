"""The public surface of `pipeline.testing` and the names this package adds to `pipeline`."""

from __future__ import annotations

import inspect

import pipeline
import pipeline.testing


def test_testing_all_is_sorted_and_documented() -> None:
    names = pipeline.testing.__all__
    assert names == sorted(names)
    for name in names:
        obj = getattr(pipeline.testing, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_function_stages_and_subpipeline_are_exported_from_pipeline() -> None:
    for name in ("FunctionStage", "SubPipeline", "stage"):
        assert name in pipeline.__all__
    assert callable(pipeline.stage)  # the decorator, not a module
    assert not inspect.ismodule(pipeline.stage)

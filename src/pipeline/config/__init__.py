"""Declarative pipelines: load a `PipelineDefinition` from a YAML, TOML or JSON file.

    definition = pipeline.config.load("flows/render.yaml")

The file has the fields of `PipelineDefinition` (`name`, `description`, `fail_fast`,
`stages`) and, per stage, those of `StageDefinition`, with `stage` a reference
(`package.module:attr`, or a name in a `registry`), `params` the keyword arguments of a stage
class, and `when` a CEL condition (`pipeline.config.CelCondition`). `python -m pipeline schema`
prints the format's JSON Schema; `PipelineDefinition.to_config()` writes a definition back.

A config file is code-equivalent: loading it imports the modules its references name (running
their top-level code) and constructs the classes it names. Load untrusted files with
`allow_imports=False` and a `registry` of the stages they may use: then nothing is imported and
only registered objects are used. CEL conditions never run Python.

Importing this package imports neither PyYAML nor the CEL engine; `load` does, when a file
needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.config._build import build, check_shape
from pipeline.config._cel import VARIABLES, CelCondition
from pipeline.config._schema import PipelineSpec, RetrySpec, StageSpec, json_schema
from pipeline.config._source import SUFFIXES, parse, read_source

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from pipeline.config._source import Format
    from pipeline.definition import PipelineDefinition

__all__ = [
    "SUFFIXES",
    "VARIABLES",
    "CelCondition",
    "PipelineSpec",
    "RetrySpec",
    "StageSpec",
    "json_schema",
    "load",
]


def load(
    path_or_text: str | Path,
    *,
    format: Format | None = None,  # the SPEC's name
    registry: Mapping[str, object] | None = None,
    allow_imports: bool = True,
) -> PipelineDefinition:
    """Read a pipeline file (or text) into a validated `PipelineDefinition`.

    Args:
        path_or_text: A `Path`, or a `str` naming an existing file (the format comes from its
            suffix: .yaml/.yml, .toml, .json); any other `str` is the document itself.
        format: `"yaml"`, `"toml"` or `"json"`; required for text, overrides a suffix.
        registry: Names (references without `:`) and the classes, functions or instances
            they stand for.
        allow_imports: False refuses every `module:attr` reference (untrusted files: only the
            registry is used, nothing is imported).

    Returns:
        The definition; it has already passed `validate()`.

    Raises:
        ConfigError: Anything wrong with the file, with its source, line and column: syntax,
            an unknown key, a wrong type, a bad reference, a CEL expression that does not
            compile (syntax, unknown variable, not a bool), an invalid field value or a wiring
            problem (cycle, unknown input). Nothing is half-loaded.
    """
    source, text, fmt = read_source(path_or_text, format)
    data, locator = parse(text, fmt, source)
    spec = check_shape(data, locator)
    return build(spec, locator, registry, allow_imports=allow_imports)

"""The file format of a declarative pipeline, as pydantic models (`python -m pipeline schema`).

Field names are those of `PipelineDefinition`, `StageDefinition` and `RetryConfig`; the few
that hold Python objects there hold references here (`stage`, `retry_on`, `retry_if`) or a CEL
expression (`when`, the stage's condition). Every model forbids unknown keys and is strict (a
`"3"` is not an int, a `"false"` not a bool): a file says exactly what it means or is rejected.
The checks that `StageDefinition` itself makes (FAN_OUT-only options, positive sizes) run when
the definition is built; this module checks shapes and types.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.definition import ExecutionPattern

_PATTERNS = tuple(p.value for p in ExecutionPattern)

Reference = Annotated[
    str,
    Field(
        min_length=1,
        description="`package.module:attr` (imported) or a name in the loader's registry",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RetrySpec(_Strict):
    """`retry_config`: the fields of `RetryConfig` (`retry_on` and `retry_if` as references)."""

    max_attempts: int = 1
    initial_delay_ms: float = 1000
    backoff_multiplier: float = 2.0
    max_delay_ms: float = 60000
    retryable_errors: list[str] | None = None
    retry_on: list[Reference] = Field(
        default_factory=list, description="exception classes, e.g. `builtins:TimeoutError`"
    )
    retry_if: Reference | None = Field(
        default=None, description="a function of the exception or failed result -> bool"
    )
    jitter: Literal["full"] | float | None = None
    jitter_seed: int | None = None


class StageSpec(_Strict):
    """One entry of `stages`: the fields of `StageDefinition`, `when` being its condition."""

    id: str = Field(min_length=1)
    stage: Reference
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments when `stage` names a class"
    )
    inputs: list[str] = Field(default_factory=list)
    pattern: str = Field(
        default="sequential",
        description=f"one of {', '.join(_PATTERNS)} (case-insensitive)",
        examples=list(_PATTERNS),
    )
    when: str | None = Field(
        default=None,
        description="a CEL expression over state, metrics, outputs and input; false skips",
    )
    retry_config: RetrySpec | None = None
    timeout_ms: float | None = None
    critical: bool = True
    max_concurrent_fan_out: int | None = 4
    description: str | None = None
    cache: bool = True
    cache_version: str | int = 0
    cache_code_fingerprint: bool = False
    runner: str | None = None
    uses: dict[str, int] = Field(default_factory=dict)
    batch_size: int | None = None
    buffer: int | None = None

    @field_validator("pattern")
    @classmethod
    def _known_pattern(cls, value: str) -> str:
        lowered = value.lower()
        if lowered not in _PATTERNS:
            msg = f"unknown pattern {value!r}; use one of {', '.join(_PATTERNS)}"
            raise ValueError(msg)
        return lowered


class PipelineSpec(_Strict):
    """A whole file: the fields of `PipelineDefinition`."""

    model_config = ConfigDict(
        title="wavepipe pipeline",
        json_schema_extra={
            "description": "A declarative pipeline (pipeline.config.load); see SPEC section 12."
        },
    )

    name: str = Field(min_length=1)
    description: str | None = None
    fail_fast: bool = True
    stages: list[StageSpec] = Field(default_factory=list)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the file format (what `python -m pipeline schema` prints)."""
    return PipelineSpec.model_json_schema()

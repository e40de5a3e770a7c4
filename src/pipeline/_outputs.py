"""The run-time output check of `PipelineExecutor(validate_outputs=True)`, as one chain link.

Each successful output (each fan-out item's) is validated strictly against the stage's declared
output type by a pydantic `TypeAdapter` built once per type. The link sits inside the retry loop
and the cache, so a cache hit is never checked and a mismatch is a failed attempt like any
other. Declared types come from `pipeline._types`; `pipeline._chain` decides who gets the link.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from pipeline._attempt import failed
from pipeline._text import exception_text
from pipeline._types import output_type, type_name
from pipeline.result import StageStatus

if TYPE_CHECKING:
    from pipeline._attempt import AttemptCall, Handler
    from pipeline._env import RunEnv
    from pipeline._outcome import Outcome
    from pipeline.definition import StageDefinition

logger = logging.getLogger("pipeline")

_adapters: dict[Any, TypeAdapter[Any] | None] = {}
"""One adapter per declared type (None: pydantic cannot check that type)."""

_ARBITRARY = ConfigDict(arbitrary_types_allowed=True)


def adapter_for(tp: Any) -> TypeAdapter[Any] | None:
    """The (memoized) strict-checking adapter of `tp`; None when pydantic cannot build one."""
    try:
        return _adapters[tp]
    except KeyError:
        pass
    except TypeError:  # an unhashable type expression: built without the memo
        return _build(tp)
    adapter = _adapters[tp] = _build(tp)
    return adapter


def _build(tp: Any) -> TypeAdapter[Any] | None:
    try:
        return TypeAdapter(tp)
    except Exception:  # noqa: BLE001  # no schema for a plain class: fall back to isinstance
        pass
    try:
        return TypeAdapter(tp, config=_ARBITRARY)
    except Exception as exc:  # noqa: BLE001  # a type pydantic cannot check at all
        logger.warning(
            "pipeline: outputs declared as %s are not checked (validate_outputs=True): "
            "pydantic cannot build a validator for it (%s)",
            type_name(tp),
            exception_text(exc),
        )
        return None


def output_check_link(sdef: StageDefinition, env: RunEnv, inner: Handler) -> Handler:
    """Fails an attempt whose successful output is not strictly of the declared output type.

    A stage without a declared output type (or with `Any`) gets no link.
    """
    declared = output_type(sdef)
    adapter = None if declared is Any else adapter_for(declared)
    if adapter is None:
        return inner
    sid, validate = sdef.id, adapter.validate_python
    # Strict mode still builds a model from a dict of its fields; the output must *be* one.
    model = declared if isinstance(declared, type) and issubclass(declared, BaseModel) else None

    async def checked(call: AttemptCall) -> Outcome:
        outcome = await inner(call)
        result = outcome.result
        if result.status is not StageStatus.SUCCEEDED:
            return outcome
        value = result.output
        try:
            if model is not None and not isinstance(value, model):
                raise TypeError(f"an instance of {model.__qualname__} is required")
            validate(value, strict=True)
        except Exception as exc:  # noqa: BLE001  # a validator may raise more than ValidationError
            err = TypeError(_message(sid, call.item, value, declared, exc))
            err.__cause__ = exc
            return failed(sid, err, call.attempt, str(err))
        return outcome

    return checked


def _message(sid: str, item: int | None, value: object, declared: Any, exc: Exception) -> str:
    who = f"stage {sid!r}" if item is None else f"item {item} of FAN_OUT stage {sid!r}"
    detail = exception_text(exc)
    if isinstance(exc, ValidationError):
        with contextlib.suppress(Exception):  # a user's error text may fail to format
            first = exc.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"]))
            more = exc.error_count() - 1
            detail = f"{where + ': ' if where else ''}{first['msg']}"
            detail += f" (and {more} more)" if more else ""
    return (
        f"{who} returned {type(value).__name__}, which is not its declared output type "
        f"{type_name(declared)} (validate_outputs=True checks strictly: {detail}); return "
        f"a value of type {type_name(declared)} or fix the declared type (output_type= or the "
        "return annotation)"
    )

"""The frozen-model base every value crossing the library boundary uses.

Mutable bookkeeping lives in the executor's run state, never here.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

ModelT = TypeVar("ModelT", bound=BaseModel)


class FrozenModel(BaseModel):
    """A frozen pydantic model that rejects unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


_new = object.__new__
_setattr = object.__setattr__


def fast_model(cls: type[ModelT], fields: dict[str, Any]) -> ModelT:
    """Build a model from a complete, already-valid field dict without validation.

    What `model_construct` does, minus its per-field default handling: the library uses it for
    values it built itself on hot paths. `fields` must hold every field.
    """
    obj = _new(cls)
    _setattr(obj, "__dict__", fields)
    _setattr(obj, "__pydantic_fields_set__", set(fields))
    _setattr(obj, "__pydantic_extra__", None)
    _setattr(obj, "__pydantic_private__", None)
    return obj


def copy_with(model: ModelT, **changes: Any) -> ModelT:
    """A copy of a (frozen) model with `changes` applied, without validation."""
    return fast_model(type(model), {**model.__dict__, **changes})

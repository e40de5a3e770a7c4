"""The frozen-model base every value crossing the library boundary uses.

Mutable bookkeeping lives in the executor's run state, never here.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from collections.abc import Callable

ModelT = TypeVar("ModelT", bound=BaseModel)


class FrozenModel(BaseModel):
    """A frozen pydantic model that rejects unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


_new = object.__new__
_setattr = object.__setattr__
# BaseModel's own slots, set through their descriptors: no attribute lookup through the MRO
# (four per record, four records per stage: about 0.3 us a stage on W1/W2).
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def fast_model(cls: type[ModelT], fields: dict[str, Any]) -> ModelT:
    """Build a model from a complete, already-valid field dict without validation.

    What `model_construct` does, minus its per-field default handling: the library uses it for
    values it built itself on hot paths. `fields` must hold every field.
    """
    obj = _new(cls)
    _setattr(obj, "__dict__", fields)
    every = _every_field.get(cls)
    if every is None:
        every = _every_field[cls] = set(fields)
    _set_fields_set(obj, every)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


_every_field: dict[type[BaseModel], set[str]] = {}
"""One "fields set" per class, shared by every instance `fast_model` builds: each instance has
every field set, so they are all equal, and a new set per instance cost ~0.1-0.2 us (four
records a stage; benchmarks/overhead.py W1/W2). Sharing relies on nothing changing the set in
place: pydantic copies it before `model_copy(update=...)` adds to it, and assigning a field
(on a model that is not frozen) adds a name already in it."""


def copy_with(model: ModelT, **changes: Any) -> ModelT:
    """A copy of a (frozen) model with `changes` applied, without validation."""
    return fast_model(type(model), {**model.__dict__, **changes})


@functools.cache
def _defaults(cls: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Callable[[], Any]]]:
    static: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    for name, info in cls.model_fields.items():
        if info.is_required():
            continue
        if info.default_factory is not None:
            factories[name] = info.default_factory  # type: ignore[assignment]  # no-arg factories only
        else:
            static[name] = info.default
    return static, factories


def trusted_model(cls: type[ModelT], **fields: Any) -> ModelT:
    """`fast_model` with the class's defaults filled in for the fields not given.

    For values the library builds from its own, already-typed state (run records, events):
    validating them again would only cost time on every state change.
    """
    static, factories = _defaults(cls)
    data = {**static, **fields}
    for name, factory in factories.items():
        if name not in fields:
            data[name] = factory()
    return fast_model(cls, data)

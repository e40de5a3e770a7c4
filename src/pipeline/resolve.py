"""`resolve_typed_input`: unpack a stage's input when it may be a model or a dict of inputs.

A helper stage bodies call; the input it unpacks is built by the run (no input: the initial
input, one input: that stage's output, several: `{stage_id: output}`), in `pipeline._run`.
"""

from __future__ import annotations

from typing import Any, TypeVar

M = TypeVar("M")


def resolve_typed_input(
    input: Any, model_type: type[M], dict_key: str | None = None
) -> tuple[M, dict[str, Any]]:
    """Return `(model, extras)` from a stage input.

    An instance of `model_type` (subclasses included) gives `(input, {})`; with `dict_key`, a
    dict gives `(input[dict_key], the other entries)`.

    Raises:
        TypeError: the dict lacks `dict_key` (or holds None there), the value under `dict_key`
            is not a `model_type`, or the input is neither a `model_type` nor a dict (or a dict
            without `dict_key` given).
    """
    if isinstance(input, model_type):
        return input, {}
    expected = model_type.__name__
    if isinstance(input, dict) and dict_key is not None:
        value = input.get(dict_key)
        if value is None:
            keys = ", ".join(repr(k) for k in input) or "none"
            msg = f"Dict input missing key {dict_key!r} (keys: {keys}); expected {expected} there"
            raise TypeError(msg)
        if not isinstance(value, model_type):
            msg = f"Expected {expected} under key {dict_key!r}, got {type(value).__name__}"
            raise TypeError(msg)
        return value, {k: v for k, v in input.items() if k != dict_key}
    hint = "" if dict_key is not None or not isinstance(input, dict) else " (pass dict_key=...)"
    msg = f"Expected {expected} or dict input{hint}, got {type(input).__name__}"
    raise TypeError(msg)

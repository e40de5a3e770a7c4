"""The frozen-model base every value crossing the library boundary uses.

Mutable bookkeeping lives in the executor's run state, never here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """A frozen pydantic model that rejects unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

"""Helpers shared by the executor tests: the anyio backends and a two-backend runner.

Stages in tests come from the public API (`pipeline.testing.ScriptedStage`, `FunctionStage`,
`@stage`), the same helpers users have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
import pytest

Backend = Literal["asyncio", "trio"]
BACKENDS: list[Backend] = ["asyncio", "trio"]
Scenario = Callable[[], Awaitable[None]]


def on_both_backends(scenario: Scenario) -> Callable[[str], None]:
    """Turn an async scenario into a sync test parametrised over the anyio backends."""

    @pytest.mark.parametrize("backend", BACKENDS)
    def test(backend: str) -> None:
        anyio.run(scenario, backend=backend)

    test.__doc__ = scenario.__doc__
    return test

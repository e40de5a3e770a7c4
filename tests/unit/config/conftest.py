"""Runs in these tests happen on both anyio backends."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every `pytest.mark.anyio` test here runs on asyncio and on trio."""
    return str(request.param)

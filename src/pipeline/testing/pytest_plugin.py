"""The `pipeline` pytest plugin: fixtures `fake_clock`, `pipeline_context`, `pipeline_executor`.

Installed with the package through the `pytest11` entry point and inert unless a test asks for
one of its fixtures: it defines no hooks, options or markers. Disable it with `-p no:pipeline`.
The helpers themselves live in `pipeline.testing`; this module only exposes them as fixtures and
imports them lazily, so loading the plugin costs (almost) nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pipeline.context import PipelineContext
    from pipeline.executor import PipelineExecutor
    from pipeline.testing._clock import FakeClock


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh `FakeClock` at time 0: virtual time for retry waits and timeouts.

    Not entered: each executor run enters it (`async with clock:`) and so moves virtual time
    by itself. A test that sleeps on it outside a run enters it first: `async with fake_clock:`
    (a plain fixture cannot, as its setup and teardown would run outside the test's task).
    """
    from pipeline.testing._clock import FakeClock

    return FakeClock()


@pytest.fixture
def pipeline_context() -> PipelineContext[Any]:
    """A fresh, empty `PipelineContext` (no deps, state, metrics or services)."""
    from pipeline.testing._harness import make_context

    return make_context()


@pytest.fixture
def pipeline_executor(fake_clock: FakeClock) -> PipelineExecutor:
    """A `PipelineExecutor` on the `fake_clock` fixture: retries and timeouts never wait."""
    from pipeline.executor import PipelineExecutor

    return PipelineExecutor(clock=fake_clock)

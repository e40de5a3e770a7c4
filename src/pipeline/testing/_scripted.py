"""`ScriptedStage`: a stage playing outcomes scripted per call, recording every input it saw.

The steps (`Fail`, `Delay`, `Block`) are plain values; the executor does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, final

import anyio
from typing_extensions import TypeVar

from pipeline.result import StageResult

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pipeline.clock import Clock
    from pipeline.context import PipelineContext

# Defaults keep `ScriptedStage(1, 2)` usable as `PipelineStage[Any, int]` without annotations.
InT = TypeVar("InT", default=Any)
OutT = TypeVar("OutT", default=Any)


@final
@dataclass(frozen=True)
class Fail:
    """Script step: return `StageResult.failure(error, metadata=...)`."""

    error: str
    """The failure's error text."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """The failure's metadata."""


@final
@dataclass(frozen=True)
class Delay:
    """Script step: sleep `seconds` on the stage's clock, then perform step `then`.

    Give the `ScriptedStage` the executor's `FakeClock` so the sleep is virtual; under a
    `timeout_ms` shorter than `seconds` the attempt then times out at once.
    """

    seconds: float
    """How long to sleep."""
    then: Any = None
    """The step performed after the sleep (a value, `Fail`, an exception, ...)."""


@final
@dataclass(frozen=True)
class Block:
    """Script step: wait until `until` is set (forever if None), then perform step `then`.

    Use it to hold a stage in flight while the test cancels or fails something else.
    """

    until: anyio.Event | None = None
    """The event releasing the stage; None blocks until the stage is cancelled."""
    then: Any = None
    """The step performed once released."""


@final
class ScriptedStage(Generic[InT, OutT]):
    """A `PipelineStage` that plays a script, one step per call, and records its inputs.

    A step is one of:

    - a plain value: `StageResult.success(value)`;
    - a `StageResult`: returned as is;
    - an exception instance or class: raised;
    - `Fail(error)`: `StageResult.failure(error)`;
    - `Delay(seconds, then=step)`: sleep on `clock`, then `step`;
    - `Block(until=event, then=step)`: wait for `event` (forever if None), then `step`.

    Calls are numbered in the order they start (each retry attempt and each fan-out item is a
    call). When the script runs out, a call raises `AssertionError` (a failed stage in a run),
    unless `repeat_last=True`.

    Args:
        *steps: The script, one step per call.
        name: The stage's name.
        clock: The clock `Delay` sleeps on; pass the executor's `FakeClock` (default: real time).
        repeat_last: Repeat the last step once the script runs out.

    Example:
        ```python
        flaky = ScriptedStage(ValueError("boom"), Fail("try again"), 42)
        ```
    """

    def __init__(
        self,
        *steps: OutT
        | StageResult[OutT]
        | BaseException
        | type[BaseException]
        | Fail
        | Delay
        | Block,
        name: str = "scripted",
        clock: Clock | None = None,
        repeat_last: bool = False,
    ) -> None:
        self._steps: tuple[Any, ...] = steps
        self._name = name
        self.clock = clock
        """The clock `Delay` steps sleep on (None: real time)."""
        self.repeat_last = repeat_last
        """Whether the last step repeats once the script runs out."""
        self.inputs: list[InT] = []
        """Every input the stage was called with, in call order."""
        self.contexts: list[PipelineContext[Any]] = []
        """The context of every call, in call order."""
        self._waiters: list[tuple[int, anyio.Event]] = []

    @property
    def name(self) -> str:
        """The stage's name."""
        return self._name

    @property
    def call_count(self) -> int:
        """How many calls have started."""
        return len(self.inputs)

    async def wait_for_calls(self, count: int = 1) -> None:
        """Return once `count` calls have started (use under `anyio.fail_after`)."""
        if self.call_count >= count:
            return
        event = anyio.Event()
        self._waiters.append((count, event))
        await event.wait()

    async def execute(self, input: InT, context: PipelineContext[Any], /) -> StageResult[OutT]:
        """Record the call, then play the next step of the script."""
        self.inputs.append(input)
        self.contexts.append(context)
        n = len(self.inputs)
        for waiter in [w for w in self._waiters if w[0] <= n]:
            self._waiters.remove(waiter)
            waiter[1].set()
        if n <= len(self._steps):
            step = self._steps[n - 1]
        elif self.repeat_last and self._steps:
            step = self._steps[-1]
        else:
            msg = (
                f"ScriptedStage {self._name!r} was called {n} times but scripted for "
                f"{len(self._steps)} (pass more steps or repeat_last=True)"
            )
            raise AssertionError(msg)
        return await self._play(step)

    async def _play(self, step: Any) -> StageResult[OutT]:
        while True:
            if isinstance(step, Delay):
                if self.clock is None:
                    await anyio.sleep(step.seconds)
                else:
                    await self.clock.sleep(step.seconds)
                step = step.then
            elif isinstance(step, Block):
                if step.until is None:
                    await anyio.sleep_forever()
                else:
                    await step.until.wait()
                step = step.then
            else:
                break
        if isinstance(step, BaseException) or (
            isinstance(step, type) and issubclass(step, BaseException)
        ):
            raise step
        if isinstance(step, Fail):
            return StageResult.failure(step.error, metadata=step.metadata)
        if isinstance(step, StageResult):
            return step
        return StageResult.success(step)

    def __repr__(self) -> str:
        return f"ScriptedStage({self._name!r}, steps={len(self._steps)}, calls={self.call_count})"

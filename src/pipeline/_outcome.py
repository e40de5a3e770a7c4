"""What one invocation produced: `Outcome`, and the timing of each attempt in `AttemptRecord`.

Plain slotted values shared by the attempt chain (`pipeline._attempt`), the retry loop
(`pipeline._retry`), the events (`pipeline._reporter`) and the run state (`pipeline._run`);
they become frozen `StageRun`/`AttemptRun` records only in `pipeline._run`.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.result import StageResult


@dataclass(slots=True)
class AttemptRecord:
    """The timing of one attempt of a stage (clock seconds; `error` None when it succeeded)."""

    attempt: int
    backoff_s: float
    started: float
    ended: float
    error: str | None
    resource_wait_s: float = 0.0
    remote_stopped: bool | None = None
    """For work sent to another process: whether it is known to have stopped (None: local)."""
    remote_traceback: str | None = None
    """The traceback text of a failure raised in another process."""


@dataclass(slots=True)
class Outcome:
    """What invoking a stage (or one fan-out item) produced, before it becomes a run record."""

    result: StageResult[Any]
    attempts: int = 1
    exception: BaseException | None = None
    items: int | None = None
    cached: bool = False
    attempt_log: list[AttemptRecord] | None = None
    resource_wait_s: float = 0.0
    """Time this attempt waited for its resources (set by the resources link)."""
    retry_decision: bool | None = None
    """Whether this failure may be retried, once decided (`pipeline._retry.retryable`)."""
    remote_stopped: bool | None = None
    """For work sent to another process: whether it is known to have stopped (None: local)."""

    @property
    def exception_type(self) -> str | None:
        """The class name of the exception behind a failure, if any."""
        return None if self.exception is None else type(self.exception).__name__

    def formatted_traceback(self) -> str | None:
        """The exception's traceback as text, if any."""
        exc = self.exception
        if exc is None or exc.__traceback__ is None:
            return None
        return "".join(traceback.format_exception(exc))

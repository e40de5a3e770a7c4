"""`ProgressObserver`: a live terminal display of a run, drawn with rich (the `progress` extra).

One line per stage (status, elapsed time, last retry or cache note) and a bar per fan-out
stage. rich is imported by this module, which `pipeline` itself never imports. The events
live in `pipeline.events`; the end-of-run table is `pipeline._summary`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_never, final

try:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    msg = "ProgressObserver needs the progress extra: pip install 'wavepipe[progress]'"
    raise ImportError(msg) from exc

from pipeline.events import (
    AttemptFailed,
    AttemptStarted,
    FanOutItemFinished,
    ResourceWaited,
    RetryScheduled,
    RunFinished,
    RunStarted,
    StageCacheHit,
    StageFinished,
    StageStarted,
    StepFinished,
    WaveStarted,
)
from pipeline.result import StageStatus

if TYPE_CHECKING:
    from rich.progress import Task, TaskID

    from pipeline.events import PipelineEvent

_ICONS = {
    "pending": ("·", "dim"),
    "running": ("▶", "cyan"),
    StageStatus.SUCCEEDED.value: ("✔", "green"),
    StageStatus.FAILED.value: ("✘", "red"),
    StageStatus.SKIPPED.value: ("↷", "dim"),
    StageStatus.CANCELLED.value: ("■", "yellow"),
}


class _FanOutBar(ProgressColumn):
    """A bar and an `n/total` count, drawn only for fan-out stages."""

    def __init__(self) -> None:
        super().__init__()
        self._bar = BarColumn(bar_width=24)

    def render(self, task: Task) -> Any:
        if not task.fields.get("fan_out"):
            return Text("")
        grid = Table.grid(padding=(0, 1))
        grid.add_row(self._bar.render(task), f"{int(task.completed)}/{int(task.total or 0)}")
        return grid


class _Status(ProgressColumn):
    def render(self, task: Task) -> Any:
        status = str(task.fields.get("status", "pending"))
        icon, style = _ICONS.get(status, ("?", ""))
        cached = " (cached)" if task.fields.get("cached") else ""
        return Text(f"{icon} {status}{cached}", style=style)


@final
class ProgressObserver:
    """Shows a live view of a run in the terminal: stages, statuses, fan-out bars, elapsed time.

    The display starts at `RunStarted` and stops at `RunFinished` (several concurrent runs
    share one display). Without a terminal, rich prints the final state once.

    Args:
        console: The rich `Console` to draw on (default: a new one on stdout).
        transient: Erase the display when the run ends.
        auto_refresh: Redraw on a timer thread; False redraws on each event only.
        refresh_per_second: Redraw rate when `auto_refresh` is on.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        transient: bool = False,
        auto_refresh: bool = True,
        refresh_per_second: float = 8,
    ) -> None:
        self.console = console if console is not None else Console()
        self._transient = transient
        self._auto_refresh = auto_refresh
        self._refresh_per_second = refresh_per_second
        self._progress: Progress | None = None
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self._active: set[str] = set()

    def _new_progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            _Status(),
            _FanOutBar(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[note]}"),
            console=self.console,
            transient=self._transient,
            auto_refresh=self._auto_refresh,
            refresh_per_second=self._refresh_per_second,
        )

    def on_event(self, event: PipelineEvent, /) -> None:
        """Update the display for `event`."""
        if isinstance(event, RunStarted):
            self._run_started(event)
            return
        progress = self._progress
        if progress is None or event.run_id not in self._active:
            return
        match event:
            case RunFinished():
                self._active.discard(event.run_id)
                for key in [k for k in self._tasks if k[0] == event.run_id]:
                    del self._tasks[key]
                if not self._active:
                    progress.stop()
                    self._progress = None
                return
            case WaveStarted():
                return
            case StageStarted():
                task = self._task(event.run_id, event.stage_id)
                progress.start_task(task)
                fields: dict[str, Any] = {"status": "running"}
                if event.items is not None:
                    fields["fan_out"] = True
                    progress.update(task, total=event.items, completed=0, **fields)
                else:
                    progress.update(task, **fields)
            case AttemptStarted():
                if event.attempt > 1:
                    task = self._task(event.run_id, event.stage_id)
                    progress.update(task, note=f"{event.lineage_id}: attempt {event.attempt}")
            case AttemptFailed():
                task = self._task(event.run_id, event.stage_id)
                note = f"{event.lineage_id}: attempt {event.attempt} failed"
                progress.update(task, note=note)
            case RetryScheduled():
                task = self._task(event.run_id, event.stage_id)
                note = f"{event.lineage_id}: retry {event.attempt} in {event.delay_s:g}s"
                progress.update(task, note=note)
            case StageCacheHit():
                if event.item is None:
                    progress.update(self._task(event.run_id, event.stage_id), cached=True)
            case FanOutItemFinished():
                progress.advance(self._task(event.run_id, event.stage_id), 1)
            case ResourceWaited():
                task = self._task(event.run_id, event.stage_id)
                note = f"{event.lineage_id}: waited {event.wait_s:.2f}s for {event.resource}"
                progress.update(task, note=note)
            case StepFinished():
                task = self._task(event.run_id, event.stage_id)
                how = "replayed" if event.cached else event.status.value
                progress.update(task, note=f"{event.lineage_id}: step {event.name} {how}")
            case StageFinished():
                task = self._task(event.run_id, event.stage_id)
                note = "" if event.status is StageStatus.SUCCEEDED else (event.error or "")
                if event.attempts > 1:
                    note = f"{event.attempts} attempts" + (f"; {note}" if note else "")
                progress.update(task, status=event.status.value, cached=event.cached, note=note)
                if progress.tasks[task].started:
                    progress.stop_task(task)
            case _:  # pragma: no cover - every kind is handled above
                assert_never(event)
        if not self._auto_refresh:
            progress.refresh()

    def _run_started(self, event: RunStarted) -> None:
        if self._progress is None:
            self._progress = self._new_progress()
            self._progress.start()
        progress = self._progress
        self._active.add(event.run_id)
        prefix = f"{event.pipeline_name} · " if len(self._active) > 1 else ""
        for stage_id in event.stage_ids:
            self._tasks[(event.run_id, stage_id)] = progress.add_task(
                f"{prefix}{stage_id}",
                start=False,
                total=None,
                status="pending",
                cached=False,
                fan_out=False,
                note="",
            )

    def _task(self, run_id: str, stage_id: str) -> TaskID:
        key = (run_id, stage_id)
        task = self._tasks.get(key)
        if task is None:
            assert self._progress is not None
            task = self._progress.add_task(
                stage_id, start=False, total=None, status="pending", cached=False, note=""
            )
            self._tasks[key] = task
        return task

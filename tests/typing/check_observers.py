"""Observers are structural: sync and async `on_event` both satisfy `Observer`. Checked by mypy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline import PipelineExecutor

if TYPE_CHECKING:
    from pipeline.events import Observer, PipelineEvent


class SyncObserver:
    def on_event(self, event: PipelineEvent, /) -> None:
        pass


class AsyncObserver:
    async def on_event(self, event: PipelineEvent, /) -> None:
        pass


observers: list[Observer] = [SyncObserver(), AsyncObserver()]
PipelineExecutor(observers=observers)

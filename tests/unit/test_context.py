"""PipelineContext: state, metrics, services as attributes, typed deps, cancellation."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, assert_type

import anyio
import anyio.to_thread
import pytest

from pipeline import PipelineContext

# -- state and metrics ---------------------------------------------------------------------------


def test_state_get_set() -> None:
    ctx = PipelineContext()
    assert ctx.get_state("missing") is None
    assert ctx.get_state("missing", 5) == 5
    ctx.set_state("has_lyrics", True)
    assert ctx.get_state("has_lyrics") is True
    assert ctx.state == {"has_lyrics": True}


def test_initial_state_and_metrics_are_copied() -> None:
    state = {"a": 1}
    metrics = {"m": 2}
    ctx = PipelineContext(state=state, metrics=metrics)
    ctx.set_state("a", 10)
    ctx.add_metric("m", 20)
    assert state == {"a": 1}
    assert metrics == {"m": 2}
    assert ctx.get_state("a") == 10
    assert ctx.metrics == {"m": 20}


def test_add_and_increment_metric() -> None:
    ctx = PipelineContext()
    ctx.add_metric("duration_ms", 1234)
    ctx.increment_metric("calls")
    ctx.increment_metric("calls")
    ctx.increment_metric("tokens", 2.5)
    assert ctx.metrics == {"duration_ms": 1234, "calls": 2, "tokens": 2.5}


def test_metrics_snapshot_is_a_copy() -> None:
    ctx = PipelineContext()
    ctx.add_metric("a", 1)
    snap = ctx.metrics_snapshot()
    ctx.add_metric("a", 2)
    assert snap == {"a": 1}


async def test_metrics_and_state_are_thread_safe() -> None:
    ctx = PipelineContext()
    threads, per_thread = 8, 2000

    def work(worker: int) -> None:
        for i in range(per_thread):
            ctx.increment_metric("n")
            ctx.set_state(f"{worker}:{i}", i)

    limiter = anyio.CapacityLimiter(threads)

    async def in_thread(worker: int) -> None:
        await anyio.to_thread.run_sync(work, worker, limiter=limiter)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for worker in range(threads):
                tg.start_soon(in_thread, worker)
    assert ctx.metrics["n"] == threads * per_thread
    assert len(ctx.state) == threads * per_thread  # no write was lost


# -- services ------------------------------------------------------------------------------------------


def test_services_are_attributes() -> None:
    provider = object()
    ctx = PipelineContext(provider=provider, job_config={"k": 1}, tracer="t")
    assert ctx.provider is provider
    assert ctx.job_config == {"k": 1}
    assert ctx.tracer == "t"


@pytest.mark.parametrize("name", ["provider", "config", "job_config", "session"])
def test_well_known_services_default_to_none(name: str) -> None:
    assert getattr(PipelineContext(), name) is None


def test_unknown_service_raises_helpful_attribute_error() -> None:
    ctx = PipelineContext(provider=1)
    with pytest.raises(AttributeError) as info:
        _ = ctx.llm_client
    msg = str(info.value)
    assert "llm_client" in msg
    assert "provider" in msg  # lists what is available
    assert "PipelineContext(llm_client=...)" in msg
    assert not hasattr(ctx, "llm_client")


# -- typed deps --------------------------------------------------------------------------------------------


@dataclass
class Deps:
    api_key: str


def test_typed_deps() -> None:
    ctx = PipelineContext(deps=Deps("k"))
    assert_type(ctx, PipelineContext[Deps])
    assert ctx.deps.api_key == "k"


def test_no_deps_is_none() -> None:
    ctx = PipelineContext()
    assert_type(ctx, PipelineContext[None])
    assert ctx.deps is None


# -- cancellation --------------------------------------------------------------------------------------------


def test_cancel() -> None:
    ctx = PipelineContext()
    before = ctx.cancel_reason
    assert before is None
    assert not ctx.is_cancelled()
    ctx.cancel("user pressed stop")
    assert ctx.is_cancelled()
    assert ctx.cancel_reason == "user pressed stop"
    ctx.cancel("second reason")  # first reason wins
    assert ctx.cancel_reason == "user pressed stop"


def test_threading_event_cancel_token() -> None:
    token = threading.Event()
    ctx = PipelineContext(cancel_token=token)
    assert not ctx.is_cancelled()
    token.set()
    assert ctx.is_cancelled()
    assert ctx.cancel_reason is not None


async def test_anyio_event_cancel_token() -> None:
    token = anyio.Event()
    ctx = PipelineContext(cancel_token=token)
    assert not ctx.is_cancelled()
    token.set()
    assert ctx.is_cancelled()


async def test_asyncio_event_cancel_token() -> None:
    import asyncio  # noqa: TID251  # interop with asyncio's own Event is what is tested

    token = asyncio.Event()
    ctx = PipelineContext(cancel_token=token)
    assert not ctx.is_cancelled()
    token.set()
    assert ctx.is_cancelled()


def test_cancel_token_is_settable_attribute() -> None:
    ctx = PipelineContext()
    token = threading.Event()
    ctx.cancel_token = token
    token.set()
    assert ctx.is_cancelled()


def test_any_object_with_is_set_is_a_token() -> None:
    class Flag:
        def __init__(self) -> None:
            self.value = False

        def is_set(self) -> bool:
            return self.value

    flag = Flag()
    ctx: PipelineContext[Any] = PipelineContext(cancel_token=flag)
    assert not ctx.is_cancelled()
    flag.value = True
    assert ctx.is_cancelled()

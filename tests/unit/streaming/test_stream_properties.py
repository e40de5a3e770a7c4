"""Property: random small streaming chains with failures always end, and end right."""

from __future__ import annotations

import typing
from typing import Any

import anyio
import anyio.lowlevel
from hypothesis import given, settings, strategies as st

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    StageDefinition,
    StageStatus,
    stage,
)
from tests.unit.streaming._chains import FAN_OUT

maps_st = st.lists(
    st.tuples(
        st.integers(1, 3),  # max_concurrent_fan_out
        st.one_of(st.none(), st.integers(1, 2)),  # buffer
        st.one_of(st.none(), st.integers(0, 8)),  # the value it fails on
    ),
    min_size=1,
    max_size=3,
)


def build(
    n: int, fail_after: int | None, maps: list[tuple[int, int | None, int | None]], reducer: str
) -> PipelineDefinition:
    @stage
    async def source(_: Any, ctx: PipelineContext[Any]) -> typing.AsyncIterator[int]:
        for i in range(n):
            if i == fail_after:
                raise ValueError(f"source broke at {i}")
            yield i
            await anyio.lowlevel.checkpoint()

    def step(bad: int | None) -> Any:
        @stage
        async def plus_one(x: int, ctx: PipelineContext[Any]) -> int:
            await anyio.lowlevel.checkpoint()
            if x == bad:
                raise RuntimeError(f"bad value {x}")
            return x + 1

        return plus_one

    @stage
    async def by_iterator(items: typing.AsyncIterator[int], ctx: PipelineContext[Any]) -> int:
        return sum([x async for x in items])

    @stage
    async def by_list(items: list[int], ctx: PipelineContext[Any]) -> int:
        return sum(items)

    stages = [StageDefinition("source", source)]
    previous = "source"
    for j, (cap, buffer, bad) in enumerate(maps):
        sid = f"m{j}"
        stages.append(
            StageDefinition(
                sid,
                step(bad),
                pattern=FAN_OUT,
                inputs=[previous],
                max_concurrent_fan_out=cap,
                buffer=buffer,
            )
        )
        previous = sid
    body = by_iterator if reducer == "iterator" else by_list
    stages.append(StageDefinition("reduce", body, inputs=[previous]))
    return PipelineDefinition("random", stages)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 6),
    fail_after=st.one_of(st.none(), st.integers(0, 6)),
    maps=maps_st,
    reducer=st.sampled_from(["iterator", "list"]),
    backend=st.sampled_from(["asyncio", "trio"]),
    scheduling=st.sampled_from(["waves", "eager"]),
)
def test_random_streaming_chains(
    n: int,
    fail_after: int | None,
    maps: list[tuple[int, int | None, int | None]],
    reducer: str,
    backend: str,
    scheduling: Any,
) -> None:
    pipeline = build(n, fail_after, maps, reducer)
    produced = list(range(n if fail_after is None else min(n, fail_after)))
    source_fails = fail_after is not None and fail_after < n
    values = produced
    map_fails = False
    for _, _, bad in maps:
        if bad in values:
            map_fails = True
            values = [v for v in values if v != bad]
        values = [v + 1 for v in values]
    may_fail = source_fails or map_fails

    async def scenario() -> None:
        with anyio.fail_after(10):
            result = await PipelineExecutor(scheduling=scheduling).execute(pipeline)
        ids = [s.id for s in pipeline.stages]
        assert set(result.stage_results) == set(ids)  # every stage ended one way or another
        if not may_fail:
            assert result.success, result.error
            assert result.outputs["reduce"] == sum(v + len(maps) for v in range(n))
            return
        assert not result.success
        assert result.failed_stages, result
        for sid in result.failed_stages:
            assert sid != "reduce"
        for sid in ids:
            assert result.stage_results[sid].status is not StageStatus.SKIPPED

    anyio.run(scenario, backend=backend)

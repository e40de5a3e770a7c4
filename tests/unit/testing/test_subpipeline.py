"""`SubPipeline`: a pipeline as a stage of another pipeline."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pipeline import (
    DefinitionError,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    RetryConfig,
    StageDefinition,
    StageStatus,
    SubPipeline,
    stage,
)
from pipeline.testing import Block, Fail, FakeClock, ScriptedStage, run_stage


@stage
async def double(x: int, ctx: PipelineContext[Any]) -> int:
    ctx.increment_metric("doubled")
    return 2 * x


@stage
async def inc(x: int, ctx: PipelineContext[Any]) -> int:
    ctx.set_state("inc_saw", x)
    return x + 1


def chain(name: str = "child") -> PipelineDefinition:
    return PipelineDefinition(
        name, [StageDefinition("double", double), StageDefinition("inc", inc, inputs=["double"])]
    )


async def test_output_defaults_to_single_sink_and_child_result_is_kept(
    pipeline_executor: PipelineExecutor,
) -> None:
    sub = SubPipeline(chain(), executor=pipeline_executor)
    assert sub.output == "inc"
    assert sub.name == "child"
    parent = PipelineDefinition(
        "parent", [StageDefinition("sub", sub), StageDefinition("again", double, inputs=["sub"])]
    )
    result = await pipeline_executor.execute(parent, 3)
    assert result.success
    assert result.outputs == {"sub": 7, "again": 14}
    child = result.stage_results["sub"].metadata["child_result"]
    assert isinstance(child, PipelineResult)
    assert child.outputs == {"double": 6, "inc": 7}
    assert child.stage_runs["inc"].status is StageStatus.SUCCEEDED


async def test_explicit_output_and_several_sinks() -> None:
    fork = PipelineDefinition(
        "fork",
        [
            StageDefinition("double", double),
            StageDefinition("a", inc, inputs=["double"]),
            StageDefinition("b", double, inputs=["double"]),
        ],
    )
    with pytest.raises(DefinitionError, match=r"several sink stages \('a', 'b'\)") as info:
        SubPipeline(fork)
    assert info.value.field == "output"
    result, _ = await run_stage(SubPipeline(fork, output="b"), 5)
    assert result.output == 20


def test_bad_output_and_context_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="'nope', not a stage of the child"):
        SubPipeline(chain(), output="nope")
    with pytest.raises(DefinitionError, match="no sink stage"):
        SubPipeline(PipelineDefinition("empty", []))
    with pytest.raises(DefinitionError, match="context"):
        SubPipeline(chain(), context="global")  # type: ignore[arg-type]  # the runtime check under test


async def test_shared_context_sees_parent_state_and_metrics() -> None:
    result, ctx = await run_stage(SubPipeline(chain()), 1, metrics={"doubled": 10})
    assert result.output == 3
    assert ctx.metrics == {"doubled": 11}
    assert ctx.get_state("inc_saw") == 2


async def test_isolated_context_keeps_child_state_apart() -> None:
    sub = SubPipeline(chain(), context="isolated")
    result, ctx = await run_stage(sub, 1, deps="the deps", session="db")
    assert result.output == 3
    assert ctx.metrics == {}
    assert ctx.get_state("inc_saw") is None
    child: PipelineResult = result.metadata["child_result"]
    assert child.metadata == {"doubled": 1}


async def test_isolated_context_inherits_deps_and_services() -> None:
    seen: list[Any] = []

    @stage
    async def look(x: int, ctx: PipelineContext[Any]) -> int:
        seen.append((ctx.deps, ctx.session))
        return x

    sub = SubPipeline(PipelineDefinition("c", [StageDefinition("look", look)]), context="isolated")
    await run_stage(sub, 1, deps="the deps", session="db")
    assert seen == [("the deps", "db")]


async def test_context_factory() -> None:
    def fresh(parent: PipelineContext[Any]) -> PipelineContext[Any]:
        return PipelineContext(state={"inherited": parent.get_state("x")})

    @stage
    async def read(x: int, ctx: PipelineContext[Any]) -> Any:
        return ctx.get_state("inherited")

    sub = SubPipeline(PipelineDefinition("c", [StageDefinition("read", read)]), context=fresh)
    result, _ = await run_stage(sub, 0, state={"x": "from parent"})
    assert result.output == "from parent"


async def test_child_failure_fails_parent_stage_naming_child_stage(
    pipeline_executor: PipelineExecutor,
) -> None:
    child = PipelineDefinition(
        "etl",
        [
            StageDefinition("extract", double),
            StageDefinition("load", ScriptedStage(Fail("disk full")), inputs=["extract"]),
        ],
    )
    after = ScriptedStage(1)
    parent = PipelineDefinition(
        "parent",
        [
            StageDefinition("etl", SubPipeline(child, executor=pipeline_executor)),
            StageDefinition("after", after, inputs=["etl"]),
        ],
    )
    result = await pipeline_executor.execute(parent, 1)
    assert not result.success
    assert result.failed_stages == ["etl"]
    etl = result.stage_results["etl"]
    assert etl.error == "sub-pipeline 'etl' failed at stage 'load': disk full"
    assert etl.metadata["child_failed_stage"] == "load"
    assert etl.metadata["child_result"].failed_stages == ["load"]
    assert after.call_count == 0


async def test_invalid_child_fails_parent_stage_with_validation_errors() -> None:
    child = PipelineDefinition("bad", [StageDefinition("a", double, inputs=["ghost"])])
    result, _ = await run_stage(SubPipeline(child, output="a"), 1)
    assert not result.success
    assert result.error is not None
    assert result.error.startswith("sub-pipeline 'bad' failed: invalid pipeline definition")
    assert "ghost" in result.error


async def test_parent_retry_reruns_child_on_the_parent_clock(fake_clock: FakeClock) -> None:
    executor = PipelineExecutor(clock=fake_clock)
    flaky = ScriptedStage(Fail("busy"), 5, name="flaky")
    child = PipelineDefinition(
        "c",
        [
            StageDefinition(
                "flaky", flaky, retry_config=RetryConfig(max_attempts=2, initial_delay_ms=250)
            )
        ],
    )
    parent = PipelineDefinition(
        "p", [StageDefinition("sub", SubPipeline(child, executor=executor))]
    )
    result = await executor.execute(parent, 0)
    assert result.outputs == {"sub": 5}
    assert fake_clock.sleeps == [0.25]  # the child's retry wait went through the parent's clock


async def test_child_without_executor_inherits_the_parent_runs_clock(
    fake_clock: FakeClock,
) -> None:
    flaky = ScriptedStage(Fail("busy"), 5, name="flaky")
    child = PipelineDefinition(
        "c",
        [
            StageDefinition(
                "flaky", flaky, retry_config=RetryConfig(max_attempts=2, initial_delay_ms=250)
            )
        ],
    )
    parent = PipelineDefinition("p", [StageDefinition("sub", SubPipeline(child))])
    with anyio.fail_after(5):  # on real time the 250 ms wait would still pass; the clock shows it
        result = await PipelineExecutor(clock=fake_clock).execute(parent, 0)
    assert result.outputs == {"sub": 5}
    assert fake_clock.sleeps == [0.25]


async def test_parent_stage_timeout_cancels_child_run(fake_clock: FakeClock) -> None:
    executor = PipelineExecutor(clock=fake_clock)
    unwound: list[str] = []

    @stage
    async def slow(x: int, ctx: PipelineContext[Any]) -> int:
        try:
            await fake_clock.sleep(60)  # passes the parent stage's 1 s deadline
            await anyio.sleep_forever()  # only the cancellation gets the child out of here
        finally:
            unwound.append("slow")
        return x

    child = PipelineDefinition("c", [StageDefinition("slow", slow)])
    parent = PipelineDefinition(
        "p", [StageDefinition("sub", SubPipeline(child, executor=executor), timeout_ms=1000)]
    )
    with anyio.fail_after(5):
        result = await executor.execute(parent, 0)
    assert unwound == ["slow"]  # the child's stage in flight was cancelled, not left running
    assert result.stage_results["sub"].status is StageStatus.FAILED
    assert result.stage_results["sub"].error == "Timeout: stage 'sub' exceeded timeout_ms=1000"


async def test_parent_fail_fast_cancels_child_in_flight(
    pipeline_executor: PipelineExecutor,
) -> None:
    release = anyio.Event()
    blocked = ScriptedStage(Block(), name="blocked")
    child = PipelineDefinition("c", [StageDefinition("blocked", blocked)])
    gate = ScriptedStage(Block(until=release, then=Fail("boom")), name="gate")
    parent = PipelineDefinition(
        "p",
        [
            StageDefinition("sub", SubPipeline(child, executor=pipeline_executor)),
            StageDefinition("gate", gate),
        ],
    )

    async def release_when_child_runs() -> None:
        await blocked.wait_for_calls(1)
        release.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(release_when_child_runs)
            result = await pipeline_executor.execute(parent, 0)
    assert result.failed_stages == ["gate"]
    assert result.cancelled_stages == ["sub"]


async def test_cancel_inside_child_with_shared_context_stops_parent(
    pipeline_executor: PipelineExecutor,
) -> None:
    @stage
    async def cancel_all(x: int, ctx: PipelineContext[Any]) -> int:
        ctx.cancel("operator said stop")
        await anyio.sleep_forever()
        return x

    child = PipelineDefinition("c", [StageDefinition("cancel", cancel_all)])
    never = ScriptedStage(1, name="never")
    parent = PipelineDefinition(
        "p",
        [
            StageDefinition("sub", SubPipeline(child, executor=pipeline_executor)),
            StageDefinition("never", never, inputs=["sub"]),
        ],
    )
    with anyio.fail_after(10):
        result = await pipeline_executor.execute(parent, 0)
    assert not result.success
    assert result.metadata["cancellation"] == {"reason": "operator said stop"}
    assert result.stage_results["sub"].status is StageStatus.CANCELLED
    assert never.call_count == 0


async def test_cancel_of_isolated_child_fails_parent_stage() -> None:
    @stage
    async def cancel_child(x: int, ctx: PipelineContext[Any]) -> int:
        ctx.cancel("child gave up")
        await anyio.sleep_forever()
        return x

    child = PipelineDefinition("c", [StageDefinition("cancel", cancel_child)])
    with anyio.fail_after(10):
        result, ctx = await run_stage(SubPipeline(child, context="isolated"), 0)
    assert result.status is StageStatus.FAILED
    assert result.error == "sub-pipeline 'c' failed: cancelled: child gave up"
    assert not ctx.is_cancelled()


def test_subpipeline_on_trio() -> None:
    async def main() -> dict[str, Any]:
        executor = PipelineExecutor(clock=FakeClock())
        parent = PipelineDefinition(
            "p", [StageDefinition("sub", SubPipeline(chain(), executor=executor))]
        )
        return (await executor.execute(parent, 2)).outputs

    assert anyio.run(main, backend="trio") == {"sub": 5}

"""Executor failure handling: exceptions, bad returns, conditions, fail-fast, non-critical stages.

Every scenario runs on asyncio and trio (sync tests calling `anyio.run`).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    Scheduling,
    StageDefinition,
    StageResult,
    StageStatus,
    stage,
)
from pipeline.testing import Fail, ScriptedStage
from tests.unit._support import BACKENDS, Backend, on_both_backends


@stage
async def echo(input: Any, context: PipelineContext[Any]) -> Any:
    """Return the input unchanged."""
    return input


# -- exceptions and bad returns --------------------------------------------------------------------


@on_both_backends
async def test_exception_becomes_failure_with_traceback() -> None:
    """A raised exception is a failed result "ExcType: message"; the traceback is kept."""

    async def body(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        raise ValueError("bad audio file")

    pipeline = PipelineDefinition("p", [StageDefinition("audio", FunctionStage(body))])
    result = await PipelineExecutor().execute(pipeline)
    assert result.success is False
    assert result.failed_stages == ["audio"]
    stage_result = result.get_result("audio")
    assert stage_result.status is StageStatus.FAILED
    assert stage_result.error == "ValueError: bad audio file"
    assert stage_result.stage_name == "audio"
    run = result.stage_runs["audio"]
    assert run.status is StageStatus.FAILED
    assert run.exception_type == "ValueError"
    assert run.traceback is not None
    assert "Traceback" in run.traceback
    assert "bad audio file" in run.traceback
    assert "in body" in run.traceback  # points into the stage's own code


@on_both_backends
async def test_non_stage_result_return_is_a_failure_naming_the_stage() -> None:
    """Returning something that is not a StageResult fails the stage and names it."""

    class Sloppy:
        name = "sloppy"

        async def execute(self, input: Any, context: PipelineContext[Any]) -> Any:
            return {"not": "a result"}

    pipeline = PipelineDefinition("p", [StageDefinition("sloppy_stage", Sloppy())])
    result = await PipelineExecutor().execute(pipeline)
    assert result.success is False
    error = result.get_result("sloppy_stage").error
    assert error is not None
    assert "sloppy_stage" in error
    assert "dict" in error
    assert "StageResult" in error


@on_both_backends
async def test_failed_result_without_exception() -> None:
    """A returned failure keeps its error text and no traceback."""
    no_lyrics = ScriptedStage(Fail("No lyrics available"))
    pipeline = PipelineDefinition("p", [StageDefinition("a", no_lyrics)])
    result = await PipelineExecutor().execute(pipeline)
    assert result.success is False
    assert result.get_result("a").error == "No lyrics available"
    assert result.stage_runs["a"].traceback is None
    with pytest.raises(Exception, match="No lyrics available"):
        result.raise_for_failure()


class Abort(BaseException):
    """A BaseException that is neither an interrupt nor a cancellation."""


@on_both_backends
async def test_a_user_base_exception_is_the_stage_failure() -> None:
    """SPEC 7: only KeyboardInterrupt, SystemExit and real cancellation leave execute.

    (Before SPEC 7 any BaseException propagated; a library's own BaseException subclass then
    tore down the caller's run instead of failing the stage that raised it.)
    """
    pipeline = PipelineDefinition(
        "p", [StageDefinition("a", ScriptedStage(Abort("stop everything")))]
    )
    result = await PipelineExecutor().execute(pipeline)
    assert not result.success
    assert result.get_result("a").error == "Abort: stop everything"
    assert result.stage_runs["a"].exception_type == "Abort"


# -- conditions ----------------------------------------------------------------------------------------


@on_both_backends
async def test_sync_condition_false_skips_and_dependents_get_none() -> None:
    """A false condition skips the stage; dependents still run and receive None for it."""
    skipped, dependent = ScriptedStage("lyrics"), ScriptedStage("macro")
    pipeline = PipelineDefinition(
        "cond",
        [
            StageDefinition("audio", ScriptedStage("audio")),
            StageDefinition(
                "lyrics",
                skipped,
                pattern=ExecutionPattern.CONDITIONAL,
                inputs=["audio"],
                condition=lambda ctx: ctx.get_state("has_lyrics", False),
            ),
            StageDefinition("macro", dependent, inputs=["audio", "lyrics"]),
        ],
    )
    result = await PipelineExecutor().execute(pipeline)
    assert result.success
    assert skipped.call_count == 0
    assert result.skipped_stages == ["lyrics"]
    lyrics = result.get_result("lyrics")
    assert lyrics.status is StageStatus.SKIPPED
    assert lyrics.success is True
    assert lyrics.metadata["skipped"] is True
    assert dependent.inputs == [{"audio": "audio", "lyrics": None}]
    assert "lyrics" not in result.outputs
    assert result.stage_runs["lyrics"].attempts == 0


@on_both_backends
async def test_condition_true_runs_the_stage() -> None:
    """A true condition (on any pattern) lets the stage run."""
    stage = ScriptedStage("ran")
    pipeline = PipelineDefinition("cond", [StageDefinition("a", stage, condition=lambda ctx: True)])
    result = await PipelineExecutor().execute(pipeline, 3)
    assert result.outputs == {"a": "ran"}
    assert stage.inputs == [3]


@on_both_backends
async def test_condition_sees_state_set_by_upstream_stage() -> None:
    """The condition is evaluated after the stage's inputs are done."""

    async def analyse(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        context.set_state("has_lyrics", True)
        return StageResult.success("bundle")

    pipeline = PipelineDefinition(
        "cond",
        [
            StageDefinition("audio", FunctionStage(analyse)),
            StageDefinition(
                "lyrics",
                echo,
                pattern=ExecutionPattern.CONDITIONAL,
                inputs=["audio"],
                condition=lambda ctx: ctx.get_state("has_lyrics", False),
            ),
        ],
    )
    result = await PipelineExecutor().execute(pipeline)
    assert result.outputs == {"audio": "bundle", "lyrics": "bundle"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("verdict", [True, False])
def test_async_condition(backend: Backend, verdict: bool) -> None:
    async def scenario() -> None:
        stage = ScriptedStage("ran")

        async def condition(ctx: PipelineContext[Any]) -> bool:
            await anyio.lowlevel.checkpoint()
            return verdict

        pipeline = PipelineDefinition("cond", [StageDefinition("a", stage, condition=condition)])
        result = await PipelineExecutor().execute(pipeline)
        assert result.success
        assert stage.call_count == (1 if verdict else 0)
        expected = StageStatus.SUCCEEDED if verdict else StageStatus.SKIPPED
        assert result.get_result("a").status is expected

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_raising_condition_fails_the_stage() -> None:
    """A condition that raises fails its stage (and the run, the stage being critical)."""
    stage = ScriptedStage(1)

    def condition(ctx: PipelineContext[Any]) -> bool:
        raise RuntimeError("no config")

    pipeline = PipelineDefinition("cond", [StageDefinition("a", stage, condition=condition)])
    result = await PipelineExecutor().execute(pipeline)
    assert result.success is False
    assert result.failed_stages == ["a"]
    error = result.get_result("a").error
    assert error is not None
    assert "RuntimeError" in error
    assert "no config" in error
    assert stage.call_count == 0


# -- fail-fast ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduling", ["waves", "eager"])
def test_fail_fast_cancels_in_flight_sibling_and_never_starts_downstream(
    backend: Backend, scheduling: Scheduling
) -> None:
    async def scenario() -> None:
        blocker_started = anyio.Event()
        blocker_finally = anyio.Event()

        async def block(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            try:
                blocker_started.set()
                await anyio.Event().wait()  # forever, unless cancelled
            finally:
                blocker_finally.set()
            return StageResult.success("never")

        async def fail_later(input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
            await blocker_started.wait()
            return StageResult.failure("render failed")

        downstream = ScriptedStage("downstream")
        pipeline = PipelineDefinition(
            "ff",
            [
                StageDefinition("blocker", FunctionStage(block)),
                StageDefinition("failing", FunctionStage(fail_later)),
                StageDefinition("downstream", downstream, inputs=["failing"]),
                StageDefinition("after_blocker", echo, inputs=["blocker"]),
            ],
        )
        with anyio.fail_after(2):
            result = await PipelineExecutor(scheduling=scheduling).execute(pipeline)
        assert result.success is False
        assert blocker_finally.is_set()
        assert result.failed_stages == ["failing"]
        assert result.cancelled_stages == ["blocker", "downstream", "after_blocker"]
        assert result.get_result("blocker").status is StageStatus.CANCELLED
        assert downstream.call_count == 0
        not_started = result.get_result("downstream")
        assert not_started.status is StageStatus.CANCELLED
        assert not_started.error == "[CANCELLED] not started"
        assert result.stage_runs["downstream"].attempts == 0
        assert result.stage_runs["downstream"].started_ms is None
        assert result.outputs == {}

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_fail_fast_on_raised_exception() -> None:
    """An exception in a critical stage triggers fail-fast just like a failed result."""
    downstream = ScriptedStage("b")
    pipeline = PipelineDefinition(
        "ff",
        [
            StageDefinition("a", ScriptedStage(KeyError("k"))),
            StageDefinition("b", downstream, inputs=["a"]),
        ],
    )
    result = await PipelineExecutor().execute(pipeline)
    assert result.success is False
    assert result.failed_stages == ["a"]
    assert result.cancelled_stages == ["b"]
    assert downstream.call_count == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduling", ["waves", "eager"])
def test_without_fail_fast_independent_branches_finish(
    backend: Backend, scheduling: Scheduling
) -> None:
    async def scenario() -> None:
        independent = ScriptedStage("ok")
        child, grandchild = ScriptedStage("child"), ScriptedStage("grandchild")
        pipeline = PipelineDefinition(
            "no-ff",
            [
                StageDefinition("root", ScriptedStage(0)),
                StageDefinition("bad", ScriptedStage(Fail("boom")), inputs=["root"]),
                StageDefinition("other", independent, inputs=["root"]),
                StageDefinition("child", child, inputs=["bad"]),
                StageDefinition("grandchild", grandchild, inputs=["child", "other"]),
                StageDefinition("tail", echo, inputs=["other"]),
            ],
            fail_fast=False,
        )
        result = await PipelineExecutor(scheduling=scheduling).execute(pipeline)
        assert result.success is False
        assert result.failed_stages == ["bad"]
        assert result.skipped_stages == ["child", "grandchild"]
        assert result.cancelled_stages == []
        for sid in ("child", "grandchild"):
            r = result.get_result(sid)
            assert r.status is StageStatus.SKIPPED
            assert r.metadata["skip_reason"] == "upstream failed"
        assert child.call_count == grandchild.call_count == 0
        assert result.outputs == {"root": 0, "other": "ok", "tail": "ok"}

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_condition_skip_does_not_propagate_but_upstream_failure_does() -> None:
    """A condition skip lets dependents run; an upstream-failed skip skips them too."""
    after_cond = ScriptedStage("after")
    pipeline = PipelineDefinition(
        "mix",
        [
            StageDefinition("cond", ScriptedStage(1), condition=lambda ctx: False),
            StageDefinition("after_cond", after_cond, inputs=["cond"]),
            StageDefinition("bad", ScriptedStage(Fail("x"))),
            StageDefinition("after_bad", echo, inputs=["bad"]),
        ],
        fail_fast=False,
    )
    result = await PipelineExecutor().execute(pipeline)
    assert after_cond.inputs == [None]
    assert result.get_result("after_cond").status is StageStatus.SUCCEEDED
    assert result.get_result("after_bad").metadata["skip_reason"] == "upstream failed"
    assert result.skipped_stages == ["cond", "after_bad"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fail_fast", [True, False])
def test_non_critical_failure_does_not_stop_the_run(backend: Backend, fail_fast: bool) -> None:
    async def scenario() -> None:
        dependent = ScriptedStage("next")
        pipeline = PipelineDefinition(
            "soft",
            [
                StageDefinition("judge", ScriptedStage(Fail("budget exhausted")), critical=False),
                StageDefinition("sibling", ScriptedStage("s")),
                StageDefinition("next", dependent, inputs=["judge"]),
            ],
            fail_fast=fail_fast,
        )
        result = await PipelineExecutor().execute(pipeline)
        assert result.success is True
        assert result.failed_stages == ["judge"]
        assert result.get_result("judge").error == "budget exhausted"
        assert dependent.inputs == [None]
        assert result.outputs == {"sibling": "s", "next": "next"}
        assert result.cancelled_stages == []

    anyio.run(scenario, backend=backend)


@on_both_backends
async def test_non_critical_exception_does_not_stop_the_run() -> None:
    """A raising non-critical stage is reported as failed; the run still succeeds."""
    pipeline = PipelineDefinition(
        "soft",
        [
            StageDefinition("opt", ScriptedStage(RuntimeError("meh")), critical=False),
            StageDefinition("next", echo, inputs=["opt"]),
        ],
    )
    result = await PipelineExecutor().execute(pipeline)
    assert result.success is True
    assert result.get_result("opt").error == "RuntimeError: meh"
    assert result.outputs == {"next": None}

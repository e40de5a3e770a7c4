"""Runner lifecycles (SPEC section 9): opening per run or kept open, timeouts, stopping, extras.

These tests make runners of their own where a run must open or close one, or where a timed-out
call leaves a worker busy; real time is bounded by `anyio.fail_after`, blocked work waits on a
file, never on a sleep in the test.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest

from pipeline import (
    DefinitionError,
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    RetryConfig,
    RunnerError,
    StageDefinition,
)
from pipeline.runners import ProcessRunner
from tests.unit.runners._support import GUARD_S, blocks_until, until

if TYPE_CHECKING:
    from pipeline.runners import RemoteRunner

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[3]


def where(x: Any, ctx: PipelineContext[Any]) -> int:
    return os.getpid()


def sleeps_5s(x: Any, ctx: PipelineContext[Any]) -> Any:
    time.sleep(5)  # noqa: TID251  # in a worker process, not a loop: the timeout must not wait
    return x


def one(stage: StageDefinition) -> PipelineDefinition:
    return PipelineDefinition("p", [stage])


async def run_on(runner: Any, stage: StageDefinition, initial: Any = None) -> PipelineResult:
    with anyio.fail_after(GUARD_S):
        return await PipelineExecutor(runners={"remote": runner}).execute(one(stage), initial)


async def closes_within(runner: RemoteRunner, seconds: float) -> None:
    """Close `runner`, failing if that takes longer than `seconds`.

    Closing is shielded from cancellation, so a `fail_after` around it could not trip: the
    bound is on waiting for it to finish, in another task.
    """
    closed = anyio.Event()

    async def close() -> None:
        await runner.__aexit__(None, None, None)
        closed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(close)
        with anyio.fail_after(seconds):
            await closed.wait()


# -- opening and closing ----------------------------------------------------------------------------
async def test_the_executor_opens_a_runner_for_each_run_unless_the_caller_did() -> None:
    runner = ProcessRunner(1)
    stage = StageDefinition("pid", FunctionStage(where), runner="remote")
    opened: list[bool] = []
    first = await run_on(runner, stage)
    opened.append(runner.is_open)  # opened for the run, closed after it
    second = await run_on(runner, stage)
    assert first.outputs["pid"] != second.outputs["pid"]  # a new pool each run
    async with runner:
        kept = [(await run_on(runner, stage)).outputs["pid"] for _ in range(2)]
        opened.append(runner.is_open)  # the caller's entry keeps it open after the runs
    opened.append(runner.is_open)
    assert opened == [False, True, False]
    assert kept[0] == kept[1]  # one pool across both runs
    assert os.getpid() not in kept


async def test_a_dask_runner_without_an_address_owns_a_local_cluster() -> None:
    from pipeline.runners.dask import DaskRunner  # the dask extra

    runner = DaskRunner(n_workers=1)
    stage = StageDefinition("pid", FunctionStage(where), runner="remote")
    async with runner:
        assert runner.client is not None
        pids = {(await run_on(runner, stage)).outputs["pid"] for _ in range(2)}
    assert len(pids) == 1  # one worker, kept across both runs
    assert runner.client is None  # the cluster and its client are closed


async def test_a_runner_used_by_hand_must_be_open() -> None:
    with pytest.raises(RunnerError, match=r"is not open: enter it with 'async with runner:'"):
        await ProcessRunner(1).run(FunctionStage(where), None, PipelineContext())


def test_bad_runner_arguments_are_definition_errors() -> None:
    from pipeline.runners.dask import DaskRunner  # the dask extra

    with pytest.raises(DefinitionError, match="ProcessRunner: max_workers is 0"):
        ProcessRunner(0)
    with pytest.raises(DefinitionError, match="fork is unsafe"):
        ProcessRunner(start_method="fork")
    with pytest.raises(DefinitionError, match="DaskRunner: address and client are both given"):
        DaskRunner("tcp://127.0.0.1:1", client=object())  # type: ignore[arg-type]  # on purpose


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    with pytest.raises(ImportError, match=r"pip install 'wavepipe\[processes\]'"):
        ProcessRunner()
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "pipeline.runners.dask", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'wavepipe\[dask\]'"):
        importlib.import_module("pipeline.runners.dask")


# -- timeouts and stopping --------------------------------------------------------------------------
@pytest.mark.parametrize("terminate", [True, False])
async def test_a_remote_timeout_returns_at_the_deadline_without_waiting_for_the_worker(
    terminate: bool,
) -> None:
    # Its own pool: closing it stops the busy worker (when the timeout did not already).
    runner = ProcessRunner(1, terminate_on_cancel=terminate)
    stage = StageDefinition("slow", FunctionStage(sleeps_5s), runner="remote", timeout_ms=300)
    await runner.__aenter__()  # opened first: starting processes is not what is bounded here
    try:
        with anyio.fail_after(3):  # the worker sleeps 5 s: waiting for it would trip this
            result = await run_on(runner, stage, 1)
    finally:
        await closes_within(runner, 3)  # nor does closing wait for it (it is terminated)
    assert result.stage_results["slow"].error == "Timeout: stage 'slow' exceeded timeout_ms=300"
    (attempt,) = result.stage_runs["slow"].attempt_runs
    # It was running: its worker was killed (confirmed stopped), or it runs on unseen.
    assert attempt.remote_stopped is terminate


async def test_a_timeout_on_a_shared_runner_returns_at_the_deadline(
    remote: RemoteRunner, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    body = blocks_until(str(release))
    stage = StageDefinition("slow", FunctionStage(body), runner="remote", timeout_ms=300)
    try:
        with anyio.fail_after(4):  # the body blocks for 10 s unless released
            result = await run_on(remote, stage, 1)
    finally:
        release.touch()
    assert "Timeout: stage 'slow' exceeded timeout_ms=300" in (
        result.stage_results["slow"].error or ""
    )
    (attempt,) = result.stage_runs["slow"].attempt_runs
    # A process pool kills the worker that ran it; a Dask task runs on unseen.
    assert attempt.remote_stopped is isinstance(remote, ProcessRunner)
    await until(lambda: remote.in_flight == 0)


async def test_a_queued_call_that_times_out_is_confirmed_stopped(tmp_path: Path) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    started.mkdir()
    runner = ProcessRunner(1)
    blockers = StageDefinition(
        "busy",
        FunctionStage(blocks_until(str(release), str(started))),
        runner="remote",
        pattern=ExecutionPattern.FAN_OUT,
        max_concurrent_fan_out=None,
    )
    queued = StageDefinition(
        "queued", FunctionStage(blocks_until(str(release))), runner="remote", timeout_ms=300
    )
    results: list[PipelineResult] = []
    async with runner, anyio.create_task_group() as tg:

        async def busy() -> None:
            results.append(await run_on(runner, blockers, [1, 2, 3]))

        tg.start_soon(busy)
        try:
            # One call runs, two wait in the pool's call queue: the next one stays pending.
            await until(lambda: runner.in_flight == 3 and any(started.iterdir()))
            timed_out = await run_on(runner, queued, 0)
        finally:
            release.touch()
    (attempt,) = timed_out.stage_runs["queued"].attempt_runs
    assert "Timeout" in (attempt.error or "")
    assert attempt.remote_stopped is True  # cancelled before any worker took it
    assert results[0].outputs["busy"] == [1, 2, 3]
    assert not (started / "0").exists()


# -- a script's __main__ --------------------------------------------------------------------------
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pipeline import (
        ExecutionPattern, FunctionStage, PipelineDefinition, PipelineExecutor, StageDefinition,
        StageResult,
    )
    from pipeline.runners import ProcessRunner

    class Triple:  # a stage class defined in __main__
        name = "triple"

        async def execute(self, x, context):
            return StageResult.success(3 * x)

    def square(x, context):  # a function defined in __main__
        return x * x

    def main():
        address = sys.argv[1] if len(sys.argv) > 1 else None
        if address:
            from pipeline.runners.dask import DaskRunner
            runner = DaskRunner(address)
        else:
            runner = ProcessRunner(2)
        definition = PipelineDefinition("script", [
            StageDefinition("sq", FunctionStage(square), runner="remote",
                            pattern=ExecutionPattern.FAN_OUT, batch_size=2),
            StageDefinition("tri", Triple(), runner="remote", inputs=["sq"],
                            pattern=ExecutionPattern.FAN_OUT),
        ])
        executor = PipelineExecutor(runners={"remote": runner})
        outputs = {}
        for backend in ("asyncio", "trio"):
            result = executor.run_sync(definition, [1, 2, 3], backend=backend)
            outputs[backend] = [result.success, result.outputs.get("tri"), result.error]
        print(json.dumps(outputs))

    if __name__ == "__main__":
        main()
    """
)


def test_stages_defined_in_a_scripts_main_run_remotely(
    remote: RemoteRunner, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    args = [sys.executable, str(script)]
    client = getattr(remote, "client", None)
    if client is not None:  # the Dask kind: use the module's cluster by its address
        args.append(client.scheduler.address)
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [True, [3, 12, 27], None]
    assert outputs == {"asyncio": expected, "trio": expected}


def dies_once(marker: str) -> Any:
    """A body whose first call kills its worker process outright."""

    def body(x: Any, ctx: PipelineContext[Any]) -> Any:
        if not Path(marker).exists():
            Path(marker).touch()
            os._exit(3)
        return x + 1

    return body


async def test_a_dead_worker_fails_the_attempt_and_the_retry_gets_a_fresh_pool(
    tmp_path: Path,
) -> None:
    runner = ProcessRunner(1)
    stage = StageDefinition(
        "fragile",
        FunctionStage(dies_once(str(tmp_path / "died"))),
        runner="remote",
        retry_config=RetryConfig(max_attempts=2, initial_delay_ms=0),
    )
    async with runner:
        result = await run_on(runner, stage, 1)
        assert result.outputs == {"fragile": 2}
        first, second = result.stage_runs["fragile"].attempt_runs
        assert (first.error or "").startswith("BrokenProcessPool: ")
        assert second.error is None
        again = await run_on(runner, stage, 5)  # the renewed pool serves later runs too
        assert again.outputs == {"fragile": 6}

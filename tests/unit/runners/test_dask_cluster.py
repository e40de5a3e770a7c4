"""A real Dask cluster: `dask scheduler` and two `dask worker` processes, one killed mid-run.

The run goes through `DaskRunner(address=...)`; killing a worker while it runs items must end
either in the right outputs (Dask reschedules the lost tasks on the other worker) or in a
failure with a clear error, never in a wrong result. The processes are torn down after the
test, even when it fails.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import cloudpickle  # type: ignore[import-untyped]  # no stubs
import pytest

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    StageDefinition,
)
from pipeline.runners.dask import DaskRunner

if TYPE_CHECKING:
    from collections.abc import Iterator

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests

ITEMS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A scheduler and two single-threaded workers on 127.0.0.1; killed after the test."""
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    log = (tmp_path / "cluster.log").open("wb")
    common = ["--no-dashboard", "--dashboard-address", ":0"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                 "--port", port, *common],
                stdout=log, stderr=log,
            )
        )  # fmt: skip
        procs.extend(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address,
                 "--nthreads", "1", "--no-nanny", "--name", name, "--host", "127.0.0.1", *common],
                stdout=log, stderr=log,
            )
            for name in ("w1", "w2")
        )  # fmt: skip
        yield address, procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        log.close()


def slow_item(started: str) -> Any:
    """Marks which worker process took item x, then works a little."""

    def body(x: int, ctx: PipelineContext[Any]) -> tuple[int, int]:
        Path(started, f"{x}-{os.getpid()}").touch()
        time.sleep(0.15)  # noqa: TID251  # in a worker process, not a loop
        return x, x * x

    return body


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_killed_worker_mid_run_never_gives_a_wrong_result(
    cluster: tuple[str, list[subprocess.Popen[bytes]]], tmp_path: Path, backend: str
) -> None:
    address, procs = cluster
    started = tmp_path / "started"
    started.mkdir()
    runner = DaskRunner(address)
    stage = StageDefinition(
        "each",
        FunctionStage(slow_item(str(started))),
        runner="dask",
        pattern=ExecutionPattern.FAN_OUT,
        max_concurrent_fan_out=None,
    )
    definition = PipelineDefinition("cluster", [stage])
    executor = PipelineExecutor(runners={"dask": runner})

    async def scenario() -> PipelineResult:
        async with runner:
            client: Any = runner.client
            await anyio.to_thread.run_sync(client.wait_for_workers, 2, 30)
            results: list[PipelineResult] = []
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:

                    async def go() -> None:
                        results.append(await executor.execute(definition, list(range(ITEMS))))

                    tg.start_soon(go)
                    # Kill the first worker once both have taken items (mid-run).
                    while len({p.name.split("-")[1] for p in started.iterdir()}) < 2:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                    procs[1].kill()
            return results[0]

    result = anyio.run(scenario, backend=backend)
    if result.success:
        assert result.outputs["each"] == [(x, x * x) for x in range(ITEMS)]
    else:  # allowed, if it says why; never a wrong output
        assert result.outputs == {}
        assert result.stage_results["each"].error

"""Shared runners for the runner tests: one process pool and one Dask cluster per module.

Starting a pool or a cluster costs a second or more, so each test module keeps one of each
open (the "kept open by the caller" case) and every run's executor enters it again. Tests that
need a runner of their own (timeouts that leave a worker busy, closing behaviour) make one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline.runners import ProcessRunner, RemoteRunner

if TYPE_CHECKING:
    from collections.abc import Iterator

KINDS = ["processes", "dask"]
"""The runners that send work to other processes."""


def open_dask_cluster(n_workers: int = 2) -> tuple[Any, Any]:
    """A `LocalCluster` of worker processes (one thread each) and a client of it."""
    import distributed  # the dask extra, only for these tests

    start: Any = distributed.LocalCluster  # untyped
    connect: Any = distributed.Client
    cluster = start(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = connect(cluster, set_as_default=False)
    return cluster, client


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every `pytest.mark.anyio` test here runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(scope="module", params=KINDS)
def remote(request: pytest.FixtureRequest) -> Iterator[RemoteRunner]:
    """An open runner of each kind, kept open across the module's tests."""
    if request.param == "processes":
        runner: RemoteRunner = ProcessRunner(2)
        anyio.run(runner.__aenter__)
        try:
            yield runner
        finally:
            anyio.run(runner.__aexit__, None, None, None)
        return
    from pipeline.runners.dask import DaskRunner  # the dask extra

    cluster, client = open_dask_cluster()
    try:
        dask_runner = DaskRunner(client=client)
        anyio.run(dask_runner.__aenter__)
        try:
            yield dask_runner
        finally:
            anyio.run(dask_runner.__aexit__, None, None, None)
    finally:
        client.close()
        cluster.close()

"""`DaskRunner`: stages on a Dask cluster (`pip install 'wavepipe[dask]'`).

Importing this module imports `distributed`; `import pipeline` never does. The runner drives
a *synchronous* `distributed.Client` from worker threads: Dask's asyncio client API would tie
the run to asyncio, and runs must also work on trio. Dask schedules; a worker that dies has its
tasks rescheduled by Dask on the others.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, final

try:
    import distributed
except ImportError as exc:  # pragma: no cover - the dev environment has it
    msg = "DaskRunner needs the dask extra: pip install 'wavepipe[dask]'"
    raise ImportError(msg) from exc

from pipeline.errors import DefinitionError, RunnerError
from pipeline.runners._remote import RemoteRunner
from pipeline.runners._worker import warm_up

if TYPE_CHECKING:
    from collections.abc import Callable

CONNECT_TIMEOUT_S = 30
"""How long connecting to a scheduler at `address` may take."""

_NOT_RUNNING = frozenset(
    {"released", "waiting", "queued", "no-worker", "forgotten", "memory", "erred"}
)
"""Scheduler task states in which no worker runs the task (not yet, or no more)."""

__all__ = ["DaskRunner"]


@final
class DaskRunner(RemoteRunner):
    """Runs stage attempts as tasks on a Dask cluster.

    A runner runs one attempt (or one batch of fan-out items, `StageDefinition(batch_size=n)`);
    retries, timeouts, the cache and events stay in the executor. On a timeout or cancellation
    the task is cancelled; its attempt record says `remote_stopped=True` only when no worker
    had started it (Dask cannot interrupt a running task; its result is dropped).

    Args:
        address: A scheduler address (`"tcp://host:8786"`): the runner connects a client on
            open and closes it on close.
        client: A `distributed.Client` you own (not closed by the runner).
        **cluster_options: With neither: options of the `distributed.LocalCluster` the runner
            starts on open and closes on close (default: worker processes, one thread each, the
            dashboard on a port of its own).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        client: distributed.Client | None = None,
        **cluster_options: Any,
    ) -> None:
        if address is not None and client is not None:
            raise DefinitionError(
                "DaskRunner", "address", "and client are both given", "pass one of them"
            )
        if cluster_options and (address is not None or client is not None):
            raise DefinitionError(
                "DaskRunner", "cluster_options", "are given with an address or a client",
                "cluster options only apply to the LocalCluster started without either",
            )  # fmt: skip
        super().__init__()
        self.address = address
        self._given = client
        self._options = {"processes": True, "threads_per_worker": 1, "dashboard_address": ":0"}
        self._options.update(cluster_options)
        # distributed is untyped where it matters (Client, LocalCluster): Any keeps mypy honest
        self._client: Any = None
        self._cluster: Any = None

    @property
    def client(self) -> distributed.Client | None:
        """The client in use while open (None while closed, unless one was given)."""
        client: distributed.Client | None = self._client
        return client if client is not None else self._given

    def _open(self) -> None:
        self._connect()
        # Every worker imports the library now, not during the first attempt (whose timeout
        # must not count it); workers that join later import it on their first task.
        with contextlib.suppress(Exception):
            self._client.run(warm_up)

    def _connect(self) -> None:
        if self._given is not None:
            self._client = self._given
            return
        connect: Any = distributed.Client
        if self.address is not None:
            try:
                self._client = connect(
                    self.address, set_as_default=False, timeout=CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                msg = f"DaskRunner cannot reach the scheduler at {self.address!r}: {exc}"
                raise RunnerError(msg) from exc
            return
        start: Any = distributed.LocalCluster
        self._cluster = start(**self._options)
        self._client = connect(self._cluster, set_as_default=False)

    def _close(self, *, abandoned: bool) -> None:
        client: Any = self._client
        cluster: Any = self._cluster
        self._client = self._cluster = None
        if client is not None and client is not self._given:
            client.close()
        if cluster is not None:
            cluster.close()

    def _submit(self, fn: Callable[..., bytes], *args: Any) -> Any:
        client: Any = self._client
        assert client is not None  # submitted only while open
        return client.submit(fn, *args, pure=False)

    def _wait(self, handle: Any) -> bytes:
        result: bytes = handle.result()
        return result

    def _cancel(self, handle: Any) -> bool:
        client: Any = self._client
        if client is None:  # pragma: no cover - closed meanwhile
            return False
        try:
            state = client.run_on_scheduler(_task_state, handle.key)
        except Exception:  # noqa: BLE001  # unknown: not confirmed
            state = "unknown"
        handle.cancel()
        return state is None or state in _NOT_RUNNING

    def __repr__(self) -> str:
        where = self.address or ("client" if self._given is not None else "LocalCluster")
        return f"DaskRunner({where})"


def _task_state(key: Any, dask_scheduler: Any = None) -> str | None:
    """On the scheduler: the state of task `key` (None when the scheduler has none)."""
    task = dask_scheduler.tasks.get(key) if dask_scheduler is not None else None
    return None if task is None else str(task.state)

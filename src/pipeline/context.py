"""The per-run `PipelineContext`: shared state, metrics, cancellation and injected dependencies.

It holds no scheduling logic; the executor listens to its cancellation and reads its metrics.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Generic, Protocol, overload

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from contextlib import AbstractAsyncContextManager

    # A default lets users annotate a bare `context: PipelineContext` (as the original README
    # does) under mypy --strict; at run time the default is irrelevant.
    from typing_extensions import TypeVar

    from pipeline.definition import RetryConfig
    from pipeline.resources import Lease

    DepsT = TypeVar("DepsT", default=Any)
else:
    from typing import TypeVar

    DepsT = TypeVar("DepsT")

T = TypeVar("T")

_WELL_KNOWN_SERVICES = ("provider", "config", "job_config", "session")


class CancelToken(Protocol):
    """Anything with `is_set()`, such as `anyio.Event`, `asyncio.Event` or `threading.Event`."""

    def is_set(self) -> bool:
        """True once cancellation was requested."""
        ...


class PipelineContext(Generic[DepsT]):
    """State, metrics, cancellation and dependencies shared by every stage of a run.

    `deps` is a typed dependency object (`PipelineContext[MyDeps]`); any other keyword argument
    (`provider=...`, `config=...`, `job_config=...`, `session=...`) becomes a service reachable as
    an attribute (`context.provider`). The four well-known service names read as None when not
    given. State and metric updates take a lock, so sync stages in worker threads may use them.
    """

    @overload
    def __init__(
        self: PipelineContext[None],
        *,
        deps: None = None,
        state: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        cancel_token: CancelToken | None = None,
        **services: Any,
    ) -> None: ...
    @overload
    def __init__(
        self,
        *,
        deps: DepsT,
        state: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        cancel_token: CancelToken | None = None,
        **services: Any,
    ) -> None: ...
    def __init__(
        self,
        *,
        deps: Any = None,
        state: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        cancel_token: CancelToken | None = None,
        **services: Any,
    ) -> None:
        self.deps: DepsT = deps
        self.cancel_token: CancelToken | None = cancel_token
        self._state: dict[str, Any] = dict(state or {})
        self._metrics: dict[str, Any] = dict(metrics or {})
        self._services: dict[str, Any] = dict(services)
        self._lock = threading.Lock()
        self._cancel_reason: str | None = None
        self._cancel_listeners: list[Callable[[str], None]] = []

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: services, then the well-known defaults.
        services = self.__dict__.get("_services", {})
        if name in services:
            return services[name]
        if name in _WELL_KNOWN_SERVICES:
            return None
        known = ", ".join(sorted(services)) or "none"
        msg = (
            f"PipelineContext has no service {name!r} (services: {known}); "
            f"pass it as PipelineContext({name}=...)"
        )
        raise AttributeError(msg)

    # -- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """The live state dict; prefer `get_state`/`set_state` from worker threads."""
        return self._state

    def get_state(self, key: str, default: Any = None) -> Any:
        """The state value under `key`, or `default`."""
        return self._state.get(key, default)

    def set_state(self, key: str, value: Any) -> None:
        """Store `value` under `key` for downstream stages."""
        with self._lock:
            self._state[key] = value

    # -- metrics -------------------------------------------------------------------------------
    @property
    def metrics(self) -> dict[str, Any]:
        """The live metrics dict; `PipelineResult.metadata` starts as a copy of it."""
        return self._metrics

    def add_metric(self, name: str, value: Any) -> None:
        """Set metric `name` to `value`."""
        with self._lock:
            self._metrics[name] = value

    def increment_metric(self, name: str, amount: float = 1) -> None:
        """Add `amount` to metric `name` (missing counts as 0)."""
        with self._lock:
            self._metrics[name] = self._metrics.get(name, 0) + amount

    def metrics_snapshot(self) -> dict[str, Any]:
        """A consistent copy of the metrics."""
        with self._lock:
            return dict(self._metrics)

    # -- flow control ----------------------------------------------------------------------------
    def acquire(self, name: str, *, weight: int = 1) -> AbstractAsyncContextManager[Lease]:
        """Hold `weight` units of the executor's resource `name` for an `async with` body.

        ```python
        async with context.acquire("llm"):
            reply = await client.complete(prompt)
        ```

        Waits (on the run's clock) while the resource's concurrency or rate limit is reached;
        raises `CircuitOpenError` at once while its circuit breaker is open, and
        `ResourceError` outside a run or for a name the executor does not have. The wait is
        emitted as a `ResourceWaited` event. The resources of `StageDefinition(uses=...)` are
        already held around every attempt: use this for calls inside a stage instead.
        """
        from pipeline._flow import acquire_in_run  # flow control loads only when used

        return acquire_in_run(name, weight)

    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        retry: RetryConfig | None = None,
        uses: Mapping[str, int] | None = None,
        cache: bool = True,
    ) -> T: ...
    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        retry: RetryConfig | None = None,
        uses: Mapping[str, int] | None = None,
        cache: bool = True,
    ) -> T: ...
    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retry: RetryConfig | None = None,
        uses: Mapping[str, int] | None = None,
        cache: bool = True,
    ) -> Any:
        """Run one durable call `fn(*args)` inside a stage and return its result.

        The call has its own retry policy (`retry`) and resources (`uses`, held around each of
        its attempts); a sync `fn` runs in a worker thread. When the executor has a cache and
        `cache` is true, its successful result is stored under the stage id, `name` and a
        fingerprint of `args`, so a rerun after a crash or a failure replays finished steps
        instead of paying for them again (same rules as stage outputs: only successes, values
        that come back as the same type). Once its retries are spent, its last exception is
        raised into the stage's code. Each step appears in the stage's run record (`steps`)
        and as a `StepFinished` event.
        """
        from pipeline._steps import run_step  # durable steps load only when used

        return await run_step(self, name, fn, args, retry=retry, uses=uses, cache=cache)

    # -- cancellation --------------------------------------------------------------------------
    def cancel(self, reason: str = "cancelled through the context") -> None:
        """Request cancellation: the running pipeline cancels stages in flight and stops."""
        with self._lock:
            if self._cancel_reason is not None:
                return
            self._cancel_reason = reason
            listeners = list(self._cancel_listeners)
        for listener in listeners:
            listener(reason)

    def is_cancelled(self) -> bool:
        """True after `cancel()` or once `cancel_token.is_set()`."""
        if self._cancel_reason is not None:
            return True
        token = self.cancel_token
        return token is not None and token.is_set()

    @property
    def cancel_reason(self) -> str | None:
        """Why the context was cancelled, or None."""
        if self._cancel_reason is not None:
            return self._cancel_reason
        token = self.cancel_token
        if token is not None and token.is_set():
            return "cancel_token is set"
        return None

    def _add_cancel_listener(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Register `listener(reason)` for `cancel()`; returns a function that removes it."""
        with self._lock:
            self._cancel_listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._cancel_listeners:
                    self._cancel_listeners.remove(listener)

        return remove

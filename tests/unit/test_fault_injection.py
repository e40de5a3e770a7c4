"""Property test: random DAGs of faulty stages keep the failure and cache contract (SPEC 4, 6, 7).

Each stage fails in one way (failure result, exception, exception with a raising `__str__`,
stray `CancelledError`, timeout at a checkpoint, overrun without a checkpoint, returned
cancellation, flaky first attempt), under random retry, criticality, fail-fast and scheduling,
with a memory or SQLite cache, on asyncio and trio. Checked against `_fault_model`:

1. `execute` never raises (and never hangs: each run is bounded in real time);
2. statuses, errors, attempt counts and outputs match the model (a set of allowed statuses
   where fail-fast timing decides what was in flight);
3. the cache holds entries for succeeded stages only;
4. a rerun with every fault removed, on the same store, executes exactly the stages that did
   not succeed or whose input changed, serves the rest from the cache, and ends as a clean run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pipeline import (
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline.cache import MemoryCache, SQLiteCache
from pipeline.testing import FakeClock
from tests.unit._fault_model import (
    INITIAL,
    Behaviour,
    FaultDag,
    FlakyFirst,
    ModelRun,
    StageSpec,
    expected_calls,
    model_run,
    output_of,
    own_status,
)

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.cache import CacheStore

Backend = Literal["asyncio", "trio"]
StoreKind = Literal["memory", "sqlite"]

BEHAVIOURS: list[Behaviour] = [
    "ok",
    "ok",
    "ok",
    "fail",
    "raise",
    "unprintable",
    "stray_cancel",
    "block",
    "overrun",
    "cancel_ret",
    "flaky",
]
FLAKY_FIRST: list[FlakyFirst] = ["fail", "raise", "block"]
GENEROUS_TIMEOUT_MS = 10_000.0
"""A timeout on stages that should succeed: far beyond any run's virtual time."""
GUARD_S = 10.0
"""Real seconds one run may take before it counts as a hang."""
NAME = "faults"
_db_numbers = itertools.count()


@st.composite
def fault_dags(draw: st.DrawFn, backend: Backend) -> FaultDag:
    # trio has no CancelledError a stage could raise by itself: it draws the other behaviours
    behaviours = [b for b in BEHAVIOURS if backend == "asyncio" or b != "stray_cancel"]
    specs: list[StageSpec] = []
    for i in range(draw(st.integers(min_value=1, max_value=8))):
        inputs: list[int] = []
        if i:
            inputs = draw(
                st.lists(st.integers(min_value=0, max_value=i - 1), unique=True, max_size=3)
            )
        behaviour = draw(st.sampled_from(behaviours))
        flaky_first = draw(st.sampled_from(FLAKY_FIRST))
        needs_timeout = behaviour in ("block", "overrun") or (
            behaviour == "flaky" and flaky_first == "block"
        )
        # An overrun moves the virtual time every stage sees, as CPU-bound work moves real
        # time: a timeout no jump can reach keeps the stages that should succeed deterministic.
        timeout: float | None = draw(
            st.sampled_from([30.0, 50.0] if needs_timeout else [None, GENEROUS_TIMEOUT_MS])
        )
        specs.append(
            StageSpec(
                index=i,
                inputs=tuple(inputs),
                behaviour=behaviour,
                flaky_first=flaky_first,
                max_attempts=draw(st.integers(min_value=1, max_value=3)),
                initial_delay_ms=draw(st.sampled_from([0.0, 1.0, 10.0])),
                critical=draw(st.booleans()),
                timeout_ms=timeout,
                delay_ms=draw(st.sampled_from([0.0, 5.0, 20.0])),
            )
        )
    return FaultDag(
        stages=tuple(specs),
        fail_fast=draw(st.booleans()),
        scheduling=draw(st.sampled_from(["waves", "eager"])),
    )


class UnprintableError(Exception):
    """An exception whose text cannot be taken."""

    def __str__(self) -> str:
        raise ValueError("no text for you")


def overrun(clock: FakeClock, seconds: float) -> None:
    """Let `seconds` of virtual time pass while the stage holds the loop (no checkpoint).

    FakeClock has no synchronous jump (`advance()` checkpoints, which would make this the
    "block at a checkpoint" case), so this sets its time directly. As with real time passing
    during CPU-bound work, no timer fires now; overdue ones fire when the loop next idles.
    """
    clock._now += seconds


@dataclass
class Recorder:
    """What the stages of one run did."""

    clock: FakeClock
    calls: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, list[Any]] = field(default_factory=dict)


class FaultStage:
    """Behaves as its spec says; counts calls and records inputs."""

    def __init__(self, spec: StageSpec, rec: Recorder) -> None:
        self.spec = spec
        self.rec = rec
        self.name = spec.sid

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        spec, rec, sid = self.spec, self.rec, self.spec.sid
        attempt = rec.calls[sid] = rec.calls.get(sid, 0) + 1
        rec.inputs.setdefault(sid, []).append(input)
        if spec.behaviour == "flaky" and attempt > 1:
            # No checkpoint: another stage's overrun cannot eat this attempt's short timeout.
            return StageResult.success(output_of(spec.index, input))
        if spec.delay_ms:
            await rec.clock.sleep(spec.delay_ms / 1000)
        else:
            await anyio.lowlevel.checkpoint()
        behaviour: Behaviour = spec.behaviour
        if behaviour == "flaky":
            behaviour = spec.flaky_first
        value = output_of(spec.index, input)
        if behaviour == "fail":
            return StageResult.failure(f"{sid} failed")
        if behaviour == "raise":
            raise RuntimeError(f"{sid} raised")
        if behaviour == "unprintable":
            raise UnprintableError
        if behaviour == "stray_cancel":
            import asyncio  # noqa: TID251  # a CancelledError the executor did not cause

            raise asyncio.CancelledError(f"{sid}: stray")
        if behaviour == "block":
            assert spec.timeout_ms is not None
            await rec.clock.sleep(spec.timeout_ms * 4 / 1000)
        elif behaviour == "overrun":
            assert spec.timeout_ms is not None
            overrun(rec.clock, spec.timeout_ms * 2 / 1000)
        elif behaviour == "cancel_ret":
            return StageResult.cancelled(f"{sid} gave up")
        return StageResult.success(value)


def build(dag: FaultDag, rec: Recorder) -> PipelineDefinition:
    return PipelineDefinition(
        NAME,
        [
            StageDefinition(
                s.sid,
                FaultStage(s, rec),
                inputs=list(s.input_ids),
                critical=s.critical,
                timeout_ms=s.timeout_ms,
                retry_config=RetryConfig(
                    max_attempts=s.max_attempts, initial_delay_ms=s.initial_delay_ms
                ),
            )
            for s in dag.stages
        ],
        fail_fast=dag.fail_fast,
    )


async def run_guarded(dag: FaultDag, store: CacheStore, rec: Recorder) -> PipelineResult:
    executor = PipelineExecutor(scheduling=dag.scheduling, clock=rec.clock, cache=store)
    pipeline = build(dag, rec)
    guard: anyio.CancelScope | None = None
    try:
        with anyio.fail_after(GUARD_S) as guard:
            return await executor.execute(pipeline, INITIAL)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        if guard is not None and guard.cancelled_caught:
            raise AssertionError(f"(1) the run hung for {GUARD_S} s of real time") from exc
        raise AssertionError(f"(1) execute raised {type(exc).__name__}") from exc


FAILURE_TEXT: dict[str, str] = {
    "raise": "RuntimeError",
    "unprintable": "UnprintableError",
    "stray_cancel": "CancelledError",
    "block": "timeout",
    "overrun": "timeout",
}


def check_ran_to_end(spec: StageSpec, result: PipelineResult, calls: int) -> None:
    """A stage that ended by its own doing: attempts and error text."""
    sid = spec.sid
    res, record = result.stage_results[sid], result.stage_runs[sid]
    n = expected_calls(spec)
    assert calls == n, f"{sid}: execute called {calls} times, expected {n}"
    assert record.attempts == n, f"{sid}: record says {record.attempts} attempts, expected {n}"
    if res.status is StageStatus.SUCCEEDED:
        return
    error = res.error
    assert isinstance(error, str), f"{sid}: no error text"
    if spec.behaviour == "cancel_ret":
        assert f"{sid} gave up" in error, f"{sid}: {error!r} lost the returned reason"
        return
    if n > 1:
        assert error.startswith(f"Failed after {n} attempts"), f"{sid}: {error!r}"
    kind = spec.flaky_first if spec.behaviour == "flaky" else spec.behaviour
    needle = FAILURE_TEXT.get(kind, f"{sid} failed")
    assert needle.lower() in error.lower(), f"{sid}: {error!r} should contain {needle!r}"


def check_first_run(dag: FaultDag, m: ModelRun, result: PipelineResult, rec: Recorder) -> None:
    ids = [s.sid for s in dag.stages]
    statuses = {sid: r.status for sid, r in result.stage_results.items()}
    assert sorted(statuses) == sorted(ids)
    assert sorted(result.stage_runs) == sorted(ids)
    for sid in ids:
        assert result.stage_runs[sid].status is statuses[sid]
        assert not result.stage_runs[sid].cached, f"{sid}: cache hit on an empty store"
    succeeded = {sid for sid in ids if statuses[sid] is StageStatus.SUCCEEDED}
    assert set(result.outputs) == succeeded
    lists = {
        StageStatus.FAILED: result.failed_stages,
        StageStatus.SKIPPED: result.skipped_stages,
        StageStatus.CANCELLED: result.cancelled_stages,
    }
    for status, listed in lists.items():
        assert sorted(listed) == sorted(sid for sid in ids if statuses[sid] is status)

    ended_by_itself: set[str] = set()
    for s in dag.stages:
        sid = s.sid
        got = statuses[sid]
        res, calls = result.stage_results[sid], rec.calls.get(sid, 0)
        assert got in m.allowed[sid], (
            f"(2) {sid} ({s!r}) is {got.value}, model allows "
            f"{sorted(a.value for a in m.allowed[sid])}; error={res.error!r}"
        )
        assert calls <= expected_calls(s), f"{sid}: called {calls} times"
        for seen in rec.inputs.get(sid, []):
            assert seen == m.inputs[sid], f"{sid}: input {seen!r}, model {m.inputs[sid]!r}"
        own = (
            got is StageStatus.CANCELLED
            and s.behaviour == "cancel_ret"
            and f"{sid} gave up" in (res.error or "")
        )
        if got is StageStatus.SUCCEEDED:
            assert result.outputs[sid] == m.outputs[sid], f"{sid}: output differs from model"
            check_ran_to_end(s, result, calls)
        elif got is StageStatus.FAILED or own:
            assert got is own_status(s)
            check_ran_to_end(s, result, calls)
            ended_by_itself.add(sid)
        elif got is StageStatus.SKIPPED:
            assert res.metadata.get("skip_reason") == "upstream failed", f"{sid}: {res!r}"
            assert calls == 0
        else:  # cancelled by the run (fail-fast)
            error = res.error or ""
            never_started = sid in m.upstream_failed or result.stage_runs[sid].started_ms is None
            if never_started:
                assert calls == 0, f"{sid} ran but is reported never started"
                assert "not started" in error, f"{sid}: {error!r} should say 'not started'"
            if calls:
                assert "not started" not in error, f"{sid} ran; {error!r} says 'not started'"

    if m.timing_dependent:
        assert result.success is False
        stopped_by = ended_by_itself & m.stoppers
        assert stopped_by, "(2) fail-fast stopped the run but no critical stage reports why"
    else:
        assert result.success is m.success, f"(2) success={result.success}, model {m.success}"


async def check_cache_holds(
    store: CacheStore, result: PipelineResult, extra: dict[str, int] | None = None
) -> None:
    """(3): each succeeded stage has its entry (plus `extra`), nothing else is stored."""
    more = extra or {}
    results = result.stage_results
    expected = {
        sid: int(res.status is StageStatus.SUCCEEDED) + more.get(sid, 0)
        for sid, res in results.items()
    }
    found = {sid: await store.count(sid) for sid in expected}
    statuses = {sid: res.status.value for sid, res in results.items()}
    assert found == expected, f"(3) entries per stage {found}, expected {expected}; {statuses}"
    assert await store.count() == sum(expected.values())


async def scenario(dag: FaultDag, store: CacheStore) -> None:
    first = model_run(dag)
    rec1 = Recorder(FakeClock())
    result1 = await run_guarded(dag, store, rec1)
    check_first_run(dag, first, result1, rec1)
    await check_cache_holds(store, result1)

    clean_dag = dag.clean()
    clean = model_run(clean_dag)
    rec2 = Recorder(FakeClock())
    result2 = await run_guarded(clean_dag, store, rec2)
    changed: dict[str, int] = {}
    for s in dag.stages:
        sid = s.sid
        succeeded = result1.stage_results[sid].status is StageStatus.SUCCEEDED
        differs = succeeded and first.inputs[sid] != clean.inputs[sid]
        executes = not succeeded or differs
        changed[sid] = int(differs)
        calls = rec2.calls.get(sid, 0)
        assert calls == int(executes), (
            f"(4) rerun executed {sid} {calls} times; first run "
            f"{result1.stage_results[sid].status.value}, input changed: {differs}"
        )
        assert result2.stage_runs[sid].cached is (not executes), f"(4) {sid} cached flag"
    assert result2.success, f"(4) rerun failed: {result2.failed_stages} {result2.error!r}"
    assert result2.outputs == clean.outputs, "(4) rerun outputs differ from a clean run"
    # a succeeded stage whose input changed keeps its old entry next to the new one
    await check_cache_holds(store, result2, {sid: n for sid, n in changed.items() if n})


def make_store(kind: StoreKind, tmp_path: Path) -> CacheStore:
    if kind == "memory":
        return MemoryCache()
    return SQLiteCache(tmp_path / f"c{next(_db_numbers)}.db")


@pytest.mark.timeout(120)  # passing takes seconds; shrinking a failure takes longer
@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_faulty_dags_keep_the_failure_and_cache_contract(
    backend: Backend, store_kind: StoreKind, tmp_path: Path, data: st.DataObject
) -> None:
    dag = data.draw(fault_dags(backend), label="dag")
    store = make_store(store_kind, tmp_path)

    async def main() -> None:
        try:
            await scenario(dag, store)
        finally:
            await store.aclose()

    anyio.run(main, backend=backend)

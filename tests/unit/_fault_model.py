"""Reference model for tests/unit/test_fault_injection.py: what SPEC 4, 6 and 7 promise.

A random DAG's stages each have one fault behaviour (deterministic per attempt, except "flaky").
The model says, for one run, which status and output each stage must end with, or (under
fail-fast, where timing decides what was in flight) which statuses are allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from pipeline import StageStatus

Behaviour = Literal[
    "ok",  # returns output_of(its input)
    "fail",  # returns StageResult.failure(...)
    "raise",  # raises RuntimeError
    "unprintable",  # raises an exception whose __str__ raises
    "stray_cancel",  # raises asyncio.CancelledError nobody asked for (asyncio only)
    "block",  # sleeps on the FakeClock past timeout_ms (a checkpoint: the deadline cuts it)
    "overrun",  # moves virtual time past timeout_ms without a checkpoint, then returns a value
    "cancel_ret",  # returns StageResult.cancelled(...)
    "flaky",  # attempt 1 behaves as `flaky_first`, later attempts as "ok"
]
FlakyFirst = Literal["fail", "raise", "block"]
FAILING: frozenset[Behaviour] = frozenset(
    {"fail", "raise", "unprintable", "stray_cancel", "block", "overrun"}
)
INITIAL = 1
"""The pipeline's initial input."""
_MOD = 2_147_483_647


@dataclass(frozen=True)
class StageSpec:
    """One stage of a random DAG and how it behaves."""

    index: int
    inputs: tuple[int, ...]
    behaviour: Behaviour
    flaky_first: FlakyFirst
    max_attempts: int
    initial_delay_ms: float
    critical: bool
    timeout_ms: float | None
    delay_ms: float
    """Virtual time the stage sleeps (a checkpoint) before it behaves; 0: one plain checkpoint."""

    @property
    def sid(self) -> str:
        """The stage id."""
        return f"s{self.index}"

    @property
    def input_ids(self) -> tuple[str, ...]:
        """The ids of its inputs, in declared order."""
        return tuple(f"s{j}" for j in self.inputs)

    def __repr__(self) -> str:
        what = self.behaviour if self.behaviour != "flaky" else f"flaky({self.flaky_first})"
        deps = ",".join(self.input_ids)
        crit = "crit" if self.critical else "soft"
        return (
            f"{self.sid}<-[{deps}] {what} x{self.max_attempts} {crit}"
            f" timeout={self.timeout_ms} delay={self.delay_ms} backoff={self.initial_delay_ms}"
        )


@dataclass(frozen=True)
class FaultDag:
    """A random pipeline: stages in topological order, fail-fast and the scheduling policy."""

    stages: tuple[StageSpec, ...]
    fail_fast: bool
    scheduling: Literal["waves", "eager"]

    def clean(self) -> FaultDag:
        """The same DAG with every fault removed (every stage returns its value)."""
        return replace(self, stages=tuple(replace(s, behaviour="ok") for s in self.stages))

    def __repr__(self) -> str:
        rows = "".join(f"\n    {s!r}," for s in self.stages)
        return f"FaultDag(fail_fast={self.fail_fast}, {self.scheduling},{rows}\n)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints a failing example with this (one line per stage)."""
        printer.text(repr(self))


def _digest(value: Any) -> int:
    if value is None:
        return 7
    if isinstance(value, int):
        return value
    assert isinstance(value, dict)
    acc = 17
    for key, item in value.items():
        acc = (acc * 1_000_003 + int(key[1:]) * 101 + _digest(item)) % _MOD
    return acc


def output_of(index: int, value: Any) -> int:
    """What stage `index` returns for input `value` (an int, None or a dict of those)."""
    return (_digest(value) * 48_271 + index * 7_919 + 1) % _MOD


def succeeds(spec: StageSpec) -> bool:
    """Whether the stage succeeds once it runs to its end (with retries)."""
    return spec.behaviour == "ok" or (spec.behaviour == "flaky" and spec.max_attempts >= 2)


def own_status(spec: StageSpec) -> StageStatus:
    """How the stage ends when it runs to its end."""
    if succeeds(spec):
        return StageStatus.SUCCEEDED
    if spec.behaviour == "cancel_ret":
        return StageStatus.CANCELLED
    return StageStatus.FAILED


def expected_calls(spec: StageSpec) -> int:
    """How often `execute` is called when the stage runs to its end."""
    if spec.behaviour == "ok":
        return 1
    if spec.behaviour == "flaky":
        return min(2, spec.max_attempts)
    if spec.behaviour == "cancel_ret":
        return 1  # a returned cancellation is not retried
    return spec.max_attempts


def stops_run(spec: StageSpec) -> bool:
    """A critical stage that ends failed or cancelled by its own doing."""
    return spec.critical and own_status(spec) is not StageStatus.SUCCEEDED


@dataclass(frozen=True)
class ModelRun:
    """The model's view of one run.

    `status` is exact unless `timing_dependent`; then `allowed` holds each stage's possible
    statuses. `inputs` and `outputs` hold what a stage gets and returns whenever it runs.
    """

    status: dict[str, StageStatus]
    allowed: dict[str, frozenset[StageStatus]]
    inputs: dict[str, Any]
    outputs: dict[str, int]
    upstream_failed: frozenset[str]
    """Stages skipped (or, under fail-fast, never started) because an ancestor stopped the run."""
    stoppers: frozenset[str]
    """Stages that end failed/cancelled, are critical and run (no ancestor of theirs stops)."""
    timing_dependent: bool
    success: bool


def model_run(dag: FaultDag) -> ModelRun:
    """Evaluate SPEC 4/7 on `dag` (topological order is index order)."""
    by_id = {s.sid: s for s in dag.stages}
    status: dict[str, StageStatus] = {}
    inputs: dict[str, Any] = {}
    outputs: dict[str, int] = {}
    blocked: set[str] = set()
    stoppers: set[str] = set()
    for s in dag.stages:
        if any(d in blocked for d in s.input_ids):
            status[s.sid] = StageStatus.SKIPPED
            blocked.add(s.sid)
            continue
        if not s.inputs:
            value: Any = INITIAL
        elif len(s.inputs) == 1:
            value = outputs.get(s.input_ids[0])
        else:
            value = {d: outputs.get(d) for d in s.input_ids}
        inputs[s.sid] = value
        status[s.sid] = own_status(s)
        if succeeds(s):
            outputs[s.sid] = output_of(s.index, value)
        elif stops_run(s):
            blocked.add(s.sid)
            stoppers.add(s.sid)
        # a non-critical failure or cancel-return: dependents get None, the run goes on
    upstream = frozenset(sid for sid in blocked if sid not in stoppers)
    timing = dag.fail_fast and bool(stoppers)
    allowed: dict[str, frozenset[StageStatus]] = {}
    for sid, st in status.items():
        if not timing:
            allowed[sid] = frozenset({st})
        elif sid in upstream:
            allowed[sid] = frozenset({StageStatus.CANCELLED})  # never started
        else:
            allowed[sid] = frozenset({st, StageStatus.CANCELLED})
    if timing:  # downstream stages are "not started", not "upstream failed"
        for sid in upstream:
            status[sid] = StageStatus.CANCELLED
    assert set(by_id) == set(status)
    return ModelRun(
        status=status,
        allowed=allowed,
        inputs=inputs,
        outputs=outputs,
        upstream_failed=upstream,
        stoppers=frozenset(stoppers),
        timing_dependent=timing,
        success=not stoppers,
    )

"""Property test: random weighted acquisitions never break a `Resource`'s limits.

Random limits and random requests (arrival, weight, holding time, and sometimes a deadline on
the wait) run concurrently on a `FakeClock`; each grant is logged in virtual time. Checked:
the weight held never exceeds `max_in_flight`; over any window the weight granted never exceeds
`burst + window * rate / per_s`; grants follow arrival order; `wait_s` is the wait; afterwards
nothing is left taken. And every grant happens exactly when a small FIFO reference model of
the two limits says it should, so the resource never makes anyone wait longer than it must.
"""

from __future__ import annotations

import itertools
import math
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio
import pytest
from hypothesis import given, settings, strategies as st

from pipeline.resources import Lease, Resource
from pipeline.testing import FakeClock
from tests.unit._support import BACKENDS, Backend

GUARD_S = 20.0
"""Real seconds one example may take before it counts as hung."""

TOLERANCE_S = 1e-6
"""Virtual-time slack when comparing float timings."""


@dataclass(frozen=True)
class Request:
    at: float
    """Arrival, in virtual seconds."""
    weight: int
    hold: float
    """Seconds the grant is held."""
    give_up: float | None
    """Seconds after arriving when the wait is cancelled, if still waiting."""


@dataclass(frozen=True)
class Limits:
    max_in_flight: int | None
    rate: float | None
    per_s: float
    burst: int | None

    def build(self) -> Resource:
        return Resource(
            max_in_flight=self.max_in_flight, rate=self.rate, per_s=self.per_s, burst=self.burst
        )


@dataclass
class Arrival:
    seq: int
    request: Request
    arrived_at: float
    granted_at: float | None = None
    wait_s: float | None = None


@st.composite
def limits(draw: st.DrawFn) -> Limits:
    max_in_flight = draw(st.none() | st.integers(min_value=1, max_value=4))
    rate = draw(st.none() | st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0, 10.0]))
    if max_in_flight is None and rate is None:
        rate = 2.0
    per_s = draw(st.sampled_from([0.5, 1.0, 2.0, 3.0]))
    burst = draw(st.none() | st.integers(min_value=1, max_value=4)) if rate is not None else None
    return Limits(max_in_flight, rate, per_s, burst)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Limits, list[Request]]:
    limit = draw(limits())
    heaviest = int(min(4, limit.build().capacity))
    request = st.builds(
        Request,
        at=st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]),
        weight=st.integers(min_value=1, max_value=heaviest),
        hold=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5]),
        give_up=st.none() | st.none() | st.sampled_from([0.1, 0.3, 0.7, 1.3]),
    )
    return limit, draw(st.lists(request, min_size=1, max_size=10))


async def run(limit: Limits, requests: list[Request]) -> tuple[list[Arrival], list[str], float]:
    """Run every request concurrently; return the arrivals, limit violations and final wait."""
    resource = limit.build()
    clock = FakeClock()
    arrivals: list[Arrival] = []
    violations: list[str] = []
    holding = 0

    async def one(request: Request) -> None:
        nonlocal holding
        await clock.sleep(request.at)
        arrival = Arrival(len(arrivals), request, clock.now())
        arrivals.append(arrival)  # no checkpoint from here to joining the queue
        deadline = math.inf if request.give_up is None else request.give_up
        async with AsyncExitStack() as stack:
            lease: Lease | None = None
            with clock.deadline_scope(deadline):
                lease = await stack.enter_async_context(
                    resource.acquire(request.weight, clock=clock, name="svc")
                )
            if lease is None:
                return
            arrival.granted_at = clock.now()
            arrival.wait_s = lease.wait_s
            holding += request.weight
            if limit.max_in_flight is not None and holding > limit.max_in_flight:
                violations.append(f"{holding} held at {clock.now()}")
            await clock.sleep(request.hold)
            holding -= request.weight

    with anyio.fail_after(GUARD_S):
        async with clock, anyio.create_task_group() as tg:
            for request in requests:
                tg.start_soon(one, request)
            # once all is done and the bucket refilled, the whole capacity is free at once (the
            # requests may have borrowed up to their total weight from the bucket's future)
            owed = 0.0 if limit.rate is None else sum(r.weight for r in requests) * limit.per_s
            await clock.sleep(100.0 + owed / (limit.rate or 1.0))
            async with resource.acquire(
                int(min(4, resource.capacity)), clock=clock, name="svc"
            ) as final:
                return arrivals, violations, final.wait_s
    raise AssertionError("unreachable")  # pragma: no cover


def expected_grants(limit: Limits, arrivals: list[Arrival]) -> dict[int, float | None]:
    """FIFO reference: when each arrival is granted (None: it gave up first)."""
    interval = 0.0 if limit.rate is None else limit.per_s / limit.rate
    burst = limit.burst if limit.burst is not None else max(limit.rate or 1.0, 1.0)
    tat = -math.inf  # when the bucket is full again (GCRA)
    held: list[tuple[float, float, int]] = []  # (granted, released, weight)
    floor = -math.inf  # nobody is granted before the one ahead was granted or left
    result: dict[int, float | None] = {}
    for arrival in sorted(arrivals, key=lambda a: a.seq):
        request = arrival.request
        start = max(arrival.arrived_at, floor)
        at = start
        if limit.max_in_flight is not None:
            for moment in sorted({start} | {r for _, r, _ in held if r > start}):
                in_use = sum(w for g, r, w in held if g <= moment < r)
                if in_use + request.weight <= limit.max_in_flight:
                    at = moment
                    break
        if limit.rate is not None:
            at = max(at, tat + (request.weight - burst) * interval)
        if request.give_up is not None and at > arrival.arrived_at + request.give_up:
            result[arrival.seq] = None
            floor = max(floor, arrival.arrived_at + request.give_up)
            continue
        result[arrival.seq] = at
        if limit.rate is not None:
            tat = max(tat, at) + request.weight * interval
        held.append((at, at + request.hold, request.weight))
        floor = at
    return result


def ambiguous(arrivals: list[Arrival], expected: dict[int, float | None]) -> bool:
    """A wait given up at the very moment it would be granted: either outcome is right."""
    for arrival in arrivals:
        if arrival.request.give_up is None:
            continue
        deadline = arrival.arrived_at + arrival.request.give_up
        granted = expected[arrival.seq]
        if granted is not None and abs(granted - deadline) < TOLERANCE_S:
            return True
    return False


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(scenario=scenarios())
def test_random_acquisitions_keep_every_limit(
    backend: Backend, scenario: tuple[Limits, list[Request]]
) -> None:
    limit, requests = scenario
    arrivals, violations, final_wait = anyio.run(run, limit, requests, backend=backend)

    assert violations == []
    assert final_wait == 0.0  # nothing was left taken: no slot, no token

    # (seq, arrived, granted, wait_s, weight) of every granted arrival, in arrival order
    granted = [
        (a.seq, a.arrived_at, a.granted_at, a.wait_s, a.request.weight)
        for a in sorted(arrivals, key=lambda a: a.seq)
        if a.granted_at is not None and a.wait_s is not None
    ]
    for _, arrived, at, wait_s, _ in granted:
        assert wait_s == pytest.approx(at - arrived)
    # FIFO: a later arrival is never granted before an earlier one
    times = [at for _, _, at, _, _ in granted]
    assert all(x <= y for x, y in itertools.pairwise(times)), times

    if limit.rate is not None:
        burst = limit.burst if limit.burst is not None else max(limit.rate, 1.0)
        per_second = limit.rate / limit.per_s
        events = sorted((at, weight) for _, _, at, _, weight in granted)
        for i, (start, _) in enumerate(events):
            taken = 0
            for end, weight in events[i:]:
                taken += weight
                allowed = burst + (end - start) * per_second
                assert taken <= allowed + 1e-6, f"{taken} units in [{start}, {end}]"

    expected = expected_grants(limit, arrivals)
    if not ambiguous(arrivals, expected):
        actual = {a.seq: a.granted_at for a in arrivals}
        assert actual.keys() == expected.keys()
        for seq, want in expected.items():
            got = actual[seq]
            if want is None:
                assert got is None, (seq, got)
            else:
                assert got == pytest.approx(want, abs=TOLERANCE_S), (seq, got, want)

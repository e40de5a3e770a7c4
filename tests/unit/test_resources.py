"""Resource and CircuitBreaker: limits, fairness, virtual timings, breaker states, cancellation.

Time is a `FakeClock` throughout: every timing below is exact virtual time, and no test waits.
"""

from __future__ import annotations

import math
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline.clock import SystemClock
from pipeline.errors import CircuitOpenError, DefinitionError
from pipeline.resources import BreakerState, CircuitBreaker, Resource
from pipeline.testing import FakeClock
from tests.unit._support import on_both_backends

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

GUARD_S = 10.0
"""Real seconds any scenario may take before it counts as hung."""


@asynccontextmanager
async def running(clock: FakeClock) -> AsyncIterator[None]:
    """Enter `clock` (so virtual time moves), under a real-time guard."""
    with anyio.fail_after(GUARD_S):
        async with clock:
            yield


async def grab(
    resource: Resource,
    clock: FakeClock,
    log: list[tuple[str, float]],
    tag: str,
    *,
    weight: int = 1,
    at: float = 0.0,
    hold: float = 0.0,
) -> None:
    """Arrive at virtual time `at`, acquire, log `(tag, grant time)`, hold for `hold` seconds."""
    await clock.sleep(at)
    async with resource.acquire(weight, clock=clock, name="svc"):
        log.append((tag, clock.now()))
        await clock.sleep(hold)


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read afresh (mypy would narrow `breaker.state` across calls)."""
    return breaker.state


def grants(log: list[tuple[str, float]]) -> dict[str, float]:
    return dict(log)


# --- rate: exact virtual timings ------------------------------------------------------------


@on_both_backends
async def test_hundred_acquisitions_at_10_per_s_take_exactly_9_9_virtual_seconds() -> None:
    clock = FakeClock()
    resource = Resource(rate=10, burst=1)
    log: list[tuple[str, float]] = []
    started = time.perf_counter()
    async with running(clock), anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(grab, resource, clock, log, f"c{i}")
    assert clock.now() == 9.9
    assert sorted(t for _, t in log) == pytest.approx([i / 10 for i in range(100)], abs=1e-12)
    waits = [s for s in clock.sleeps if s > 0]
    assert waits == pytest.approx([0.1] * 99)  # one sleep per wait: nothing spins
    assert time.perf_counter() - started < GUARD_S / 2  # virtual seconds, not real ones


@on_both_backends
async def test_one_task_acquiring_in_a_loop_is_paced_at_the_rate() -> None:
    clock = FakeClock()
    resource = Resource(rate=10, burst=1)
    waits = []
    async with running(clock):
        for _ in range(100):
            async with resource.acquire(clock=clock) as lease:
                waits.append(lease.wait_s)
    assert clock.now() == 9.9
    assert waits[0] == 0.0
    assert waits[1:] == pytest.approx([0.1] * 99)


@on_both_backends
async def test_a_full_bucket_grants_a_burst_at_once_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    resource = Resource(rate=10, burst=5)
    log: list[tuple[str, float]] = []
    async with running(clock), anyio.create_task_group() as tg:
        for i in range(7):
            tg.start_soon(grab, resource, clock, log, f"c{i}")
    assert sorted(t for _, t in log) == pytest.approx([0, 0, 0, 0, 0, 0.1, 0.2])


@on_both_backends
async def test_an_idle_bucket_refills_only_up_to_its_burst() -> None:
    clock = FakeClock()
    resource = Resource(rate=1, burst=2)
    log: list[tuple[str, float]] = []
    async with running(clock), anyio.create_task_group() as tg:
        tg.start_soon(partial(grab, resource, clock, log, "first", weight=2))
        for i in range(3):  # ten idle seconds later the bucket holds 2, not 12
            tg.start_soon(partial(grab, resource, clock, log, f"late{i}", at=10.0))
    assert sorted(t for _, t in log) == pytest.approx([0, 10, 10, 11])


@on_both_backends
async def test_a_weight_takes_that_many_tokens() -> None:
    clock = FakeClock()
    resource = Resource(rate=2, burst=3)
    log: list[tuple[str, float]] = []
    async with running(clock), anyio.create_task_group() as tg:
        tg.start_soon(partial(grab, resource, clock, log, "a", weight=3))
        tg.start_soon(partial(grab, resource, clock, log, "b", weight=3, at=0.25))
        tg.start_soon(partial(grab, resource, clock, log, "c", weight=1, at=0.5))
    # b needs 3 tokens at 2/s: 1.5 s; c then needs 1 more: 0.5 s after b
    assert grants(log) == pytest.approx({"a": 0.0, "b": 1.5, "c": 2.0})


@on_both_backends
async def test_rate_counts_units_per_per_s_seconds() -> None:
    clock = FakeClock()
    resource = Resource(rate=3, per_s=60, burst=1)  # 3 a minute: one every 20 s
    log: list[tuple[str, float]] = []
    async with running(clock), anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(grab, resource, clock, log, f"c{i}")
    assert sorted(t for _, t in log) == pytest.approx([0, 20, 40])


@on_both_backends
async def test_burst_defaults_to_the_rate() -> None:
    clock = FakeClock()
    resource = Resource(rate=4)
    log: list[tuple[str, float]] = []
    async with running(clock), anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(grab, resource, clock, log, f"c{i}")
    assert resource.burst == 4
    assert sorted(t for _, t in log) == pytest.approx([0, 0, 0, 0, 0.25])


# --- in-flight limit and fairness ------------------------------------------------------------


@on_both_backends
async def test_max_in_flight_limits_concurrent_holders() -> None:
    clock = FakeClock()
    resource = Resource(max_in_flight=2)
    holding = peak = 0
    log: list[float] = []

    async def hold_one() -> None:
        nonlocal holding, peak
        async with resource.acquire(clock=clock):
            holding += 1
            peak = max(peak, holding)
            log.append(clock.now())
            await clock.sleep(1.0)
            holding -= 1

    async with running(clock), anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(hold_one)
    assert peak == 2
    assert sorted(log) == [0, 0, 1, 1, 2]
    assert clock.now() == 3.0


@on_both_backends
async def test_a_heavy_waiter_at_the_head_is_not_overtaken_by_light_ones() -> None:
    clock = FakeClock()
    resource = Resource(max_in_flight=3)
    log: list[tuple[str, float]] = []
    async with running(clock), anyio.create_task_group() as tg:
        tg.start_soon(partial(grab, resource, clock, log, "a", weight=2, hold=1.0))
        tg.start_soon(partial(grab, resource, clock, log, "big", weight=3, at=0.25, hold=1.0))
        # one slot is free from 0.5 on, but `big` is first in line
        tg.start_soon(partial(grab, resource, clock, log, "small", weight=1, at=0.5))
    assert grants(log) == {"a": 0.0, "big": 1.0, "small": 2.0}


@on_both_backends
async def test_token_waiters_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    resource = Resource(rate=1, burst=3)
    log: list[tuple[str, float]] = []
    async with running(clock), anyio.create_task_group() as tg:
        tg.start_soon(partial(grab, resource, clock, log, "drain", weight=3))
        tg.start_soon(partial(grab, resource, clock, log, "big", weight=3, at=0.1))
        tg.start_soon(partial(grab, resource, clock, log, "small", weight=1, at=0.2))
    assert grants(log) == pytest.approx({"drain": 0.0, "big": 3.0, "small": 4.0})


@on_both_backends
async def test_both_limits_together() -> None:
    clock = FakeClock()
    resource = Resource(max_in_flight=1, rate=10, burst=10)
    log: list[tuple[str, float]] = []
    async with running(clock), anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(partial(grab, resource, clock, log, f"c{i}", hold=0.5))
    # tokens are plentiful; the single slot paces them
    assert sorted(t for _, t in log) == [0.0, 0.5, 1.0]


@on_both_backends
async def test_wait_s_is_the_virtual_wait() -> None:
    clock = FakeClock()
    resource = Resource(max_in_flight=1)
    waits: dict[str, float] = {}

    async def timed(tag: str, at: float) -> None:
        await clock.sleep(at)
        async with resource.acquire(clock=clock) as lease:
            waits[tag] = lease.wait_s
            assert lease.weight == 1
            await clock.sleep(2.0)

    async with running(clock), anyio.create_task_group() as tg:
        tg.start_soon(timed, "first", 0.0)
        tg.start_soon(timed, "second", 0.5)
    assert waits == {"first": 0.0, "second": 1.5}


# --- capacity and argument checks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "capacity"),
    [
        ({}, math.inf),
        ({"max_in_flight": 4}, 4),
        ({"rate": 10}, 10),
        ({"rate": 10, "burst": 2}, 2),
        ({"rate": 0.5}, 1),  # a bucket is at least one unit, or nothing could be granted
        ({"max_in_flight": 3, "rate": 10}, 3),
        ({"max_in_flight": 8, "rate": 100, "burst": 5}, 5),
    ],
)
def test_capacity_is_the_largest_grantable_weight(kwargs: dict[str, Any], capacity: float) -> None:
    assert Resource(**kwargs).capacity == capacity


def test_a_weight_above_capacity_is_rejected_naming_resource_and_numbers() -> None:
    resource = Resource(max_in_flight=4, rate=10, burst=3)
    with pytest.raises(ValueError, match="above") as info:
        resource.acquire(5, clock=FakeClock(), name="llm")
    assert isinstance(info.value, DefinitionError)
    assert info.value.owner == "Resource 'llm'"
    assert info.value.field == "weight"
    assert "5" in info.value.problem
    assert "3" in info.value.problem


@pytest.mark.parametrize("weight", [0, -1, True, 1.0, "1"])
def test_a_weight_must_be_a_positive_int(weight: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        Resource().acquire(weight, clock=FakeClock(), name="llm")
    assert info.value.field == "weight"
    assert "llm" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": -2}, "max_in_flight"),
        ({"max_in_flight": True}, "max_in_flight"),
        ({"max_in_flight": 2.0}, "max_in_flight"),
        ({"rate": 0}, "rate"),
        ({"rate": -1.0}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": True}, "rate"),
        ({"rate": "10"}, "rate"),
        ({"rate": 1, "per_s": 0}, "per_s"),
        ({"rate": 1, "per_s": math.inf}, "per_s"),
        ({"rate": 1, "per_s": False}, "per_s"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "burst": math.nan}, "burst"),
        ({"rate": 1, "burst": 0.5}, "burst"),
        ({"rate": 1, "burst": True}, "burst"),
        ({"burst": 3}, "burst"),
        ({"breaker": "yes"}, "breaker"),
    ],
)
def test_resource_arguments_are_checked(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        Resource(**kwargs)
    assert info.value.owner == "Resource"
    assert info.value.field == field
    assert info.value.fix


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": True}, "failure_threshold"),
        ({"failure_threshold": 2.5}, "failure_threshold"),
        ({"reset_after_s": 0}, "reset_after_s"),
        ({"reset_after_s": -1.0}, "reset_after_s"),
        ({"reset_after_s": math.inf}, "reset_after_s"),
        ({"reset_after_s": math.nan}, "reset_after_s"),
    ],
)
def test_breaker_arguments_are_checked(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        CircuitBreaker(**kwargs)
    assert info.value.owner == "CircuitBreaker"
    assert info.value.field == field


# --- circuit breaker on its own ---------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10.0)
    for success in (False, False, True, False, False):  # the success resets the count
        breaker.check(0.0, "llm")
        breaker.record(success, 0.0)
    assert state_of(breaker) == "closed"
    breaker.check(1.0, "llm")
    breaker.record(False, 1.0)
    assert state_of(breaker) == "open"
    with pytest.raises(CircuitOpenError) as info:
        breaker.check(4.0, "llm")
    assert info.value.resource == "llm"
    assert info.value.retry_in_s == pytest.approx(7.0)
    assert "llm" in str(info.value)


def test_breaker_half_opens_after_reset_and_a_trial_success_closes_it() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    breaker.record(False, 5.0)
    assert state_of(breaker) == "open"
    breaker.check(15.0, "llm")  # reset_after_s passed: one trial goes through
    assert state_of(breaker) == "half_open"
    with pytest.raises(CircuitOpenError):
        breaker.check(15.5, "llm")  # a second caller while the trial is out
    breaker.record(True, 16.0)
    assert state_of(breaker) == "closed"
    breaker.check(16.0, "llm")
    breaker.check(16.0, "llm")


def test_a_failed_trial_reopens_the_circuit_from_that_moment() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    breaker.record(False, 0.0)
    breaker.check(10.0, "llm")
    breaker.record(False, 12.0)
    assert state_of(breaker) == "open"
    with pytest.raises(CircuitOpenError) as info:
        breaker.check(21.0, "llm")
    assert info.value.retry_in_s == pytest.approx(1.0)
    breaker.check(22.0, "llm")
    assert state_of(breaker) == "half_open"


def test_rejected_checks_do_not_rearm_the_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=30.0)
    breaker.record(False, 0.0)
    for now in (1.0, 10.0, 20.0, 29.9):
        with pytest.raises(CircuitOpenError):
            breaker.check(now, "llm")
        breaker.record(False, now)  # a late verdict while open is ignored too
    breaker.check(30.0, "llm")
    assert state_of(breaker) == "half_open"


def test_breaker_state_changes_only_when_checked() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=1.0)
    breaker.record(False, 0.0)
    assert state_of(breaker) == "open"
    assert state_of(breaker) == "open"  # time alone does not move it; a check at t >= 1 does
    breaker.check(1.0, "llm")
    assert state_of(breaker) == "half_open"


# --- circuit breaker through a resource -------------------------------------------------------


async def attempt(
    resource: Resource, clock: FakeClock, outcome: str = "ok", hold: float = 0.0
) -> str:
    """One attempt holding `resource` for `hold` s, then `ok`, `raise` or `mark` (failed result)."""
    try:
        async with resource.acquire(clock=clock, name="llm") as lease:
            await clock.sleep(hold)
            if outcome == "raise":
                raise RuntimeError("boom")
            if outcome == "mark":
                lease.mark_failed()
                assert lease.failed
    except RuntimeError:
        return "raised"
    except CircuitOpenError:
        return "rejected"
    return "done"


@on_both_backends
async def test_failed_attempts_open_the_circuit_and_acquisitions_then_fail_at_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=10.0)
    resource = Resource(rate=1, burst=1, breaker=breaker)
    async with running(clock):
        assert await attempt(resource, clock, "raise") == "raised"  # t=0
        assert await attempt(resource, clock, "ok") == "done"  # t=1: resets the count
        assert await attempt(resource, clock, "mark") == "done"  # t=2
        assert state_of(breaker) == "closed"
        assert await attempt(resource, clock, "raise") == "raised"  # t=3
        assert state_of(breaker) == "open"
        # the bucket is empty, yet nothing waits: the open circuit refuses at once
        with pytest.raises(CircuitOpenError) as info:
            async with resource.acquire(clock=clock, name="llm"):
                pytest.fail("an open circuit granted an acquisition")
        assert clock.now() == 3.0
        assert info.value.resource == "llm"
        assert info.value.retry_in_s == 10.0


@on_both_backends
async def test_after_reset_one_trial_goes_through_and_its_success_closes_the_circuit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    resource = Resource(max_in_flight=5, breaker=breaker)
    results: dict[str, str] = {}

    async def run(tag: str, at: float, outcome: str = "ok", hold: float = 0.0) -> None:
        await clock.sleep(at)
        results[tag] = await attempt(resource, clock, outcome, hold)

    async with running(clock):
        assert await attempt(resource, clock, "raise") == "raised"
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "early", 9.0)
            tg.start_soon(run, "trial", 10.0, "ok", 1.0)
            tg.start_soon(run, "during trial", 10.5)
            tg.start_soon(run, "after", 11.5)
    assert results == {
        "early": "rejected",
        "trial": "done",
        "during trial": "rejected",
        "after": "done",
    }
    assert state_of(breaker) == "closed"


@on_both_backends
async def test_a_failed_trial_reopens_for_another_reset_period() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    resource = Resource(breaker=breaker)
    async with running(clock):
        assert await attempt(resource, clock, "raise") == "raised"
        await clock.sleep(10.0)
        assert await attempt(resource, clock, "raise", hold=2.0) == "raised"  # trial, fails at 12
        assert state_of(breaker) == "open"
        await clock.sleep(9.5)
        with pytest.raises(CircuitOpenError) as info:
            async with resource.acquire(clock=clock, name="llm"):
                pass
        assert info.value.retry_in_s == pytest.approx(0.5)
        await clock.sleep(0.5)
        assert await attempt(resource, clock, "mark") == "done"  # trial at 22 fails again
        assert state_of(breaker) == "open"


@on_both_backends
async def test_rejected_acquisitions_do_not_rearm_the_circuit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=30.0)
    resource = Resource(max_in_flight=1, breaker=breaker)
    async with running(clock):
        assert await attempt(resource, clock, "raise") == "raised"
        for _ in range(29):
            await clock.sleep(1.0)
            assert await attempt(resource, clock) == "rejected"
        await clock.sleep(1.0)
        assert clock.now() == 30.0
        assert await attempt(resource, clock) == "done"
    assert state_of(breaker) == "closed"


@on_both_backends
async def test_a_cancelled_attempt_is_no_verdict_and_a_cancelled_trial_frees_its_place() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    resource = Resource(breaker=breaker)
    async with running(clock):
        with anyio.CancelScope() as scope:
            async with resource.acquire(clock=clock, name="llm"):
                scope.cancel()
                await clock.sleep(1.0)
        assert state_of(breaker) == "closed"  # a cancellation is not the service failing
        assert await attempt(resource, clock, "raise") == "raised"
        await clock.sleep(10.0)
        with clock.deadline_scope(1.0):
            async with resource.acquire(clock=clock, name="llm"):  # the trial
                await clock.sleep(5.0)
        assert state_of(breaker) == "half_open"
        assert await attempt(resource, clock) == "done"  # the next one is the trial now
    assert state_of(breaker) == "closed"


@on_both_backends
async def test_a_trial_cancelled_while_waiting_frees_its_place_and_stale_verdicts_are_ignored() -> (
    None
):
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    resource = Resource(max_in_flight=1, breaker=breaker)
    seen: dict[str, Any] = {}

    async def holder() -> None:  # let through while closed; ends with a success at t=20
        assert await attempt(resource, clock, hold=20.0) == "done"

    async def cancelled_trial() -> None:
        await clock.sleep(10.0)  # started at 1, when the circuit opened: the trial at 11
        with clock.deadline_scope(2.0):
            async with resource.acquire(clock=clock, name="llm"):
                pytest.fail("the trial got the slot while the holder had it")
        seen["cancelled at"] = clock.now()

    async def next_trial() -> None:
        await clock.sleep(13.0)  # at 14
        async with resource.acquire(clock=clock, name="llm") as lease:
            seen["granted"] = (clock.now(), lease.wait_s, breaker.state)

    async with running(clock), anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await clock.sleep(1.0)
        breaker.record(False, clock.now())  # e.g. another resource's user saw the failure
        tg.start_soon(cancelled_trial)
        tg.start_soon(next_trial)
    assert seen["cancelled at"] == 13.0
    # the holder's success at 20 was let through before the circuit opened: not the verdict
    assert seen["granted"] == (20.0, 6.0, "half_open")
    assert state_of(breaker) == "closed"


@on_both_backends
async def test_a_waiter_is_refused_if_the_circuit_opened_while_it_waited() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=0.5)
    resource = Resource(max_in_flight=1, rate=1, burst=1, breaker=breaker)
    results: dict[str, Any] = {}

    async def waiter() -> None:
        await clock.sleep(0.5)
        results["waiter"] = await attempt(resource, clock)
        results["refused at"] = clock.now()

    async with running(clock):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            async with resource.acquire(clock=clock, name="llm"):  # its token is back at 1.0
                await clock.sleep(0.75)
                breaker.record(False, clock.now())  # opens at 0.75, trial from 1.25
                await clock.sleep(0.25)
        assert results == {"waiter": "rejected", "refused at": 1.0}
        await clock.sleep(0.25)
        async with resource.acquire(clock=clock, name="llm") as lease:
            # the slot and the token the refused waiter was granted at 1.0 came back
            assert lease.wait_s == 0.0
        assert state_of(breaker) == "closed"


@on_both_backends
async def test_attempts_in_flight_when_the_circuit_opens_do_not_close_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    resource = Resource(max_in_flight=2, breaker=breaker)
    async with running(clock), anyio.create_task_group() as tg:
        tg.start_soon(attempt, resource, clock, "raise", 1.0)
        tg.start_soon(attempt, resource, clock, "ok", 2.0)
    assert state_of(breaker) == "open"


# --- cancellation while waiting -------------------------------------------------------------


@on_both_backends
async def test_cancelled_slot_waiters_take_nothing_and_leave_the_queue() -> None:
    clock = FakeClock()
    resource = Resource(max_in_flight=3)
    log: list[tuple[str, float]] = []

    async def heavy() -> None:
        await clock.sleep(0.5)
        with clock.deadline_scope(0.5):
            async with resource.acquire(3, clock=clock):
                pytest.fail("granted while the slots were held")
        log.append(("heavy cancelled", clock.now()))

    async with running(clock), anyio.create_task_group() as tg:
        tg.start_soon(partial(grab, resource, clock, log, "a", weight=2, hold=5.0))
        tg.start_soon(heavy)
        # queued behind `heavy` at 0.75; in as soon as `heavy` gives up its place
        tg.start_soon(partial(grab, resource, clock, log, "light", weight=1, at=0.75, hold=5.0))
        tg.start_soon(partial(grab, resource, clock, log, "all", weight=3, at=2.0))
    assert grants(log) == {"a": 0.0, "heavy cancelled": 1.0, "light": 1.0, "all": 6.0}


@on_both_backends
async def test_a_cancelled_token_waiter_takes_no_tokens() -> None:
    clock = FakeClock()
    resource = Resource(rate=1, burst=1)
    async with running(clock):
        async with resource.acquire(clock=clock):
            pass
        with clock.deadline_scope(0.5):
            async with resource.acquire(clock=clock):
                pytest.fail("granted before the bucket refilled")
        assert clock.now() == 0.5
        async with resource.acquire(clock=clock) as lease:
            assert clock.now() == 1.0  # not 2.0: the cancelled waiter took nothing
            assert lease.wait_s == 0.5


@on_both_backends
async def test_a_waiter_cancelled_as_it_is_granted_gives_everything_back() -> None:
    clock = FakeClock()
    resource = Resource(max_in_flight=2, rate=1, burst=2)
    entered: list[bool] = []
    scope = anyio.CancelScope()

    async def waiter() -> None:
        with scope:
            async with resource.acquire(clock=clock):
                entered.append(True)

    async with running(clock):
        async with anyio.create_task_group() as tg, resource.acquire(2, clock=clock):
            tg.start_soon(waiter)
            await clock.sleep(1.0)  # the waiter queues for a slot
            # cancelled, it has not run yet when leaving this block grants it a slot and
            # the token that refilled by t=1
            scope.cancel()
        assert not entered
        assert clock.now() == 1.0
        async with resource.acquire(2, clock=clock) as lease:
            # the waiter gave its token back: 2 tokens are there at t=2, not at t=3
            assert lease.wait_s == 1.0


# --- sharing ------------------------------------------------------------------------------------


@on_both_backends
async def test_two_concurrent_users_share_the_limits() -> None:
    clock = FakeClock()
    resource = Resource(max_in_flight=1, rate=10, burst=1)
    holding = peak = 0
    granted: dict[str, list[float]] = {"one": [], "two": []}

    async def user(name: str) -> None:
        nonlocal holding, peak
        for _ in range(10):
            async with resource.acquire(clock=clock, name=name):
                holding += 1
                peak = max(peak, holding)
                granted[name].append(clock.now())
                await anyio.lowlevel.checkpoint()
                holding -= 1

    async with running(clock), anyio.create_task_group() as tg:
        tg.start_soon(user, "one")
        tg.start_soon(user, "two")
    assert peak == 1
    assert len(granted["one"]) == len(granted["two"]) == 10
    both = sorted(granted["one"] + granted["two"])
    assert both == pytest.approx([i / 10 for i in range(20)])
    assert clock.now() == pytest.approx(1.9)


def test_one_resource_serves_runs_on_successive_event_loops() -> None:
    resource = Resource(max_in_flight=1, rate=10, burst=1, breaker=CircuitBreaker())

    async def paced_by_slots() -> list[float]:
        clock = FakeClock()
        log: list[tuple[str, float]] = []
        async with running(clock), anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(partial(grab, resource, clock, log, f"c{i}", hold=0.5))
        return sorted(t for _, t in log)

    for backend in ("asyncio", "trio", "asyncio"):
        assert anyio.run(paced_by_slots, backend=backend) == [0.0, 0.5, 1.0, 1.5]
    assert resource.breaker is not None
    assert resource.breaker.state == "closed"


def test_a_fresh_clock_keeps_the_bucket_s_debt() -> None:
    resource = Resource(rate=10, burst=1)

    async def ten() -> float:
        clock = FakeClock()
        async with running(clock), anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(grab, resource, clock, [], f"c{i}")
        return clock.now()

    assert anyio.run(ten, backend="asyncio") == pytest.approx(0.9)
    # the bucket was empty when the first run ended: the next run's first grant waits 0.1 s
    assert anyio.run(ten, backend="trio") == pytest.approx(1.0)


def test_slot_waits_work_on_the_real_clock_across_backends() -> None:
    resource = Resource(max_in_flight=1)

    async def contend() -> int:
        clock = SystemClock()
        holding = peak = 0

        async def one() -> None:
            nonlocal holding, peak
            async with resource.acquire(clock=clock):
                holding += 1
                peak = max(peak, holding)
                await anyio.lowlevel.checkpoint()
                holding -= 1

        with anyio.fail_after(GUARD_S):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(one)
        return peak

    for backend in ("asyncio", "trio", "asyncio"):
        assert anyio.run(contend, backend=backend) == 1

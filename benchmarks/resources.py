"""Cost of an uncontended `Resource` acquisition, and the rate a limiter achieves on the real clock.

1. Overhead: `async with resource.acquire(clock=SystemClock())` around an empty body, in a
   tight loop, against the same loop without it; median of several rounds, in microseconds per
   acquisition (target: under 5 us). Rows: `max_in_flight=1000`; the same with `rate=1e9` (the
   token bucket never empties, so it is pure bookkeeping); and with a closed `CircuitBreaker`.
2. Achieved rate: several tasks acquire as fast as they can from `Resource(rate=50, burst=1)`
   for 5 s of real time; the achieved rate is compared with the configured one (target:
   within 5%).

Usage: python benchmarks/resources.py [--backend asyncio|trio] [--n N] [--rounds R]
       [--seconds S] [--rate R]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import anyio

from pipeline.clock import SystemClock
from pipeline.resources import CircuitBreaker, Resource


async def loop_bare(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        pass
    return time.perf_counter() - start


async def loop_acquire(resource: Resource, n: int) -> float:
    clock = SystemClock()
    start = time.perf_counter()
    for _ in range(n):
        async with resource.acquire(clock=clock, name="bench"):
            pass
    return time.perf_counter() - start


async def median_s(resource: Resource | None, n: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        gc.collect()
        if resource is None:
            samples.append(await loop_bare(n))
        else:
            samples.append(await loop_acquire(resource, n))
    return statistics.median(samples)


async def overhead(n: int, rounds: int) -> None:
    cases: list[tuple[str, Resource | None]] = [
        ("same loop, no acquire", None),
        ("max_in_flight=1000", Resource(max_in_flight=1000)),
        ("max_in_flight=1000, rate=1e9", Resource(max_in_flight=1000, rate=1e9)),
        (
            "max_in_flight=1000, rate=1e9, breaker",
            Resource(max_in_flight=1000, rate=1e9, breaker=CircuitBreaker()),
        ),
    ]
    await loop_acquire(Resource(max_in_flight=1000), n // 10)  # warm-up
    base = 0.0
    print(f"uncontended acquisition, {n} per round, median of {rounds} rounds")
    header = f"{'case':<38} {'loop ms':>9} {'us/iter':>8} {'overhead us':>12} {'< 5 us':>7}"
    print(header)
    print("-" * len(header))
    for label, resource in cases:
        seconds = await median_s(resource, n, rounds)
        per_iter = seconds / n * 1e6
        if resource is None:
            base = per_iter
            print(f"{label:<38} {seconds * 1e3:>9.2f} {per_iter:>8.3f} {'':>12} {'':>7}")
            continue
        extra = per_iter - base
        verdict = "yes" if extra < 5 else "NO"
        print(f"{label:<38} {seconds * 1e3:>9.2f} {per_iter:>8.3f} {extra:>12.3f} {verdict:>7}")


async def achieved_rate(rate: float, seconds: float, workers: int = 4) -> None:
    resource = Resource(rate=rate, burst=1)
    clock = SystemClock()
    grants: list[float] = []
    start = clock.now()

    async def worker() -> None:
        while True:
            async with resource.acquire(clock=clock, name="bench"):
                grants.append(clock.now())

    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
    in_window = [t for t in grants if t - start <= seconds]
    # burst=1: one grant at once, then one every 1/rate s; so (n - 1) over the span between
    # the first and last grant is the steady rate, and n / seconds includes the burst
    steady = (len(in_window) - 1) / (in_window[-1] - in_window[0])
    overall = len(in_window) / seconds
    print()
    print(
        f"achieved rate on the real clock: {workers} tasks, {seconds:g} s, rate={rate:g}/s, burst=1"
    )
    header = f"{'measure':<30} {'per s':>8} {'vs configured':>14} {'within 5%':>10}"
    print(header)
    print("-" * len(header))
    for label, value in (
        ("steady: (n - 1) / span", steady),
        (f"grants in {seconds:g} s / {seconds:g} s", overall),
    ):
        ratio = value / rate
        verdict = "yes" if abs(ratio - 1) <= 0.05 else "NO"
        print(f"{label:<30} {value:>8.2f} {ratio - 1:>+13.2%} {verdict:>10}")
    print(f"grants: {len(in_window)}")


async def main(n: int, rounds: int, seconds: float, rate: float) -> None:
    await overhead(n, rounds)
    await achieved_rate(rate, seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    anyio.run(main, args.n, args.rounds, args.seconds, args.rate, backend=args.backend)

"""Streaming example: records from a paged API are written while later pages are still coming.

    pages (producer: 50 pages x 200 records) ──> clean (FAN_OUT) ──> enrich (FAN_OUT) ──> write
                                                     └──── both share Resource "api" ────┘

`pages` is an async generator: it fetches page after page from a simulated API (each page
takes `--page-ms`) and yields each record as soon as its page arrived. `clean` and `enrich` map
over that stream as it flows, each call holding the shared, rate-limited `Resource` "api"
(`--rate` calls per second, at most 16 at once, for both stages together). `write` reads its
input as an `AsyncIterator` and appends every record to a JSON-lines file as it arrives.

Nothing waits for the whole list: the first record is on disk long before the last page is
fetched, and memory holds a few dozen records at a time, not 10,000. Backpressure does the
rest: when the API limit slows `clean` and `enrich` down, the source is held back too (it never
runs more than `buffer + max_concurrent_fan_out + 1` records ahead of `clean`).

    python examples/stream_pages.py                     # about 3 s, a file in the temp dir
    python examples/stream_pages.py --out records.jsonl --rate 2000 --page-ms 40

Prints when the first record was written and when the source finished (seconds since the
start), then the run's summary. Exits 0 when every record was written, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator  # noqa: TC003  # stage annotations are read at run time
from pathlib import Path
from typing import Any

import anyio

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    Resource,
    StageDefinition,
    stage,
)

PAGES = 50
PER_PAGE = 200
FAN_OUT = ExecutionPattern.FAN_OUT


class FakeApi:
    """A paged API: `page(n)` takes `latency_s` and returns 200 records (None past the end)."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.fetched = 0

    async def page(self, number: int) -> list[dict[str, Any]] | None:
        await anyio.sleep(self.latency_s)
        if number >= PAGES:
            return None
        self.fetched += 1
        start = number * PER_PAGE
        return [
            {"id": i, "name": f"  customer {i}  ", "amount_cents": (i * 7919) % 100_000}
            for i in range(start, start + PER_PAGE)
        ]


class Timeline:
    """When things happened, in seconds since the run started."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first_written: float | None = None
        self.source_done: float | None = None

    def now(self) -> float:
        return time.perf_counter() - self.t0


def build(api: FakeApi, out: Path, timeline: Timeline) -> PipelineDefinition:
    @stage
    async def pages(_: Any, ctx: PipelineContext[Any]) -> AsyncIterator[dict[str, Any]]:
        number = 0
        while (records := await api.page(number)) is not None:
            for record in records:
                yield record
            number += 1
        timeline.source_done = timeline.now()

    @stage
    async def clean(record: dict[str, Any], ctx: PipelineContext[Any]) -> dict[str, Any]:
        return {**record, "name": record["name"].strip().title()}

    @stage
    async def enrich(record: dict[str, Any], ctx: PipelineContext[Any]) -> dict[str, Any]:
        return {**record, "tier": "gold" if record["amount_cents"] > 90_000 else "standard"}

    @stage
    async def write(records: AsyncIterator[dict[str, Any]], ctx: PipelineContext[Any]) -> int:
        written = 0
        with out.open("w") as file:
            async for record in records:
                file.write(json.dumps(record) + "\n")
                written += 1
                if timeline.first_written is None:
                    file.flush()
                    timeline.first_written = timeline.now()
        return written

    api_call = {"api": 1}
    return PipelineDefinition(
        "stream-pages",
        [
            StageDefinition("pages", pages),
            StageDefinition(
                "clean", clean, pattern=FAN_OUT, inputs=["pages"], uses=api_call,
                max_concurrent_fan_out=8, buffer=16,
            ),
            StageDefinition(
                "enrich", enrich, pattern=FAN_OUT, inputs=["clean"], uses=api_call,
                max_concurrent_fan_out=8, buffer=16,
            ),
            StageDefinition("write", write, inputs=["enrich"]),
        ],
    )  # fmt: skip


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, help="where to write (default: the temp dir)")
    parser.add_argument("--rate", type=float, default=8000.0, help="API calls per second")
    parser.add_argument("--page-ms", type=float, default=20.0, help="latency of one page")
    args = parser.parse_args(argv)
    out: Path = args.out or Path(tempfile.gettempdir()) / "stream-pages.jsonl"
    api = FakeApi(args.page_ms / 1000)
    # One limit for both transforms: 16 calls in flight, `rate` per second between them.
    executor = PipelineExecutor(resources={"api": Resource(max_in_flight=16, rate=args.rate)})
    timeline = Timeline()
    result = await executor.execute(build(api, out, timeline), None)
    total_s = timeline.now()
    if not result.success:
        print(f"run failed: {result.error or result.failed_stages}")
        return 1
    written = result.outputs["write"]
    print(f"pages fetched: {api.fetched}")
    print(f"records written: {written} to {out}")
    print(f"first record written at: {timeline.first_written:.3f} s")
    print(f"source finished at: {timeline.source_done:.3f} s")
    print(f"run finished at: {total_s:.3f} s")
    # Streamed outputs are not kept: only `write`'s count is in the result.
    print(f"outputs kept: {sorted(k for k, v in result.outputs.items() if v is not None)}")
    return 0 if written == PAGES * PER_PAGE else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))

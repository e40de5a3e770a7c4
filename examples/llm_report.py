"""Realistic example: a report on a document from a rate-limited, flaky, paid LLM, crash-safe.

    split ──── summaries (fan-out: 1 call per section) ──────┐
    keywords (1 call) ── explanations (fan-out: 1 per word) ─┴── report (2 calls)

The document (built in, or `--document FILE`) gets one summary per section, a list of its 50
keywords, one explanation per keyword and a titled abstract: 59 LLM calls. The LLM is simulated
in this process (no network, no key): like a real API it allows 5 requests in flight and 10 per
second, rejects more with a `RateLimitError` carrying a Retry-After, fails 20% of requests at
random anyway ("overloaded"), and bills every answered request.

What keeps it fast, correct and cheap:

- one shared `Resource(max_in_flight=5, rate=10)` named "llm": every call, from any stage, waits
  its turn, so the API's limits are never exceeded (the report prints how often they were);
- each call is a durable step (`context.step`) with its own retry by exception type, full
  jitter and the server's Retry-After, holding the resource per request;
- a `SQLiteCache` keeps every answered call, so a run that crashed (or failed) is resumed by
  running the same command again: answered calls are replayed, only the rest is paid;
- a middleware tags every attempt with its stage, so the bill is itemised per stage;
- on a terminal (with the `progress` extra) a live display shows the run.

Try it:

    python examples/llm_report.py --crash-after 20   # killed (SIGKILL) after 20 paid calls
    python examples/llm_report.py                    # resumes: pays only the 39 calls left
    python examples/llm_report.py                    # everything replayed: pays nothing
    python examples/llm_report.py --fresh            # clears the cache first

The cache lives in `--cache-dir`, by default `llm-report-cache` in the system's temp directory:
it must outlive the process (resuming is the point) but has no business in your checkout, and
the OS cleans it up eventually. Exits 0 when the report was written, 1 when the run failed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import tempfile
import textwrap
import time
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from pydantic import BaseModel

from pipeline import (
    AttemptCall,
    CircuitBreaker,
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineResult,
    Resource,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
    stage,
)
from pipeline.cache import SQLiteCache
from pipeline.events import PipelineEvent, ResourceWaited, StepFinished

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pipeline.events import Observer

DOCUMENT = """\
Lighthouses began as open fires on hilltops, tended by watchmen who burned wood and coal to warn
sailors away from treacherous headlands. The Pharos of Alexandria, finished around 280 BC, stood
taller than any building of its age, and its beacon reportedly carried for many miles across the
Mediterranean. For centuries afterwards, harbours relied on similar towers, expensive to fuel and
dim in storms.

Engineering transformed these towers during the eighteenth century. John Smeaton rebuilt the
Eddystone lighthouse from interlocking granite blocks, using hydraulic lime that hardened under
water, and his curved profile shed the force of breaking waves. Later builders such as Robert
Stevenson copied his masonry techniques on exposed reefs, where construction crews could work only
during calm tides.

Optics mattered as much as masonry. Augustin Fresnel designed a lens of concentric glass prisms
that bent scattered light into a single horizontal beam, multiplying its brightness without
burning more fuel. Rotating clockwork turned the apparatus, so each station produced a distinctive
flashing signature that mariners could identify from published charts.

Keepers lived demanding, solitary lives. Their duties included trimming wicks, polishing brass,
winding the clockwork every few hours and recording weather observations in the station logbook.
Families sometimes shared remote islands with them, schooling children by correspondence and
waiting weeks for supply boats when gales closed the landing.

Electrification and automation ended that profession. Acetylene burners with sun valves, then
electric lamps, radio beacons and satellite navigation made resident keepers unnecessary, and most
coastal authorities had automated their stations before the century closed. Many towers now run
unattended, monitored remotely, with solar panels charging batteries.

Preservation societies restored abandoned towers as museums, holiday cottages and wildlife
observatories. Visitors climb spiral staircases to lantern galleries, heritage volunteers maintain
historic lenses, and conservation grants repair weathered stonework, keeping these landmarks alive
as monuments to maritime history.
"""

KEYWORDS = 50
LLM_CALL_S = (0.02, 0.05)
"""Simulated latency of one request, in seconds (real sleeps)."""
TOLERANCE_S = 0.05
"""How early (network jitter) the simulated API still accepts a request under its rate limit."""


# -- the simulated LLM API ---------------------------------------------------------------------
class RateLimitError(Exception):
    """HTTP 429: too many requests. `retry_after_s` is the server's Retry-After, if it sent one.

    The executor honours the attribute: a retry waits exactly that long instead of its backoff.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


billing_tag: ContextVar[str] = ContextVar("billing_tag", default="untagged")
"""Sent with each request and itemised on the bill, like an API's per-request metadata."""


class SimulatedLLM:
    """A paid LLM API in this process: 5 requests in flight, 10 per second, 20% random 429s.

    Over either limit a request is rejected at once with `RateLimitError` and a Retry-After
    (counted in `over_limit`; the rate is a token bucket of 10 with `TOLERANCE_S` for network
    jitter). An accepted request takes 20-50 ms, then fails with `RateLimitError`
    ("overloaded", half of them with a Retry-After) with probability `error_rate`, or is
    answered and billed (`paid`, itemised by `billing_tag` in `paid_by_tag`). The answers are
    a deterministic function of the prompt.
    """

    def __init__(
        self,
        *,
        max_in_flight: int = 5,
        rate: float = 10.0,
        error_rate: float = 0.2,
        seed: int | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.rate = rate
        self.error_rate = error_rate
        self._random = random.Random(seed)
        self._in_flight = 0
        self._tokens = rate
        self._refilled_at = time.perf_counter()
        self.paid = 0
        self.paid_by_tag: Counter[str] = Counter()
        self.overloaded = 0
        self.over_limit = 0

    async def complete(self, prompt: str) -> str:
        """The answer to `prompt` (billed), or `RateLimitError` (not billed)."""
        now = time.perf_counter()
        self._tokens = min(self.rate, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now
        if self._in_flight >= self.max_in_flight:
            self.over_limit += 1
            raise RateLimitError(f"more than {self.max_in_flight} requests in flight", 0.05)
        if self._tokens < 1 - TOLERANCE_S * self.rate:
            self.over_limit += 1
            wait = (1 - self._tokens) / self.rate
            raise RateLimitError(f"more than {self.rate:g} requests per second", wait)
        self._tokens -= 1
        self._in_flight += 1
        try:
            await anyio.sleep(self._random.uniform(*LLM_CALL_S))
            if self._random.random() < self.error_rate:
                self.overloaded += 1
                retry_after = 0.25 if self._random.random() < 0.5 else None
                raise RateLimitError("overloaded, try again later", retry_after)
            self.paid += 1
            self.paid_by_tag[billing_tag.get()] += 1
            return answer(prompt)
        finally:
            self._in_flight -= 1


STOPWORDS = frozenset({"across", "afterwards", "around", "before", "because", "between", "during"})


def answer(prompt: str) -> str:
    """What the simulated model answers: plausible, short and always the same for one prompt."""
    task, _, text = prompt.partition("\n")
    if task.startswith("List the"):
        return ", ".join(ranked_words(text)[: int(task.split()[2])])
    if task.startswith("Explain"):
        keyword = task.split("'")[1]
        sentences = re.split(r"(?<=\.)\s+", text)
        used = next((s for s in sentences if keyword in s.lower()), text)
        return f"{keyword}: as in \u201c{clip(used)}\u201d"
    if task.startswith("Summarize"):
        return clip(text)
    if task.startswith("Title"):
        return f"A Short History of {ranked_words(text)[0].capitalize()}"
    return f"In {len(text.splitlines())} parts: " + " ".join(text.splitlines()[:3])


def ranked_words(text: str) -> list[str]:
    """The longer words of `text`, most frequent first (ties: in order of appearance)."""
    words = [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 5 and w not in STOPWORDS]
    counts = Counter(words)
    return sorted(counts, key=lambda w: (-counts[w], words.index(w)))


def clip(text: str, words: int = 14) -> str:
    """The first `words` words of `text`, with "..." when there were more."""
    kept = text.split()
    return " ".join(kept[:words]) + ("..." if len(kept) > words else "")


# -- the app -----------------------------------------------------------------------------------
class LLMClient(Protocol):
    """What the stages need from an LLM client."""

    async def complete(self, prompt: str) -> str:
        """The model's answer to `prompt`."""
        ...


@dataclass(frozen=True)
class Deps:
    """What every stage receives as `ctx.deps`."""

    llm: LLMClient
    retry: RetryConfig
    """The retry policy of one LLM call."""
    document: str


class Explanation(BaseModel, frozen=True):
    keyword: str
    text: str


class Report(BaseModel, frozen=True):
    title: str
    abstract: str
    summaries: list[str]
    explanations: list[Explanation]


Ctx = PipelineContext[Deps]


async def ask(ctx: Ctx, step: str, prompt: str) -> str:
    """One paid LLM call as a durable step: retried by type, holding the "llm" resource.

    Kept in the cache once answered (key: the stage, `step` and the prompt), so a rerun after
    a crash or a failure replays it instead of paying again.
    """
    return await ctx.step(step, ctx.deps.llm.complete, prompt, retry=ctx.deps.retry, uses=LLM)


LLM = {"llm": 1}
"""Each call holds one unit of the shared resource: one in-flight slot and one token."""


@stage
async def split(document: str, ctx: Ctx) -> list[str]:
    return [part.strip() for part in document.split("\n\n") if part.strip()]


@stage
async def summarize(section: str, ctx: Ctx) -> str:
    return await ask(ctx, "summarize", f"Summarize in one sentence:\n{section}")


@stage
async def keywords(document: str, ctx: Ctx) -> list[str]:
    listed = await ask(ctx, "keywords", f"List the {KEYWORDS} most important keywords:\n{document}")
    return listed.split(", ")


@stage
async def explain(keyword: str, ctx: Ctx) -> Explanation:
    prompt = f"Explain the keyword {keyword!r} as used in:\n{ctx.deps.document}"
    text = await ask(ctx, "explain", prompt)
    return Explanation(keyword=keyword, text=text)


@stage
async def report(parts: dict[str, Any], ctx: Ctx) -> Report:
    summaries: list[str] = parts["summaries"]
    explanations: list[Explanation] = parts["explanations"]
    # Two calls in a row: if the second fails for good and the stage is retried, the first is
    # replayed from the cache, not paid again.
    abstract = await ask(ctx, "abstract", "Abstract of these summaries:\n" + "\n".join(summaries))
    title = await ask(ctx, "title", f"Title for this abstract:\n{abstract}")
    return Report(title=title, abstract=abstract, summaries=summaries, explanations=explanations)


def build_pipeline(seed: int | None) -> tuple[PipelineDefinition, RetryConfig]:
    """The report pipeline, and the retry policy of one LLM call."""
    call_retry = RetryConfig(
        max_attempts=5,
        initial_delay_ms=200,
        max_delay_ms=2_000,
        retry_on=(RateLimitError,),  # by type: a bug (KeyError, ...) is not retried
        jitter="full",  # concurrent callers do not come back in lockstep
        jitter_seed=seed,
    )
    # When one call has failed 5 times, its item (or stage) is tried once more; calls that had
    # succeeded are replayed. The LLM stages keep no stage-level cache entry (`cache=False`):
    # their answers are already kept, one per call, by the durable steps.
    again = RetryConfig(max_attempts=2, initial_delay_ms=1_000, retry_on=(RateLimitError,))
    llm_stage: dict[str, Any] = {"retry_config": again, "cache": False}
    fan_out: dict[str, Any] = {"pattern": ExecutionPattern.FAN_OUT, "max_concurrent_fan_out": 16}
    definition = PipelineDefinition(
        "llm-report",
        [
            StageDefinition("split", split),
            StageDefinition("summaries", summarize, inputs=["split"], **fan_out, **llm_stage),
            StageDefinition("keywords", keywords, **llm_stage),
            StageDefinition("explanations", explain, inputs=["keywords"], **fan_out, **llm_stage),
            StageDefinition("report", report, inputs=["summaries", "explanations"], **llm_stage),
        ],
    )
    return definition, call_retry


class BillByStage:
    """Middleware: tags every attempt's requests with its stage, so the bill is itemised.

    It wraps each attempt (each fan-out item's) inside the retry loop; the durable steps the
    attempt makes run in its task, so they see the tag.
    """

    async def __call__(
        self, call: AttemptCall, call_next: Callable[[AttemptCall], Awaitable[StageResult[Any]]]
    ) -> StageResult[Any]:
        token = billing_tag.set(call.stage_id)
        try:
            return await call_next(call)
        finally:
            billing_tag.reset(token)


@dataclass
class Ledger:
    """Observer: tallies resource waits and stored answers; `--crash-after` kills the process."""

    crash: CrashAfter | None = None
    waited_s: float = 0.0
    waits: int = 0
    stored: int = 0

    def on_event(self, event: PipelineEvent) -> None:
        if isinstance(event, ResourceWaited) and event.wait_s > 0:
            self.waits += 1
            self.waited_s += event.wait_s
        elif isinstance(event, StepFinished) and event.status is StageStatus.SUCCEEDED:
            if event.cached:
                return  # replayed, not paid
            self.stored += 1  # a paid answer: the event comes once it is written to the cache
            if self.crash is not None and self.stored >= self.crash.after:
                self.crash.kill()


class CrashAfter:
    """`--crash-after N`: a client wrapper and a kill switch for a realistic, exact crash.

    Requests start only while fewer than N answers are paid or on their way, so exactly N get
    paid; the `Ledger` kills the process with SIGKILL (no cleanup, no flushing: like a power
    cut or the OOM killer) the moment the N-th answer is written to the cache. A real crash
    can also land in the few milliseconds between an answer arriving and its write; such an
    answer is paid again by the rerun (at most the calls in flight, 5 here).
    """

    def __init__(self, llm: SimulatedLLM, after: int) -> None:
        self.llm = llm
        self.after = after
        self._sending = 0
        self._changed: anyio.Event | None = None

    async def complete(self, prompt: str) -> str:
        while self.llm.paid + self._sending >= self.after:  # the process is about to die
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        self._sending += 1
        try:
            return await self.llm.complete(prompt)
        finally:
            self._sending -= 1
            changed, self._changed = self._changed, None
            if changed is not None:
                changed.set()

    def kill(self) -> None:
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[?25h\n")  # the live display hid the cursor
        print(f"LLM calls paid this run: {self.llm.paid}")
        print(f"crash: killing the process after {self.after} paid calls (--crash-after)")
        print("run the same command without --crash-after to resume")
        sys.stdout.flush()
        if hasattr(signal, "SIGKILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # where there is no SIGKILL (Windows)


def live_display() -> list[Observer]:
    """A live progress view when a terminal is attached and rich is installed, else nothing."""
    if not sys.stdout.isatty():
        return []
    try:
        from pipeline.observers.progress import ProgressObserver
    except ImportError:  # the `progress` extra is not installed: run without the display
        return []
    return [ProgressObserver(transient=True)]


def print_report(result: PipelineResult, llm: SimulatedLLM, ledger: Ledger, db: Path) -> None:
    if result.success:
        out: Report = result.get_output("report")
        print(f"{out.title}\n\n{textwrap.fill(out.abstract, 96)}\n")
        print(f"{len(out.summaries)} section summaries, {len(out.explanations)} keywords:")
        for item in out.explanations[:3]:
            print(textwrap.fill(item.text, 96, initial_indent="  ", subsequent_indent="    "))
        print(f"  ... and {len(out.explanations) - 3} more\n")
    else:
        print(result.summary())
        print(f"\nrun failed: {result.error or result.failed_stages}; run again to resume\n")
    steps = [
        s
        for run in result.stage_runs.values()
        for s in run.steps
        if s.status is StageStatus.SUCCEEDED
    ]
    replayed = sum(s.cached for s in steps)
    bill = ", ".join(f"{sid} {llm.paid_by_tag[sid]}" for sid in result.stage_runs if sid != "split")
    print(f"LLM calls paid this run: {llm.paid} ({bill})")
    print(f"LLM calls replayed from the cache: {replayed}")
    print(
        f"rate-limit errors: {llm.overloaded} random (retried), "
        f"{llm.over_limit} from exceeding the API's limits"
    )
    mean = ledger.waited_s / max(ledger.waits, 1)
    print(f'calls that waited for the "llm" resource: {ledger.waits}, {mean:.2f} s on average')
    print(f"cache: {db}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--document", type=Path, help="a text file (default: a built-in one)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "llm-report-cache",
        help="where answered calls are kept between runs (default: %(default)s)",
    )
    parser.add_argument("--crash-after", type=int, metavar="N", help="die after N paid calls")
    parser.add_argument("--fresh", action="store_true", help="clear the cache first")
    parser.add_argument("--seed", type=int, help="seed the simulated errors and the jitter")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    if args.crash_after is not None and args.crash_after < 1:
        parser.error("--crash-after must be at least 1")
    return args


async def run(args: argparse.Namespace) -> int:
    """Write the report; 0 on success, 1 when the run failed (run again to resume)."""
    document = DOCUMENT if args.document is None else args.document.read_text(encoding="utf-8")
    llm = SimulatedLLM(seed=args.seed)
    crash = None if args.crash_after is None else CrashAfter(llm, args.crash_after)
    definition, call_retry = build_pipeline(args.seed)
    ledger = Ledger(crash)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    db = args.cache_dir / "llm-report.db"
    async with SQLiteCache(db) as cache:
        if args.fresh:
            await cache.clear()
        executor = PipelineExecutor(
            cache=cache,
            # The API's own limits, shared by every stage. The breaker stops a run from
            # hammering an API that is down: after 10 failed calls in a row, calls fail at
            # once for 5 s, then one trial call decides.
            resources={
                "llm": Resource(
                    max_in_flight=5,
                    rate=10,
                    breaker=CircuitBreaker(failure_threshold=10, reset_after_s=5.0),
                )
            },
            middleware=[BillByStage()],
            observers=[*live_display(), ledger],
            scheduling="eager",
        )
        context = PipelineContext(deps=Deps(llm=crash or llm, retry=call_retry, document=document))
        result = await executor.execute(definition, document, context)
    print_report(result, llm, ledger, db)
    return 0 if result.success else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code: int = anyio.run(run, args, backend=args.backend)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Flagship example: a simulated light-show render pipeline.

    audio ──┬── profile ──┬── macro ── group_contexts ── groups (fan-out, retried) ── render
            └── lyrics* ──┘

* lyrics runs only when audio analysis found vocals (a context state flag); it is non-critical.

Every stage is a small typed class satisfying `PipelineStage` (no base class), wired with
`PipelineBuilder` so mypy checks each edge; the data between stages are frozen pydantic models; the LLM provider and job config are injected through the
context. Work is simulated with short real sleeps. On a terminal (with the `progress` extra) a
live display shows the run; then `result.summary()` prints where the time went. Run it with
`make demo`; exits 0 on success.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel

from pipeline import (
    ExecutionPattern,
    PipelineBuilder,
    PipelineContext,
    PipelineExecutor,
    PipelineResult,
    RetryConfig,
    StageResult,
)

if TYPE_CHECKING:
    from pipeline.events import Observer

Ctx = PipelineContext[Any]  # what every stage receives: services, state, metrics


# -- the data flowing between stages ---------------------------------------------------------------
class AudioBundle(BaseModel, frozen=True):
    track: str
    duration_ms: int
    tempo_bpm: float
    has_vocals: bool
    sections: list[str]


class Profile(BaseModel, frozen=True):
    mood: str
    energy: float


class Lyrics(BaseModel, frozen=True):
    lines: list[str]


class MacroPlan(BaseModel, frozen=True):
    track: str
    duration_ms: int
    theme: str
    sections: list[str]
    groups: list[str]


class GroupContext(BaseModel, frozen=True):
    group: str
    theme: str
    sections: list[str]


class GroupPlan(BaseModel, frozen=True):
    group: str
    effects: list[str]


class RenderOutput(BaseModel, frozen=True):
    track: str
    theme: str
    groups: int
    effects: int
    frames: int


# -- injected services (reachable as ctx.provider and ctx.job_config) ------------------------------
class JobConfig(BaseModel, frozen=True):
    fps: int = 40
    display_groups: list[str]
    flaky_groups: list[str]  # their first planning call hits a simulated rate limit


class FakeLLM:
    """Stands in for a language-model provider: answers after a short delay."""

    async def complete(self, prompt: str, *, latency_s: float = 0.03) -> str:
        await anyio.sleep(latency_s)
        return f"<answer to {prompt!r}>"


# -- stages ----------------------------------------------------------------------------------------
class AudioAnalysisStage:
    @property
    def name(self) -> str:
        return "audio_analysis"

    async def execute(self, input: str, ctx: Ctx) -> StageResult[AudioBundle]:
        await anyio.sleep(0.06)  # decoding and beat tracking
        bundle = AudioBundle(
            track=input,
            duration_ms=184_000,
            tempo_bpm=124.0,
            has_vocals=True,
            sections=["intro", "verse", "chorus", "verse", "chorus", "outro"],
        )
        ctx.set_state("has_lyrics", bundle.has_vocals)  # read by the lyrics stage's condition
        ctx.add_metric("audio_duration_ms", bundle.duration_ms)
        return StageResult.success(bundle, stage_name=self.name)


class AudioProfileStage:
    @property
    def name(self) -> str:
        return "audio_profile"

    async def execute(self, input: AudioBundle, ctx: Ctx) -> StageResult[Profile]:
        llm: FakeLLM = ctx.provider
        await llm.complete(f"profile {input.track} at {input.tempo_bpm} bpm")
        ctx.increment_metric("llm_calls")
        return StageResult.success(Profile(mood="euphoric", energy=0.82), stage_name=self.name)


class LyricsStage:
    @property
    def name(self) -> str:
        return "lyrics"

    async def execute(self, input: AudioBundle, ctx: Ctx) -> StageResult[Lyrics]:
        await anyio.sleep(0.05)  # transcription
        lines = ["we light the sky", "one more time", "we light the sky"]
        return StageResult.success(Lyrics(lines=lines), stage_name=self.name)


class MacroPlannerStage:
    @property
    def name(self) -> str:
        return "macro_planner"

    async def execute(
        self, input: tuple[AudioBundle, Profile, Lyrics | None], ctx: Ctx
    ) -> StageResult[MacroPlan]:
        # Wired by the builder from a tuple of refs: the inputs arrive as a tuple, in order;
        # a skipped lyrics stage gives None.
        audio, profile, lyrics = input
        llm: FakeLLM = ctx.provider
        await llm.complete(f"macro plan for a {profile.mood} track", latency_s=0.04)
        ctx.increment_metric("llm_calls")
        job: JobConfig = ctx.job_config
        plan = MacroPlan(
            track=audio.track,
            duration_ms=audio.duration_ms,
            theme=f"{profile.mood} / {'lyric-driven' if lyrics else 'instrumental'}",
            sections=audio.sections,
            groups=job.display_groups,
        )
        return StageResult.success(plan, stage_name=self.name)


class GroupContextsStage:
    """Splits the macro plan into one context per display group: the fan-out's list input."""

    @property
    def name(self) -> str:
        return "group_contexts"

    async def execute(self, input: MacroPlan, ctx: Ctx) -> StageResult[list[GroupContext]]:
        theme, sections = input.theme, input.sections
        items = [GroupContext(group=g, theme=theme, sections=sections) for g in input.groups]
        return StageResult.success(items, stage_name=self.name)


class GroupPlannerStage:
    """Plans one display group (runs once per item). Flaky on purpose: see `flaky_groups`."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    @property
    def name(self) -> str:
        return "group_planner"

    async def execute(self, input: GroupContext, ctx: Ctx) -> StageResult[GroupPlan]:
        attempt = self.calls[input.group] = self.calls.get(input.group, 0) + 1
        llm: FakeLLM = ctx.provider
        await llm.complete(f"plan group {input.group}", latency_s=0.02)
        ctx.increment_metric("llm_calls")
        job: JobConfig = ctx.job_config
        if input.group in job.flaky_groups and attempt == 1:
            ctx.increment_metric("rate_limited_calls")
            return StageResult.failure(f"rate_limit: provider busy planning {input.group!r}")
        effects = [f"{section}:{input.group}" for section in input.sections]
        return StageResult.success(GroupPlan(group=input.group, effects=effects))


class RenderStage:
    @property
    def name(self) -> str:
        return "render"

    async def execute(
        self, input: tuple[MacroPlan, list[GroupPlan]], ctx: Ctx
    ) -> StageResult[RenderOutput]:
        plan, group_plans = input
        await anyio.sleep(0.05)  # writing the sequence file
        job: JobConfig = ctx.job_config
        output = RenderOutput(
            track=plan.track,
            theme=plan.theme,
            groups=len(group_plans),
            effects=sum(len(g.effects) for g in group_plans),
            frames=plan.duration_ms * job.fps // 1000,
        )
        ctx.add_metric("frames", output.frames)
        return StageResult.success(output, stage_name=self.name)


# -- the pipeline ----------------------------------------------------------------------------------
# Wired with the builder, so mypy --strict checks every edge: each `add` returns a typed
# `StageRef`, and handing a stage a ref of the wrong type (say `inputs=profile` to the macro
# planner) is a type error before anything runs. `build()` gives an ordinary PipelineDefinition.
_builder: PipelineBuilder[str] = PipelineBuilder("render")
audio = _builder.add("audio", AudioAnalysisStage())
# profile and lyrics depend only on audio: they run concurrently
profile = _builder.add("profile", AudioProfileStage(), inputs=audio)
lyrics = _builder.add(
    "lyrics",
    LyricsStage(),
    inputs=audio,
    pattern=ExecutionPattern.CONDITIONAL,
    condition=lambda ctx: bool(ctx.get_state("has_lyrics", False)),
    critical=False,  # no lyrics is fine: the macro planner goes instrumental
)
macro = _builder.add("macro", MacroPlannerStage(), inputs=(audio, profile, lyrics))
group_contexts = _builder.add("group_contexts", GroupContextsStage(), inputs=macro)
groups = _builder.fan_out(
    "groups",
    GroupPlannerStage(),  # once per display group, 3 at a time
    inputs=group_contexts,
    max_concurrent_fan_out=3,
    retry_config=RetryConfig(max_attempts=3, initial_delay_ms=25, retryable_errors=["rate_limit"]),
)
_builder.add("render", RenderStage(), inputs=(macro, groups))
PIPELINE = _builder.build()


def live_display() -> list[Observer]:
    """A live progress view when a terminal is attached and rich is installed, else nothing."""
    if not sys.stdout.isatty():
        return []
    try:
        from pipeline.observers.progress import ProgressObserver
    except ImportError:  # the `progress` extra is not installed: run without the display
        return []
    return [ProgressObserver()]


def print_report(result: PipelineResult) -> None:
    print(result.summary())  # stage, status, attempts, wait, duration, cache; critical path
    print(f"\nmetrics {result.metadata}")
    if result.success:
        out: RenderOutput = result.get_output("render")
        print(
            f"rendered {out.track!r}: theme {out.theme!r}, {out.groups} groups, "
            f"{out.effects} effects, {out.frames} frames"
        )


def make_context() -> PipelineContext[Any]:
    """The run's services: the fake LLM and a job with two flaky display groups.

    Also the `--context` factory of the file version of this example:
    `python -m pipeline run examples/render_pipeline.yaml --context examples.render_pipeline:make_context`.
    """
    job = JobConfig(
        display_groups=["roofline", "arches", "mega_tree", "windows", "yard_stakes"],
        flaky_groups=["arches", "windows"],
    )
    return PipelineContext(provider=FakeLLM(), job_config=job)


async def main() -> int:
    context = make_context()
    executor = PipelineExecutor(scheduling="eager", observers=live_display())
    result = await executor.execute(PIPELINE, "aurora_borealis.wav", context)
    print_report(result)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))

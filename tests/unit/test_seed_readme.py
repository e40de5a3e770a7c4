"""The original README's code samples, as close to their text as typing allows, run for real.

Only the import path changes (`twinklr.core.pipeline` -> `pipeline`); the stages are small fakes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineStage,
    StageDefinition,
    StageResult,
)
from pipeline.definition import RetryConfig

logger = logging.getLogger(__name__)


# -- small fakes standing in for the README's real stages ------------------------------------------


@dataclass(frozen=True)
class Timing:
    duration_ms: int


@dataclass(frozen=True)
class AudioBundle:
    path: str
    lyrics: str | None
    timing: Timing


async def analyze(path: str) -> AudioBundle:
    await anyio.lowlevel.checkpoint()
    lyrics = "la la la" if "song" in path else None
    return AudioBundle(path=path, lyrics=lyrics, timing=Timing(duration_ms=180_000))


class AudioAnalysisStage:
    """The README's stage from "Context State Management" (with types added)."""

    @property
    def name(self) -> str:
        return "audio"

    async def execute(self, input: str, context: PipelineContext[Any]) -> StageResult[AudioBundle]:
        bundle = await analyze(input)

        # Store state for downstream stages
        context.set_state("has_lyrics", bundle.lyrics is not None)
        context.add_metric("duration_ms", bundle.timing.duration_ms)

        return StageResult.success(bundle)


class AudioProfileStage:
    name = "profile"

    async def execute(
        self, input: AudioBundle, context: PipelineContext[Any]
    ) -> StageResult[dict[str, Any]]:
        return StageResult.success({"source": input.path, "energy": "high"})


class LyricsStage:
    """The README's LyricsStage: fails when the upstream stage found no lyrics."""

    name = "lyrics"

    async def execute(self, input: AudioBundle, context: PipelineContext[Any]) -> StageResult[str]:
        # Access state from upstream stage
        if not context.get_state("has_lyrics"):
            return StageResult.failure("No lyrics available")
        assert input.lyrics is not None
        return StageResult.success(input.lyrics.upper())


class MacroPlannerStage:
    name = "macro"

    def __init__(self) -> None:
        self.inputs: list[Any] = []

    async def execute(
        self, input: dict[str, Any], context: PipelineContext[Any]
    ) -> StageResult[str]:
        self.inputs.append(input)
        return StageResult.success(f"plan({sorted(input)})")


class GroupPlannerStage:
    name = "groups"

    async def execute(self, input: str, context: PipelineContext[Any]) -> StageResult[str]:
        return StageResult.success(f"plan for {input}")


# -- Basic Sequential Pipeline -------------------------------------------------------------------------


async def test_basic_sequential_pipeline() -> None:
    audio_path = "song.wav"
    context = PipelineContext()

    # Define stages
    pipeline = PipelineDefinition(
        name="my_pipeline",
        stages=[
            StageDefinition("audio", AudioAnalysisStage()),
            StageDefinition("profile", AudioProfileStage(), inputs=["audio"]),
        ],
    )

    # Execute
    executor = PipelineExecutor()
    result = await executor.execute(pipeline, audio_path, context)

    profile = None
    if result.success:
        profile = result.outputs["profile"]
    assert profile == {"source": "song.wav", "energy": "high"}
    assert result.metadata["duration_ms"] == 180_000


def test_basic_sequential_pipeline_on_trio() -> None:
    anyio.run(test_basic_sequential_pipeline, backend="trio")


# -- Parallel Stages ---------------------------------------------------------------------------------------


async def test_parallel_stages() -> None:
    macro = MacroPlannerStage()
    pipeline = PipelineDefinition(
        name="parallel",
        stages=[
            StageDefinition("audio", AudioAnalysisStage()),
            # These two run in parallel (both depend only on "audio")
            StageDefinition("profile", AudioProfileStage(), inputs=["audio"]),
            StageDefinition("lyrics", LyricsStage(), inputs=["audio"]),
            # This waits for both profile and lyrics
            StageDefinition("macro", macro, inputs=["profile", "lyrics"]),
        ],
    )
    assert pipeline.plan.waves == (("audio",), ("profile", "lyrics"), ("macro",))
    result = await PipelineExecutor().execute(pipeline, "song.wav", PipelineContext())
    assert result.success
    assert macro.inputs == [
        {"profile": {"source": "song.wav", "energy": "high"}, "lyrics": "LA LA LA"}
    ]
    assert result.outputs["macro"] == "plan(['lyrics', 'profile'])"


# -- Fan-Out Pattern -----------------------------------------------------------------------------------------


class GroupContextsStage:
    name = "group_contexts"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[list[str]]:
        return StageResult.success(["roofline", "tree", "arches"])


async def test_fan_out_pattern() -> None:
    groups = StageDefinition(
        id="groups",
        stage=GroupPlannerStage(),
        pattern=ExecutionPattern.FAN_OUT,
        inputs=["group_contexts"],  # Must be list
        retry_config=RetryConfig(max_attempts=2),
    )
    pipeline = PipelineDefinition(
        name="fan_out",
        stages=[StageDefinition("group_contexts", GroupContextsStage()), groups],
    )
    result = await PipelineExecutor().execute(pipeline)
    # The stage executes once per item, and returns a list of outputs.
    assert result.outputs["groups"] == ["plan for roofline", "plan for tree", "plan for arches"]


# -- Conditional Execution --------------------------------------------------------------------------------------


def conditional_pipeline() -> PipelineDefinition:
    return PipelineDefinition(
        name="conditional",
        stages=[
            StageDefinition("audio", AudioAnalysisStage()),
            StageDefinition(
                id="lyrics",
                stage=LyricsStage(),
                pattern=ExecutionPattern.CONDITIONAL,
                inputs=["audio"],
                condition=lambda ctx: ctx.get_state("has_lyrics", False),
                critical=False,  # Non-critical: pipeline continues if skipped
            ),
        ],
    )


async def test_conditional_execution_runs_when_lyrics_exist() -> None:
    result = await PipelineExecutor().execute(conditional_pipeline(), "song.wav")
    assert result.success
    assert result.outputs["lyrics"] == "LA LA LA"


async def test_conditional_execution_skips_without_lyrics() -> None:
    result = await PipelineExecutor().execute(conditional_pipeline(), "speech.wav")
    assert result.success
    assert result.skipped_stages == ["lyrics"]
    assert "lyrics" not in result.outputs


# -- Retry Configuration -------------------------------------------------------------------------------------------


async def test_retry_configuration() -> None:
    macro = StageDefinition(
        id="macro",
        stage=MacroPlannerStage(),
        retry_config=RetryConfig(
            max_attempts=3,
            initial_delay_ms=1000,
            backoff_multiplier=2.0,
            max_delay_ms=60000,
            retryable_errors=["timeout", "rate_limit"],  # Only retry these
        ),
    )
    assert macro.retry_config is not None
    assert macro.retry_config.is_retryable("upstream rate_limit hit")
    assert not macro.retry_config.is_retryable("bad prompt")
    pipeline = PipelineDefinition(name="retry", stages=[macro])
    result = await PipelineExecutor().execute(pipeline, {"brief": "x"})
    assert result.outputs == {"macro": "plan(['brief'])"}


# -- Context State Management ----------------------------------------------------------------------------------------


async def test_context_state_management() -> None:
    context = PipelineContext()
    pipeline = PipelineDefinition(
        name="state",
        stages=[
            StageDefinition("audio", AudioAnalysisStage()),
            StageDefinition("lyrics", LyricsStage(), inputs=["audio"]),
        ],
    )
    result = await PipelineExecutor().execute(pipeline, "speech.wav", context)
    assert context.get_state("has_lyrics") is False
    assert context.metrics["duration_ms"] == 180_000
    assert result.success is False  # fail-fast is the default
    assert result.get_result("lyrics").error == "No lyrics available"


class NamelessStage:
    """README stages in "Context State Management" have no `name`; they still run."""

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


async def test_stage_without_name_runs() -> None:
    pipeline = PipelineDefinition(
        name="nameless",
        # no `name` property: not a PipelineStage for a type checker, fine at runtime
        stages=[StageDefinition("s", NamelessStage())],  # type: ignore[arg-type]
    )
    result = await PipelineExecutor().execute(pipeline, 1)
    assert result.outputs == {"s": 1}
    assert result.get_result("s").stage_name == "s"


# -- Creating Custom Stages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MyInputType:
    text: str


@dataclass(frozen=True)
class MyOutputType:
    text: str
    model: str


class FakeProvider:
    def __init__(self, model: str) -> None:
        self.model = model

    async def complete(self, text: str) -> str:
        await anyio.lowlevel.checkpoint()
        if not text:
            raise ValueError("empty prompt")
        return text[::-1]


async def my_logic(input: MyInputType, provider: FakeProvider) -> MyOutputType:
    return MyOutputType(text=await provider.complete(input.text), model=provider.model)


class MyCustomStage:
    @property
    def name(self) -> str:
        return "my_stage"

    async def execute(
        self,
        input: MyInputType,
        context: PipelineContext[Any],
    ) -> StageResult[MyOutputType]:
        try:
            # Access dependencies
            provider = context.provider
            config = context.job_config
            assert config == {"temperature": 0}

            # Do work
            result = await my_logic(input, provider)

            # Track metrics
            context.add_metric("my_metric", 123)

            # Return success
            return StageResult.success(result, stage_name=self.name)

        except Exception as e:
            logger.exception("Stage failed", exc_info=e)
            return StageResult.failure(str(e), stage_name=self.name)


def test_custom_stage_satisfies_protocol() -> None:
    stage: PipelineStage[MyInputType, MyOutputType] = MyCustomStage()
    assert isinstance(stage, PipelineStage)


async def test_custom_stage_uses_context_services() -> None:
    context = PipelineContext(provider=FakeProvider("gpt"), job_config={"temperature": 0})
    pipeline = PipelineDefinition(name="custom", stages=[StageDefinition("s", MyCustomStage())])
    result = await PipelineExecutor().execute(pipeline, MyInputType("abc"), context)
    assert result.success
    assert result.outputs["s"] == MyOutputType(text="cba", model="gpt")
    assert result.get_result("s").stage_name == "my_stage"
    assert result.metadata["my_metric"] == 123


async def test_custom_stage_failure_path() -> None:
    context = PipelineContext(provider=FakeProvider("gpt"), job_config={"temperature": 0})
    pipeline = PipelineDefinition(name="custom", stages=[StageDefinition("s", MyCustomStage())])
    result = await PipelineExecutor().execute(pipeline, MyInputType(""), context)
    assert result.success is False
    assert result.get_result("s").error == "empty prompt"

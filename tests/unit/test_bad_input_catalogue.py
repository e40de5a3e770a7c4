"""A catalogue of misuse (SPEC 7): every bad argument, definition or runtime value, and its answer.

Construction misuse raises `DefinitionError` naming the owner and the field; definition misuse is
a validation issue; runtime misuse is a failed (or skipped / cancelled) stage, never a raise out
of `execute()`; cache misuse is an uncached value with a warning, never a partial entry.
Everything that runs a pipeline runs on asyncio and trio (sync tests calling `anyio.run`).
The awkward stages and values live in `tests/unit/_catalogue_support.py`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline import (
    ExecutionPattern,
    PipelineDefinition,
    PipelineExecutor,
    RetryConfig,
    StageDefinition,
    StageResult,
    StageStatus,
)
from pipeline.cache import MemoryCache
from pipeline.errors import DefinitionError, PipelineValidationError
from pipeline.testing import FakeClock, ScriptedStage
from tests.unit._catalogue_support import (
    RUN_LIMIT_S,
    STATUS_LISTS,
    BadBool,
    BadStrError,
    Body,
    Color,
    ExplodingField,
    Level,
    ManualClock,
    NoExecute,
    OkStage,
    Opaque,
    Recorder,
    Runtime,
    SyncStage,
    Tag,
    UnsetField,
    assert_names,
    async_condition_bad_bool,
    bad,
    condition_raises,
    counter,
    fail_fast_applied,
    fail_fast_sibling,
    generator,
    ok,
    ordered,
    overflowing_retry,
    overruns_without_checkpoint,
    raises,
    returns,
    run_uncached_twice,
    sd,
    skip_reason_names_input,
    sleeps_past_timeout,
    stray_cancel,
    waits_capped,
    with_backends,
)
from tests.unit._support import BACKENDS

if TYPE_CHECKING:
    from collections.abc import Callable

NAN, INF = math.nan, math.inf
FAN_OUT = ExecutionPattern.FAN_OUT


# -- construction: RetryConfig, StageDefinition, PipelineDefinition, PipelineExecutor -------------

RETRY_CASES = [
    bad("max_attempts", 0, "0"),
    bad("max_attempts", -1, "-1"),
    bad("max_attempts", 1.5, "1.5"),
    bad("max_attempts", True, "True"),
    bad("max_attempts", "3", "str"),
    bad("initial_delay_ms", -1, "-1"),
    bad("initial_delay_ms", NAN, "nan"),
    bad("initial_delay_ms", INF, "inf"),
    bad("initial_delay_ms", "1", "str"),
    bad("initial_delay_ms", True, "True"),
    bad("max_delay_ms", -5, "-5"),
    bad("backoff_multiplier", 0.5, "0.5"),
    bad("backoff_multiplier", INF, "inf"),
    bad("backoff_multiplier", NAN, "nan"),
    bad("backoff_multiplier", True, "True"),
    bad("retryable_errors", "timeout", "bare-str"),
    bad("retryable_errors", [1], "int-entry"),
    bad("retryable_errors", [ValueError], "class-entry"),
    bad("retryable_errors", [""], "empty-entry"),
]


@pytest.mark.parametrize(("kwargs", "field"), RETRY_CASES)
def test_retry_config_rejects(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        RetryConfig(**kwargs)
    assert_names(caught.value, owner="RetryConfig", field=field)


STAGE_BASE: dict[str, Any] = {"id": "x", "stage": OkStage()}
STAGE_CASES = [
    bad("id", "", "empty"),
    bad("id", 5, "int"),
    bad("stage", OkStage, "a-class"),
    bad("pattern", "fanout", "unknown-str"),
    bad("inputs", "a", "bare-str"),
    bad("inputs", [1], "int-entry"),
    bad("condition", 5, "not-callable"),
    bad("retry_config", {"max_attempts": 3}, "a-dict"),
    bad("timeout_ms", 0, "0"),
    bad("timeout_ms", -1, "-1"),
    bad("timeout_ms", NAN, "nan"),
    bad("timeout_ms", True, "True"),
    bad("timeout_ms", "5", "str"),
    bad("critical", "false", "str"),
    bad("max_concurrent_fan_out", -1, "-1"),
    bad("max_concurrent_fan_out", 2.5, "2.5"),
    bad("max_concurrent_fan_out", True, "True"),
    bad("description", 5, "int"),
    bad("cache", "yes", "str"),
    bad("cache_version", 1.5, "float"),
    bad("cache_version", None, "None"),
    bad("cache_version", object(), "object"),
    bad("cache_version", True, "True"),
    bad("cache_code_fingerprint", 1, "int"),
]


@pytest.mark.parametrize(("kwargs", "field"), STAGE_CASES)
def test_stage_definition_rejects(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        StageDefinition(**{**STAGE_BASE, **kwargs})
    if field == "id":  # the owner shows whatever id was given
        assert_names(caught.value, owner="StageDefinition", field=field, exact_owner=False)
    else:
        assert_names(caught.value, owner="StageDefinition 'x'", field=field)


def test_stage_class_instead_of_instance_says_to_instantiate() -> None:
    with pytest.raises(DefinitionError) as caught:
        StageDefinition("x", OkStage)  # type: ignore[arg-type]  # the misuse under test
    message = str(caught.value)
    assert "OkStage" in message
    assert "instan" in message.lower() or "OkStage()" in message, message


PIPELINE_BASE: dict[str, Any] = {"name": "p", "stages": [sd("a")]}
PIPELINE_CASES = [
    bad("name", "", "empty"),
    bad("name", None, "None"),
    bad("name", 5, "int"),
    bad("stages", None, "None"),
    bad("stages", "abc", "a-str"),
    bad("stages", [OkStage()], "a-stage-object"),
    bad("fail_fast", "no", "str"),
    bad("description", 5, "int"),
]


@pytest.mark.parametrize(("kwargs", "field"), PIPELINE_CASES)
def test_pipeline_definition_rejects(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        PipelineDefinition(**{**PIPELINE_BASE, **kwargs})
    if field == "name":
        assert_names(caught.value, owner="PipelineDefinition", field=field, exact_owner=False)
    else:
        assert_names(caught.value, owner="PipelineDefinition 'p'", field=field)


EXECUTOR_CASES = [
    bad("scheduling", "fast", "unknown"),
    bad("timeout_ms", 0, "0"),
    bad("timeout_ms", NAN, "nan"),
]


@pytest.mark.parametrize(("kwargs", "field"), EXECUTOR_CASES)
def test_executor_rejects(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        PipelineExecutor(**kwargs)
    assert_names(caught.value, owner="PipelineExecutor", field=field)


def test_the_tables_baselines_are_valid() -> None:
    """Control: each table's base arguments construct, so every rejection is the row's doing."""
    StageDefinition(**STAGE_BASE)
    PipelineDefinition(**PIPELINE_BASE).validate()
    RetryConfig()
    PipelineExecutor()


# -- validation: definitions that construct but cannot run -----------------------------------------

VALIDATION_CASES = [  # stages, issue code, its stage_id (any of), message prefix, words in it
    pytest.param(lambda: [sd("dup_stage"), sd("dup_stage")], "duplicate_id", ("dup_stage",), "Duplicate stage IDs: ", ("dup_stage",), id="duplicate-ids"),
    pytest.param(lambda: [sd("a"), sd("b", "x")], "unknown_input", ("b",), "Stage 'b' depends on unknown stage 'x'", (), id="unknown-input"),
    pytest.param(lambda: [sd("root"), sd("a", "root", "b"), sd("b", "a")], "cycle", ("a", "b"), "Circular dependency detected: a -> b -> a", (), id="cycle"),
    pytest.param(lambda: [sd("a"), sd("b"), sd("fan", "a", "b", pattern=FAN_OUT)], "fan_out_inputs", ("fan",), None, ("fan", "FAN_OUT"), id="fan-out-two-inputs"),
    pytest.param(lambda: [sd("c", pattern=ExecutionPattern.CONDITIONAL)], "missing_condition", ("c",), None, ("'c'", "condition"), id="conditional-without-condition"),
    pytest.param(lambda: [sd("s", stage=SyncStage())], "invalid_stage", ("s",), None, ("'s'", "async"), id="sync-execute"),
    pytest.param(lambda: [sd("s", stage=NoExecute())], "invalid_stage", ("s",), None, ("'s'", "execute"), id="stage-without-execute"),
    pytest.param(lambda: [sd("a", "b"), sd("b", "a")], "no_entry_points", (None,), None, ("entry",), id="no-entry-points"),
    pytest.param(list, "empty_pipeline", (None,), None, (), id="empty-stages"),
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("stages", "code", "stage_ids", "prefix", "mentions"), VALIDATION_CASES)
def test_invalid_definition(
    stages: Callable[[], list[StageDefinition]],
    code: str,
    stage_ids: tuple[str | None, ...],
    prefix: str | None,
    mentions: tuple[str, ...],
    backend: str,
) -> None:
    """Constructs; validate() raises with a structured issue; execute() returns a failed result."""
    pipeline = PipelineDefinition("p", stages())
    messages = pipeline.validate_pipeline()
    with pytest.raises(PipelineValidationError) as caught:
        pipeline.validate()
    issues = [issue for issue in caught.value.issues if issue.code == code]
    assert issues, [issue.code for issue in caught.value.issues]
    issue = issues[0]
    assert issue.stage_id in stage_ids
    assert issue.message in messages
    if prefix is not None:
        assert issue.message.startswith(prefix), issue.message
    for word in mentions:
        assert word in issue.message, issue.message

    async def run() -> None:
        with anyio.fail_after(RUN_LIMIT_S):
            result = await PipelineExecutor().execute(pipeline)
        assert result.success is False
        assert result.failed_stages == ["validation"]
        assert result.metadata["validation_errors"] == messages

    anyio.run(run, backend=backend)


UNKNOWN_INPUT_CASES = [
    pytest.param(lambda: [sd("load"), sd("b", "lodr")], "lodr", "'load'", id="typo-suggests-match"),
    pytest.param(
        lambda: [*(sd(f"stage_{i}") for i in range(5000)), sd("b", "stage_x")],
        "stage_x", None, id="5000-stages-stays-short",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("stages", "unknown", "suggestion"), UNKNOWN_INPUT_CASES)
def test_unknown_input_message_suggests_few_matches(
    stages: Callable[[], list[StageDefinition]], unknown: str, suggestion: str | None
) -> None:
    (message,) = PipelineDefinition("p", stages()).validate_pipeline()
    assert message.startswith(f"Stage 'b' depends on unknown stage '{unknown}'"), message
    assert len(message) < 300, message
    if suggestion is not None:
        assert suggestion in message, message


# -- runtime: execute() never raises; each misuse is one stage's outcome ---------------------------


RUNTIME_CASES = [  # Runtime(stages, stage to look at, its status, run success, error prefix / words)
    pytest.param(Runtime(lambda: [sd("x", stage=ok(), condition=condition_raises)],
                         "x", StageStatus.FAILED, False, mentions=("ConditionBoomError",)), id="condition-raises"),
    pytest.param(Runtime(lambda: [sd("x", stage=ok(), condition=lambda ctx: BadBool())],
                         "x", StageStatus.FAILED, False, mentions=("BoolBoomError",)), id="condition-bool-raises"),
    pytest.param(Runtime(lambda: [sd("x", stage=ok(), condition=async_condition_bad_bool)],
                         "x", StageStatus.FAILED, False, mentions=("BoolBoomError",)), id="async-condition-bool-raises"),
    pytest.param(Runtime(lambda: [sd("sloppy_stage", stage=returns(42))],
                         "sloppy_stage", StageStatus.FAILED, False, mentions=("sloppy_stage", "StageResult")), id="returns-non-stage-result"),
    pytest.param(Runtime(lambda: [sd("x", stage=raises(BadStrError()))],
                         "x", StageStatus.FAILED, False, prefix="BadStrError"), id="exception-str-raises"),
    pytest.param(Runtime(lambda: [sd("src", stage=ok(5)), sd("fan", "src", pattern=FAN_OUT)],
                         "fan", StageStatus.FAILED, False, mentions=("FAN_OUT requires list input, got int",)), id="fan-out-int-input"),
    pytest.param(Runtime(lambda: [sd("x", stage=Body(stray_cancel))],
                         "x", StageStatus.FAILED, False, prefix="CancelledError"), id="stray-cancelled-error"),
    pytest.param(Runtime(lambda: [sd("x", stage=returns(StageResult.cancelled("x"))), sd("after", "x")],
                         "x", StageStatus.CANCELLED, False, check=fail_fast_applied), id="critical-returns-cancelled"),
    pytest.param(Runtime(lambda: [sd("src", stage=ok([1, 2]), condition=lambda ctx: False), sd("fan", "src", pattern=FAN_OUT)],
                         "fan", StageStatus.SKIPPED, True, check=skip_reason_names_input), id="fan-out-input-skipped"),
    pytest.param(Runtime(lambda: overflowing_retry(10),
                         "flaky", StageStatus.FAILED, False, mentions=("Failed after 2000 attempts",), check=waits_capped), id="backoff-overflow-int"),
    pytest.param(Runtime(lambda: overflowing_retry(10.0),
                         "flaky", StageStatus.FAILED, False, mentions=("Failed after 2000 attempts",), check=waits_capped), id="backoff-overflow-float"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "backend"), with_backends(RUNTIME_CASES, asyncio_only=["stray-cancelled-error"])
)
def test_runtime_misuse_is_a_stage_outcome(case: Runtime, backend: str) -> None:
    async def run() -> None:
        clock = FakeClock()
        with anyio.fail_after(RUN_LIMIT_S):
            result = await PipelineExecutor(clock=clock).execute(
                PipelineDefinition("p", case.stages())
            )
        stage_result = result.get_result(case.sid)
        assert stage_result.status is case.status, stage_result
        assert result.success is case.run_success
        assert case.sid in getattr(result, STATUS_LISTS[case.status])
        assert case.sid not in result.outputs or case.status is StageStatus.SKIPPED
        if case.status is not StageStatus.SKIPPED:
            assert stage_result.error
            if case.prefix is not None:
                assert stage_result.error.startswith(case.prefix), stage_result.error
            for word in case.mentions:
                assert word in stage_result.error, stage_result.error
        if case.check is not None:
            case.check(result, clock)

    anyio.run(run, backend=backend)


DELAY_CASES = [
    pytest.param({"initial_delay_ms": 1, "backoff_multiplier": 10, "max_delay_ms": 5}, 5, id="int-multiplier"),
    pytest.param({"initial_delay_ms": 1, "backoff_multiplier": 10.0, "max_delay_ms": 5}, 5, id="float-multiplier"),
    pytest.param({}, 60000, id="defaults"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "cap"), DELAY_CASES)
def test_backoff_delay_is_capped_without_overflow(kwargs: dict[str, Any], cap: float) -> None:
    config = RetryConfig(max_attempts=2000, **kwargs)
    assert config.delay_ms(5000) == cap
    assert config.delay_ms(10**6) == cap


# -- cache: a value that cannot be cached faithfully is run uncached, with a warning ----------------

CACHE_INPUT_CASES = [
    pytest.param(UnsetField, None, id="dataclass-unset-field"),
    pytest.param(lambda: ExplodingField(1), None, id="dataclass-field-raises"),
    pytest.param(Opaque, None, id="no-json-form"),
    pytest.param(lambda: iter([1, 2, 3]), [1, 2, 3], id="iterator"),
    pytest.param(generator, [1, 2, 3], id="generator"),
]


@pytest.mark.parametrize(("make_input", "drained", "backend"), with_backends(CACHE_INPUT_CASES))
def test_input_without_fingerprint_runs_uncached(
    make_input: Callable[[], Any], drained: list[int] | None, backend: str
) -> None:
    """The stage runs and succeeds uncached with a warning; a rerun executes it again."""
    stage = Recorder()
    runs = run_uncached_twice(stage, make_input, backend)
    assert [run.output for run in runs] == ["ok", "ok"]
    if drained is not None:  # the fingerprint did not consume the iterator
        assert stage.drained == [drained, drained]


CACHE_OUTPUT_CASES = [
    pytest.param(lambda: Color.RED, "Color", id="StrEnum-member"),
    pytest.param(lambda: Level.HIGH, "Level", id="IntEnum-member"),
    pytest.param(counter, "Counter", id="Counter"),
    pytest.param(ordered, "OrderedDict", id="OrderedDict"),
    pytest.param(lambda: Tag("v1"), "Tag", id="str-subclass"),
    pytest.param(lambda: "\ud800", "str", id="lone-surrogate-str"),  # not valid UTF-8 JSON
]


@pytest.mark.parametrize(("make_output", "type_name", "backend"), with_backends(CACHE_OUTPUT_CASES))
def test_output_that_changes_type_is_not_cached(
    make_output: Callable[[], Any], type_name: str, backend: str
) -> None:
    """No output_type declared: the value would come back as plain data, so it is not stored."""
    expected = make_output()
    for run in run_uncached_twice(Recorder(output=make_output), lambda: 1, backend):
        assert type(run.output) is type(expected)
        assert run.output == expected
        assert any(type_name in warning for warning in run.warnings), run.warnings


@pytest.mark.parametrize("backend", BACKENDS)
def test_lone_surrogate_input_is_fingerprinted_exactly(backend: str) -> None:
    """A str with a lone surrogate is a valid input with one exact fingerprint (not UTF-8, but
    surrogatepass-encodable): it is served again and never confused with U+FFFD.
    """

    async def run() -> None:
        store = MemoryCache()
        stage = Recorder()
        executor = PipelineExecutor(cache=store)
        pipeline = PipelineDefinition("p", [StageDefinition("s", stage)])
        with anyio.fail_after(RUN_LIMIT_S):
            first = await executor.execute(pipeline, "\ud800")
            again = await executor.execute(pipeline, "\ud800")
            other = await executor.execute(pipeline, "\ufffd")
        assert first.success
        assert again.success
        assert other.success
        assert again.stage_runs["s"].cached is True
        assert other.stage_runs["s"].cached is False
        assert stage.received == ["\ud800", "\ufffd"]

    anyio.run(run, backend=backend)


NOTHING_STORED_CASES = [
    pytest.param(
        lambda clock: [sd("s", stage=returns(StageResult.failure("bad")))],
        "s", StageStatus.FAILED, FakeClock, id="returns-failure",
    ),
    pytest.param(
        lambda clock: [sd("s", stage=raises(ValueError("bad")))],
        "s", StageStatus.FAILED, FakeClock, id="raises",
    ),
    pytest.param(
        lambda clock: [sd("s", stage=returns(StageResult.cancelled("stop")))],
        "s", StageStatus.CANCELLED, FakeClock, id="returns-cancelled",
    ),
    pytest.param(fail_fast_sibling, "slow", StageStatus.CANCELLED, FakeClock, id="cancelled-by-fail-fast"),
    pytest.param(sleeps_past_timeout, "slow", StageStatus.FAILED, FakeClock, id="timed-out"),
    pytest.param(
        overruns_without_checkpoint, "slow", StageStatus.FAILED, ManualClock,
        id="timed-out-without-checkpoint",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stages", "sid", "status", "make_clock", "backend"), with_backends(NOTHING_STORED_CASES)
)
def test_unsuccessful_stage_stores_nothing(
    stages: Callable[[Any], list[StageDefinition]],
    sid: str,
    status: StageStatus,
    make_clock: Callable[[], Any],
    backend: str,
) -> None:
    """Failed, cancelled and timed-out stages leave the store empty, run after run."""

    async def run() -> None:
        store = MemoryCache()
        clock = make_clock()
        executor = PipelineExecutor(cache=store, clock=clock)
        pipeline = PipelineDefinition("p", stages(clock))
        for _ in range(2):
            with anyio.fail_after(RUN_LIMIT_S):
                result = await executor.execute(pipeline)
            assert result.success is False
            assert result.get_result(sid).status is status
            assert sid not in result.outputs
            assert result.stage_runs[sid].cached is False
            assert result.cache_stats is not None
            assert result.cache_stats.writes == 0
            assert await store.count() == 0

    anyio.run(run, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_control_a_plain_success_is_cached(backend: str) -> None:
    """Control for the cache tables: with the same set-up a plain output is stored and served."""

    async def run() -> None:
        store = MemoryCache()
        stage = Recorder()
        executor = PipelineExecutor(cache=store)
        pipeline = PipelineDefinition("p", [StageDefinition("s", stage)])
        with anyio.fail_after(RUN_LIMIT_S):
            await executor.execute(pipeline, 1)
            again = await executor.execute(pipeline, 1)
        assert stage.calls == 1
        assert again.stage_runs["s"].cached is True
        assert again.stage_runs["s"].cache_warnings == ()
        assert await store.count("s") == 1

    anyio.run(run, backend=backend)


# -- testing helpers and the CLI -------------------------------------------------------------------


class _Plain:
    """A stage returning a bare value instead of a StageResult."""

    name = "plain"

    async def execute(self, input: Any, context: Any) -> Any:
        return 42


async def test_testing_helpers_refuse_misuse_naming_what_and_how() -> None:
    import math

    from pipeline import PipelineContext, StageOutputError
    from pipeline.testing import run_stage

    with pytest.raises(TypeError, match="run_stage: pass either context= or state"):
        await run_stage(ScriptedStage(1), None, context=PipelineContext(), state={"k": 1})
    with pytest.raises(StageOutputError, match="stage 'plain' returned int, expected StageResult"):
        await run_stage(_Plain(), None)
    clock = FakeClock()
    with pytest.raises(RuntimeError, match="async with"):
        await clock.sleep(1.0)  # not entered: nothing would move its time
    async with clock:
        with pytest.raises(ValueError, match=r"FakeClock\.sleep\(nan\)"):
            await clock.sleep(math.nan)
    exhausted = ScriptedStage(1, name="once")
    await run_stage(exhausted, None)
    with pytest.raises(AssertionError, match="once"):
        await run_stage(exhausted, None)  # its script has run out


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        pytest.param(["validate", "no_colon"], "no_colon", id="reference-without-colon"),
        pytest.param(["validate", "no_such_module_x:P"], "no_such_module_x", id="missing-module"),
        pytest.param(["graph", "json:NOPE"], "json:NOPE", id="missing-attribute"),
        pytest.param(["run", "json:loads", "--input", "{bad"], "json:loads", id="not-a-pipeline"),
    ],
)
def test_cli_misuse_is_one_line_and_exit_2(
    argv: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert names in err
    assert "Traceback" not in err

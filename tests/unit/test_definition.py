"""Definitions: argument checks, validation messages and issues, lookups and the wave plan."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import (
    DefinitionError,
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineValidationError,
    RetryConfig,
    StageDefinition,
    StageResult,
)
from pipeline.definition import RetryConfig as RetryConfigFromDefinition


class Echo:
    """A stage returning its input."""

    name = "echo"

    async def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


class NoExecute:
    name = "broken"


class SyncExecute:
    name = "sync"

    def execute(self, input: Any, context: PipelineContext[Any]) -> StageResult[Any]:
        return StageResult.success(input)


def sd(sid: str, *inputs: str, **kwargs: Any) -> StageDefinition:
    return StageDefinition(sid, Echo(), inputs=list(inputs), **kwargs)


def always(ctx: PipelineContext[Any]) -> bool:
    return True


# -- RetryConfig ------------------------------------------------------------------------------------


def test_retry_config_defaults_follow_readme() -> None:
    cfg = RetryConfig()
    assert cfg.max_attempts == 1
    assert cfg.initial_delay_ms == 1000
    assert cfg.backoff_multiplier == 2.0
    assert cfg.max_delay_ms == 60000
    assert cfg.retryable_errors is None


def test_retry_config_importable_from_definition_module() -> None:
    assert RetryConfigFromDefinition is RetryConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"initial_delay_ms": -1}, "initial_delay_ms"),
        ({"initial_delay_ms": float("nan")}, "initial_delay_ms"),
        ({"max_delay_ms": -0.5}, "max_delay_ms"),
        ({"max_delay_ms": float("inf")}, "max_delay_ms"),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
        ({"retryable_errors": "timeout"}, "retryable_errors"),
    ],
)
def test_retry_config_rejects_bad_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        RetryConfig(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_retry_config_zero_delays_are_allowed() -> None:
    cfg = RetryConfig(max_attempts=3, initial_delay_ms=0, max_delay_ms=0)
    assert cfg.delay_ms(1) == 0


def test_retry_config_delay_formula_and_cap() -> None:
    cfg = RetryConfig(
        max_attempts=6, initial_delay_ms=100, backoff_multiplier=3.0, max_delay_ms=1000
    )
    assert [cfg.delay_ms(n) for n in range(1, 6)] == [100, 300, 900, 1000, 1000]


def test_retry_config_retryable_matching() -> None:
    cfg = RetryConfig(max_attempts=2, retryable_errors=["timeout", "RateLimitError"])
    assert cfg.is_retryable("Request TIMEOUT after 3s")
    assert cfg.is_retryable("slow down", "RateLimitError")
    assert not cfg.is_retryable("bad request", "ValueError")
    assert RetryConfig(max_attempts=2).is_retryable("anything")
    assert RetryConfig(max_attempts=2, retryable_errors=[]).is_retryable("anything")


def test_retry_config_is_frozen() -> None:
    cfg = RetryConfig()
    with pytest.raises(AttributeError):
        cfg.max_attempts = 5  # type: ignore[misc]


# -- StageDefinition --------------------------------------------------------------------------------


def test_stage_definition_positional_id_and_stage() -> None:
    stage = Echo()
    d = StageDefinition("audio", stage)
    assert d.id == "audio"
    assert d.stage is stage
    assert d.pattern is ExecutionPattern.SEQUENTIAL
    assert tuple(d.inputs) == ()
    assert d.condition is None
    assert d.retry_config is None
    assert d.timeout_ms is None
    assert d.critical is True
    assert d.max_concurrent_fan_out == 4
    assert d.description is None
    assert d.input_type is None
    assert d.output_type is None


def test_stage_definition_keyword_id_and_stage() -> None:
    d = StageDefinition(id="x", stage=Echo(), inputs=["a", "b"], description="doc")
    assert d.id == "x"
    assert tuple(d.inputs) == ("a", "b")
    assert d.description == "doc"


def test_stage_definition_accepts_pattern_string() -> None:
    d = StageDefinition("x", Echo(), pattern="fan_out")  # type: ignore[arg-type]
    assert d.pattern is ExecutionPattern.FAN_OUT


def test_execution_pattern_is_string_valued() -> None:
    assert isinstance(ExecutionPattern.FAN_OUT, str)
    assert ExecutionPattern("fan_out") is ExecutionPattern.FAN_OUT
    assert {p.value for p in ExecutionPattern} == {
        "sequential",
        "parallel",
        "fan_out",
        "conditional",
    }


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"id": ""}, "id"),
        ({"id": "   "}, "id"),
        ({"inputs": "audio"}, "inputs"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"timeout_ms": -5}, "timeout_ms"),
        ({"max_concurrent_fan_out": -1}, "max_concurrent_fan_out"),
        ({"condition": True}, "condition"),
        ({"pattern": "bogus"}, "pattern"),
        ({"timeout_ms": "50"}, "timeout_ms"),
        ({"inputs": None}, "inputs"),
        ({"inputs": [1]}, "inputs"),
        # a dict instead of RetryConfig used to crash execute() from inside the run
        ({"retry_config": {"max_attempts": 3}}, "retry_config"),
    ],
)
def test_stage_definition_rejects_bad_values(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"id": "s", "stage": Echo(), **kwargs}
    with pytest.raises(DefinitionError) as info:
        StageDefinition(**args)
    assert info.value.field == field
    assert field in str(info.value)


def test_stage_definition_unlimited_fan_out_values_allowed() -> None:
    assert StageDefinition("a", Echo(), max_concurrent_fan_out=None).max_concurrent_fan_out is None
    assert StageDefinition("a", Echo(), max_concurrent_fan_out=0).max_concurrent_fan_out == 0


# -- validation ---------------------------------------------------------------------------------------


def test_valid_pipeline_has_no_problems() -> None:
    p = PipelineDefinition("ok", [sd("a"), sd("b", "a"), sd("c", "a", "b")])
    assert p.validate_pipeline() == []
    p.validate()  # does not raise


def test_constructing_invalid_definition_does_not_raise() -> None:
    p = PipelineDefinition("bad", [sd("a", "b"), sd("b", "a"), sd("a", "ghost")])
    assert len(p.validate_pipeline()) >= 3


def test_duplicate_ids() -> None:
    p = PipelineDefinition("p", [sd("a"), sd("a")])
    (msg,) = p.validate_pipeline()
    assert msg.startswith("Duplicate stage IDs: 'a'")


def test_unknown_input() -> None:
    p = PipelineDefinition("p", [sd("a"), sd("b", "ghost")])
    (msg,) = p.validate_pipeline()
    assert msg.startswith("Stage 'b' depends on unknown stage 'ghost'")


def test_cycle_reports_path() -> None:
    p = PipelineDefinition("p", [sd("root"), sd("a", "root", "b"), sd("b", "a")])
    messages = p.validate_pipeline()
    assert len(messages) == 1
    assert messages[0].startswith(
        ("Circular dependency detected: a -> b -> a", "Circular dependency detected: b -> a -> b")
    )


def test_two_stage_cycle_path_is_a_b_a() -> None:
    p = PipelineDefinition("p", [sd("root"), sd("b", "a"), sd("a", "b")])
    (issue,) = p.issues
    assert issue.code == "cycle"
    assert issue.cycle[0] == issue.cycle[-1]
    assert set(issue.cycle) == {"a", "b"}
    assert " -> ".join(issue.cycle) in issue.message


def test_self_cycle() -> None:
    p = PipelineDefinition("p", [sd("root"), sd("a", "a")])
    (msg,) = p.validate_pipeline()
    assert "a -> a" in msg


def test_no_entry_points() -> None:
    p = PipelineDefinition("p", [sd("a", "b"), sd("b", "a")])
    messages = p.validate_pipeline()
    assert any("entry point" in m for m in messages)
    assert any("a -> b -> a" in m or "b -> a -> b" in m for m in messages)


def test_empty_pipeline_is_invalid() -> None:
    p = PipelineDefinition("p", [])
    (issue,) = p.issues
    assert issue.code == "empty_pipeline"


def test_fan_out_with_two_inputs() -> None:
    p = PipelineDefinition(
        "p", [sd("a"), sd("b"), sd("f", "a", "b", pattern=ExecutionPattern.FAN_OUT)]
    )
    (msg,) = p.validate_pipeline()
    assert "FAN_OUT" in msg
    assert "'f'" in msg


def test_fan_out_with_one_or_no_input_is_fine() -> None:
    p = PipelineDefinition(
        "p",
        [
            sd("a", pattern=ExecutionPattern.FAN_OUT),
            sd("f", "a", pattern=ExecutionPattern.FAN_OUT),
        ],
    )
    assert p.validate_pipeline() == []


def test_conditional_without_condition() -> None:
    p = PipelineDefinition("p", [sd("a", pattern=ExecutionPattern.CONDITIONAL)])
    (msg,) = p.validate_pipeline()
    assert "CONDITIONAL" in msg
    assert "condition" in msg


def test_conditional_with_condition_is_fine() -> None:
    p = PipelineDefinition("p", [sd("a", pattern=ExecutionPattern.CONDITIONAL, condition=always)])
    assert p.validate_pipeline() == []


def test_stage_without_execute() -> None:
    p = PipelineDefinition("p", [StageDefinition("a", NoExecute())])  # type: ignore[arg-type]
    (msg,) = p.validate_pipeline()
    assert "'a'" in msg
    assert "execute" in msg


def test_stage_with_sync_execute() -> None:
    p = PipelineDefinition("p", [StageDefinition("a", SyncExecute())])  # type: ignore[arg-type]
    (msg,) = p.validate_pipeline()
    assert "async" in msg


def test_every_problem_is_reported_at_once() -> None:
    p = PipelineDefinition(
        "p",
        [
            sd("a"),
            sd("a"),
            sd("b", "ghost"),
            sd("c", "d"),
            sd("d", "c"),
            sd("f", "a", "b", pattern=ExecutionPattern.FAN_OUT),
            sd("g", pattern=ExecutionPattern.CONDITIONAL),
            StageDefinition("h", NoExecute()),  # type: ignore[arg-type]
        ],
    )
    codes = {issue.code for issue in p.issues}
    assert codes == {
        "duplicate_id",
        "unknown_input",
        "cycle",
        "fan_out_inputs",
        "missing_condition",
        "invalid_stage",
    }
    assert len(p.validate_pipeline()) == len(p.issues)


def test_validate_raises_with_structured_issues() -> None:
    p = PipelineDefinition("broken", [sd("a"), sd("a"), sd("b", "ghost")])
    with pytest.raises(PipelineValidationError) as info:
        p.validate()
    err = info.value
    assert err.pipeline == "broken"
    assert [(i.code, i.stage_id) for i in err.issues] == [
        ("duplicate_id", "a"),
        ("unknown_input", "b"),
    ]
    assert "broken" in str(err)
    for issue in err.issues:
        assert issue.message in str(err)


def test_pipeline_wide_issue_has_no_stage_id() -> None:
    p = PipelineDefinition("p", [sd("a", "b"), sd("b", "a")])
    entry = [i for i in p.issues if i.code == "no_entry_points"]
    assert len(entry) == 1
    assert entry[0].stage_id is None


# -- lookups and plan -------------------------------------------------------------------------------------


def _diamond() -> PipelineDefinition:
    return PipelineDefinition(
        "diamond",
        [sd("a"), sd("b", "a"), sd("c", "a"), sd("d", "b", "c"), sd("e"), sd("f", "e", "d")],
    )


def test_pipeline_definition_defaults() -> None:
    p = PipelineDefinition("p", [sd("a")])
    assert p.fail_fast is True
    assert p.description is None


def test_get_stage() -> None:
    p = _diamond()
    assert p.get_stage("c").id == "c"
    with pytest.raises(KeyError) as info:
        p.get_stage("zz")
    assert "zz" in str(info.value)
    assert "'a'" in str(info.value)


def test_get_entry_points() -> None:
    assert [s.id for s in _diamond().get_entry_points()] == ["a", "e"]


def test_plan_waves() -> None:
    plan = _diamond().plan
    assert plan.waves == (("a", "e"), ("b", "c"), ("d",), ("f",))
    assert plan.wave_of == {"a": 0, "e": 0, "b": 1, "c": 1, "d": 2, "f": 3}
    assert plan.order == ("a", "e", "b", "c", "d", "f")


def test_plan_predecessors_successors_downstream() -> None:
    plan = _diamond().plan
    assert plan.predecessors["d"] == ("b", "c")
    assert plan.predecessors["f"] == ("e", "d")
    assert plan.successors["a"] == ("b", "c")
    assert plan.successors["f"] == ()
    assert plan.downstream("b") == ("d", "f")
    assert plan.downstream("a") == ("b", "c", "d", "f")
    assert plan.downstream("f") == ()


def test_wave_is_one_more_than_deepest_input() -> None:
    # "late" depends on an entry point and on a deep stage: its wave follows the deep one
    p = PipelineDefinition("p", [sd("a"), sd("b", "a"), sd("c", "b"), sd("late", "a", "c")])
    assert p.plan.wave_of["late"] == 3


def test_plan_of_invalid_definition_raises() -> None:
    p = PipelineDefinition("p", [sd("a", "b"), sd("b", "a")])
    with pytest.raises(PipelineValidationError):
        _ = p.plan


def test_entry_that_is_not_a_stage_definition_is_a_definition_error() -> None:
    # SPEC 7 moved this from validation to construction: a list holding a bare stage object
    # is a wiring mistake no run could start from, so it fails where it is written.
    class Bare:
        name = "bare"

        async def execute(self, input: object, context: object) -> StageResult[None]:
            return StageResult.success(None)

    with pytest.raises(DefinitionError) as caught:
        PipelineDefinition("p", [Bare()])  # type: ignore[list-item]  # the mistake under test
    assert caught.value.owner == "PipelineDefinition 'p'"
    assert caught.value.field == "stages[0]"
    assert "is an instance of Bare, not a StageDefinition" in str(caught.value)
    assert 'StageDefinition("some_id", <the Bare>)' in str(caught.value)


def test_init_signature_matches_the_dataclass_fields() -> None:
    """`StageDefinition.__init__` is written by hand (for speed): same names, order, defaults."""
    import dataclasses
    import inspect

    params = list(inspect.signature(StageDefinition.__init__).parameters.values())[1:]
    fields = [f for f in dataclasses.fields(StageDefinition) if f.init]
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        if f.default is not dataclasses.MISSING:
            assert p.default == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert p.default is None, f.name  # None stands for a fresh default_factory() value
        else:
            assert p.default is inspect.Parameter.empty, f.name
        assert (p.kind is inspect.Parameter.KEYWORD_ONLY) == f.kw_only, f.name


def test_replace_and_equality_survive_the_hand_written_init() -> None:
    import dataclasses

    first = StageDefinition("a", Echo(), inputs=["x"], uses={"api": 2})
    second = dataclasses.replace(first, timeout_ms=5.0)
    assert second.inputs == ("x",)
    assert second.uses == {"api": 2}
    assert second.timeout_ms == 5.0
    assert dataclasses.replace(second, timeout_ms=None) == first
    assert StageDefinition("b", Echo()).uses == {}
    assert StageDefinition("b", Echo()).uses is not StageDefinition("c", Echo()).uses

"""Typed wiring (SPEC section 10): the edge type checks of validation (`pipeline._types`).

Validation tests are plain sync tests (nothing runs); the one run here is on both backends.
`PipelineExecutor(validate_outputs=True)` is tested in `test_outputs.py`.
"""

from __future__ import annotations

import logging
import sys
import typing
from typing import Any, NotRequired, TypedDict

import pytest
from hypothesis import given, settings, strategies as st
from pydantic import BaseModel

from pipeline import (
    ExecutionPattern,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineStage,
    PipelineValidationError,
    StageDefinition,
    StageResult,
    ValidationIssue,
    _types as types_module,
    stage,
)
from pipeline.builder import TupleInputStage
from pipeline.testing import record_run
from tests.unit._support import on_both_backends

# -- stages and types ----------------------------------------------------------------------------


class Row(BaseModel):
    n: int


class SpecialRow(Row):
    pass


class Pair(TypedDict):
    load: list[int]
    count: int


class PairWithNote(TypedDict):
    load: list[int]
    count: int
    note: NotRequired[str]


class PairModel(BaseModel):
    load: list[int]
    count: int


@stage
async def load(x: Any, ctx: PipelineContext[Any]) -> list[int]:
    return [1, 2, 3]


@stage
async def load_words(x: Any, ctx: PipelineContext[Any]) -> list[str]:
    return ["a", "b"]


@stage
async def count(x: str, ctx: PipelineContext[Any]) -> int:
    return len(x)


@stage
async def total(x: list[int], ctx: PipelineContext[Any]) -> int:
    return sum(x)


@stage
async def square(x: int, ctx: PipelineContext[Any]) -> int:
    return x * x


@stage
async def shout(x: str, ctx: PipelineContext[Any]) -> str:
    return x.upper()


@stage
async def maybe(x: Any, ctx: PipelineContext[Any]) -> int | None:
    return None


@stage
async def optional_int(x: int | None, ctx: PipelineContext[Any]) -> int:
    return x or 0


@stage
async def special(x: Any, ctx: PipelineContext[Any]) -> SpecialRow:
    return SpecialRow(n=1)


@stage
async def takes_row(x: Row, ctx: PipelineContext[Any]) -> int:
    return x.n


@stage
async def takes_special(x: SpecialRow, ctx: PipelineContext[Any]) -> int:
    return x.n


@stage
async def join(x: Pair, ctx: PipelineContext[Any]) -> int:
    return sum(x["load"]) + x["count"]


@stage
async def join_with_note(x: PairWithNote, ctx: PipelineContext[Any]) -> int:
    return x["count"]


@stage
async def join_model(x: PairModel, ctx: PipelineContext[Any]) -> int:
    return x.count


@stage
async def anything(x: Any, ctx: PipelineContext[Any]) -> Any:
    return x


@stage
async def untyped(x, ctx):  # type: ignore[no-untyped-def]  # unannotated on purpose
    return x


@stage
async def returns_int_result(x: Any, ctx: PipelineContext[Any]) -> StageResult[int]:
    return StageResult.success(1)


class Count:
    """A class stage: `execute(input: str) -> StageResult[int]`."""

    name = "count"

    async def execute(self, input: str, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(len(input))


class Words(PipelineStage[str, list[str]]):
    """Declares its types only through its `PipelineStage[In, Out]` base."""

    name = "words"

    async def execute(self, input, context, /):  # type: ignore[no-untyped-def]  # typed by the base
        return StageResult.success(str(input).split())


class Loose:
    """A class stage without annotations."""

    name = "loose"

    async def execute(self, input, context):  # type: ignore[no-untyped-def]  # on purpose
        return StageResult.success(input)


def pipeline_of(*stages: StageDefinition) -> PipelineDefinition:
    return PipelineDefinition("typed", list(stages))


def mismatches(definition: PipelineDefinition) -> list[ValidationIssue]:
    return [i for i in definition.issues if i.code == "type_mismatch"]


# -- one input -------------------------------------------------------------------------------------


def test_a_mismatched_edge_names_both_stages_both_types_and_the_fix() -> None:
    d = pipeline_of(StageDefinition("load", load), StageDefinition("count", count, inputs=["load"]))
    [issue] = d.issues
    assert issue.code == "type_mismatch"
    assert issue.stage_id == "count"
    assert issue.message.startswith(
        "Stage 'count' expects input str but stage 'load' produces list[int]; "
    )
    assert "converting stage" in issue.message
    assert d.validate_pipeline() == [issue.message]
    with pytest.raises(PipelineValidationError) as caught:
        d.validate()
    assert caught.value.issues == (issue,)


@pytest.mark.parametrize(
    ("producer", "consumer"),
    [
        (load, total),  # the same type
        (special, takes_row),  # a subclass where its base is expected
        (square, optional_int),  # T where T | None is expected
        (returns_int_result, square),  # `-> StageResult[int]` is an int output
    ],
)
def test_fitting_edges_pass(producer: Any, consumer: Any) -> None:
    d = pipeline_of(StageDefinition("a", producer), StageDefinition("b", consumer, inputs=["a"]))
    assert d.issues == ()


@pytest.mark.parametrize(
    ("producer", "consumer", "expected", "produced"),
    [
        (maybe, square, "int", "int | None"),  # None may arrive where only int is accepted
        (load, takes_special, "SpecialRow", "list[int]"),
        (special, count, "str", "SpecialRow"),
    ],
)
def test_non_fitting_edges_fail(producer: Any, consumer: Any, expected: str, produced: str) -> None:
    d = pipeline_of(StageDefinition("a", producer), StageDefinition("b", consumer, inputs=["a"]))
    [issue] = mismatches(d)
    assert f"expects input {expected} but stage 'a' produces {produced}" in issue.message


@pytest.mark.parametrize("consumer", [anything, untyped, Loose()])
def test_an_unannotated_or_any_consumer_passes(consumer: Any) -> None:
    d = pipeline_of(StageDefinition("load", load), StageDefinition("c", consumer, inputs=["load"]))
    assert d.issues == ()


@pytest.mark.parametrize("producer", [anything, untyped, Loose()])
def test_an_unannotated_or_any_producer_passes(producer: Any) -> None:
    d = pipeline_of(StageDefinition("p", producer), StageDefinition("c", count, inputs=["p"]))
    assert d.issues == ()


def test_declared_types_on_the_definition_win_over_annotations() -> None:
    fixed = pipeline_of(
        StageDefinition("load", load, output_type=str),
        StageDefinition("count", count, inputs=["load"]),
    )
    assert fixed.issues == ()
    broken = pipeline_of(
        StageDefinition("load", untyped, output_type=list[int]),
        StageDefinition("count", untyped, inputs=["load"], input_type=str),
    )
    [issue] = mismatches(broken)
    assert "expects input str but stage 'load' produces list[int]" in issue.message


def test_class_stages_give_their_types_through_execute_or_their_base() -> None:
    d = pipeline_of(
        StageDefinition("load", load),
        StageDefinition("count", Count(), inputs=["load"]),
        StageDefinition("words", Words(), inputs=["load"]),
        StageDefinition("shout", shout, inputs=["words"]),
    )
    found = {i.stage_id: i.message for i in mismatches(d)}
    assert set(found) == {"count", "words", "shout"}
    assert "expects input str but stage 'load' produces list[int]" in found["count"]
    assert "expects input str but stage 'load' produces list[int]" in found["words"]
    assert "expects input str but stage 'words' produces list[str]" in found["shout"]


def test_a_recorded_run_keeps_the_type_checks_of_the_original() -> None:
    d = pipeline_of(StageDefinition("load", load), StageDefinition("count", count, inputs=["load"]))
    recorded, _ = record_run(d)
    assert [i.message for i in recorded.issues] == [i.message for i in d.issues]
    assert len(d.issues) == 1


# -- FAN_OUT -----------------------------------------------------------------------------------------


def test_a_fan_out_consumer_checks_the_list_element_against_its_item_type() -> None:
    ok = pipeline_of(
        StageDefinition("load", load),
        StageDefinition("sq", square, inputs=["load"], pattern=ExecutionPattern.FAN_OUT),
    )
    assert ok.issues == ()
    bad = pipeline_of(
        StageDefinition("load", load_words),
        StageDefinition("sq", square, inputs=["load"], pattern=ExecutionPattern.FAN_OUT),
    )
    [issue] = mismatches(bad)
    assert issue.stage_id == "sq"
    assert issue.message.startswith(
        "FAN_OUT stage 'sq' expects items of int but stage 'load' produces list[str]; "
    )


def test_a_fan_out_over_a_tuple_type_passes_and_over_a_non_list_fails() -> None:
    tuples = pipeline_of(
        StageDefinition("load", untyped, output_type=tuple[int, ...]),
        StageDefinition("sq", square, inputs=["load"], pattern=ExecutionPattern.FAN_OUT),
    )
    assert tuples.issues == ()
    scalar = pipeline_of(
        StageDefinition("n", square),
        StageDefinition("sq", square, inputs=["n"], pattern=ExecutionPattern.FAN_OUT),
    )
    [issue] = mismatches(scalar)
    assert "expects items of int but stage 'n' produces int" in issue.message
    assert "maps over a list or tuple" in issue.message


def test_an_unannotated_fan_out_producer_passes_where_a_list_is_expected() -> None:
    fan = StageDefinition("each", untyped, inputs=["load"], pattern=ExecutionPattern.FAN_OUT)
    ok = pipeline_of(
        StageDefinition("load", load), fan, StageDefinition("t", total, inputs=["each"])
    )
    assert ok.issues == ()
    bad = pipeline_of(
        StageDefinition("load", load), fan, StageDefinition("c", count, inputs=["each"])
    )
    [issue] = mismatches(bad)  # whatever the items are, a FAN_OUT gives a list
    assert "expects input str but stage 'each' produces list[Any]" in issue.message


def test_a_fan_out_producer_gives_a_list_of_its_item_output_type() -> None:
    fan = StageDefinition("sq", square, inputs=["load"], pattern=ExecutionPattern.FAN_OUT)
    ok = pipeline_of(
        StageDefinition("load", load), fan, StageDefinition("sum", total, inputs=["sq"])
    )
    assert ok.issues == ()
    bad = pipeline_of(
        StageDefinition("load", load), fan, StageDefinition("one", square, inputs=["sq"])
    )
    [issue] = mismatches(bad)
    assert issue.message.startswith(
        "Stage 'one' expects input int but stage 'sq' produces list[int]"
    )


# -- several inputs -------------------------------------------------------------------------------


def test_a_typeddict_input_keyed_by_input_ids_is_checked_key_by_key() -> None:
    ok = pipeline_of(
        StageDefinition("load", load),
        StageDefinition("count", total, inputs=["load"]),
        StageDefinition("join", join, inputs=["load", "count"]),
    )
    assert ok.issues == ()
    bad = pipeline_of(
        StageDefinition("load", load),
        StageDefinition("count", load, inputs=["load"]),
        StageDefinition("join", join, inputs=["load", "count"]),
    )
    [issue] = mismatches(bad)
    assert issue.stage_id == "join"
    assert issue.message.startswith(
        "Stage 'join' expects input['count'] to be int but stage 'count' produces list[int]"
    )


def test_a_key_without_an_input_is_a_mismatch_with_a_suggestion() -> None:
    d = pipeline_of(
        StageDefinition("load", load),
        StageDefinition("counts", total, inputs=["load"]),
        StageDefinition("join", join, inputs=["load", "counts"]),
    )
    [issue] = mismatches(d)
    assert issue.stage_id == "join"
    assert "expects input['count'] (int, a key of Pair) but has no input stage 'count'" in (
        issue.message
    )
    assert "did you mean 'counts'?" in issue.message


def test_a_not_required_key_may_have_no_input() -> None:
    d = pipeline_of(
        StageDefinition("load", load),
        StageDefinition("count", total, inputs=["load"]),
        StageDefinition("join", join_with_note, inputs=["load", "count"]),
    )
    assert d.issues == ()


def test_a_pydantic_model_input_is_checked_key_by_key() -> None:
    ok = pipeline_of(
        StageDefinition("load", load),
        StageDefinition("count", total, inputs=["load"]),
        StageDefinition("join", join_model, inputs=["load", "count"]),
    )
    assert ok.issues == ()
    bad = pipeline_of(
        StageDefinition("load", load_words),
        StageDefinition("count", total, inputs=["load"]),
        StageDefinition("join", join_model, inputs=["load", "count"]),
    )
    messages = [i.message for i in mismatches(bad)]
    assert any("expects input['load'] to be list[int] but stage 'load' produces list[str]" in m
               for m in messages)  # fmt: skip


def test_several_inputs_into_a_plain_type_say_a_dict_arrives() -> None:
    d = pipeline_of(
        StageDefinition("a", square),
        StageDefinition("b", square),
        StageDefinition("c", square, inputs=["a", "b"]),
    )
    [issue] = mismatches(d)
    assert "expects input int but has 2 inputs ('a', 'b')" in issue.message
    assert "TypedDict" in issue.message


def test_several_inputs_into_a_mapping_check_each_value() -> None:
    ok = pipeline_of(
        StageDefinition("a", square),
        StageDefinition("b", square),
        StageDefinition("c", untyped, inputs=["a", "b"], input_type=dict[str, int]),
    )
    assert ok.issues == ()
    bad = pipeline_of(
        StageDefinition("a", square),
        StageDefinition("b", load),
        StageDefinition("c", untyped, inputs=["a", "b"], input_type=dict[str, int]),
    )
    [issue] = mismatches(bad)
    assert "expects input values of int but stage 'b' produces list[int]" in issue.message


def test_several_inputs_into_a_mapping_with_non_str_keys_fail() -> None:
    d = pipeline_of(
        StageDefinition("a", square),
        StageDefinition("b", square),
        StageDefinition("c", untyped, inputs=["a", "b"], input_type=dict[int, int]),
    )
    [issue] = mismatches(d)
    assert "receives a dict {stage id: output}" in issue.message


def test_several_inputs_into_a_tuple_are_checked_in_order() -> None:
    d = pipeline_of(
        StageDefinition("a", square),
        StageDefinition("b", load),
        # The builder's adapter: only a stage wired from a tuple of refs receives a tuple.
        StageDefinition(
            "c",
            TupleInputStage(untyped, ("a", "b")),
            inputs=["a", "b"],
            input_type=tuple[int, list[int]],
        ),
        StageDefinition(
            "d",
            TupleInputStage(untyped, ("a", "b")),
            inputs=["a", "b"],
            input_type=tuple[list[int], int],
        ),
    )
    found = [(i.stage_id, i.message) for i in mismatches(d)]
    assert [sid for sid, _ in found] == ["d", "d"]
    assert "expects input[0] to be list[int] but stage 'a' produces int" in found[0][1]
    assert "expects input[1] to be int but stage 'b' produces list[int]" in found[1][1]


class Counted(TypedDict):
    count: int


@stage
async def counted(x: Any, ctx: PipelineContext[Any]) -> Pair:
    return {"load": [1], "count": 1}


@stage
async def takes_counted(x: Counted, ctx: PipelineContext[Any]) -> int:
    return x["count"]


@stage
async def takes_mapping(x: dict[str, Any], ctx: PipelineContext[Any]) -> int:
    return len(x)


@pytest.mark.parametrize(
    ("consumer", "fits"), [(takes_counted, True), (takes_mapping, True), (count, False)]
)
def test_a_typeddict_output_fits_by_its_keys(consumer: Any, fits: bool) -> None:
    d = pipeline_of(StageDefinition("p", counted), StageDefinition("c", consumer, inputs=["p"]))
    assert (mismatches(d) == []) is fits


def test_a_typeddict_missing_a_required_key_does_not_fit() -> None:
    d = pipeline_of(
        StageDefinition("p", untyped, output_type=Counted),
        StageDefinition("c", untyped, inputs=["p"], input_type=Pair),
    )
    [issue] = mismatches(d)
    assert "expects input Pair but stage 'p' produces Counted" in issue.message


# -- interplay with the rest of validation -----------------------------------------------------------


def test_an_unknown_input_is_reported_once_without_a_type_guess() -> None:
    d = pipeline_of(StageDefinition("load", load), StageDefinition("c", count, inputs=["lod"]))
    assert [i.code for i in d.issues] == ["unknown_input"]


def test_type_issues_follow_the_structural_ones() -> None:
    d = pipeline_of(
        StageDefinition("load", load),
        StageDefinition("count", count, inputs=["load"]),
        StageDefinition("x", count, inputs=["nope"]),
    )
    assert [i.code for i in d.issues] == ["unknown_input", "type_mismatch"]


@on_both_backends
async def test_a_type_mismatch_blocks_the_run() -> None:
    ran: list[str] = []

    @stage
    async def recorded(x: str, ctx: PipelineContext[Any]) -> int:
        ran.append(x)
        return 0

    d = pipeline_of(StageDefinition("load", load), StageDefinition("c", recorded, inputs=["load"]))
    result = await PipelineExecutor().execute(d)
    assert not result.success
    assert result.failed_stages == ["validation"]
    [message] = result.metadata["validation_errors"]
    assert message.startswith("Stage 'c' expects input str but stage 'load' produces list[int]")
    assert ran == []
    with pytest.raises(PipelineValidationError):
        PipelineExecutor().validate(d)


POOL: list[Any] = [square, count, total, load, load_words, anything, untyped, Loose()]
UNANNOTATED_IN = {id(anything), id(untyped), id(POOL[-1])}
UNANNOTATED_OUT = {id(anything), id(untyped), id(POOL[-1])}


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_issues_only_ever_name_annotated_edges(data: st.DataObject) -> None:
    """Random DAGs of typed and untyped stages: an issue needs an annotated consumer whose
    input stages include an annotated producer; an all-untyped DAG has no issues."""
    n = data.draw(st.integers(min_value=1, max_value=8))
    chosen = [data.draw(st.sampled_from(POOL)) for _ in range(n)]
    stages = []
    for i, obj in enumerate(chosen):
        inputs = data.draw(st.lists(st.integers(0, i - 1), max_size=1, unique=True)) if i else []
        stages.append(StageDefinition(f"s{i}", obj, inputs=[f"s{j}" for j in inputs]))
    d = pipeline_of(*stages)
    for issue in mismatches(d):
        assert issue.stage_id is not None
        consumer = d.get_stage(issue.stage_id)
        assert id(consumer.stage) not in UNANNOTATED_IN
        assert any(id(d.get_stage(p).stage) not in UNANNOTATED_OUT for p in consumer.inputs)
    untyped_only = pipeline_of(*(StageDefinition(s.id, untyped, inputs=s.inputs) for s in stages))
    assert mismatches(untyped_only) == []


# -- reading types once ----------------------------------------------------------------------------


def test_types_are_read_once_per_class_and_per_function(monkeypatch: pytest.MonkeyPatch) -> None:
    class Fresh:  # a class never seen before: nothing cached yet
        name = "fresh"

        async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[int]:
            return StageResult.success(input)

    @stage
    async def fresh(x: int, ctx: PipelineContext[Any]) -> int:
        return x

    reads: list[object] = []
    real = typing.get_type_hints

    def spy(obj: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", spy)
    stages = [StageDefinition("s0", square)]
    for i in range(1, 60):
        obj: Any = Fresh() if i % 2 else fresh
        stages.append(StageDefinition(f"s{i}", obj, inputs=[f"s{i - 1}"]))
    assert pipeline_of(*stages).issues == ()
    first = len(reads)
    # One read for each side of each new class or function (the shared `square`: at most 2).
    assert 0 < first <= 6
    again = [StageDefinition(s.id, Fresh() if i % 2 else s.stage, inputs=s.inputs)
             for i, s in enumerate(stages)]  # fmt: skip
    assert pipeline_of(*again).issues == ()
    assert len(reads) == first


def test_functions_made_in_a_loop_share_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> Any:
        async def body(x: int, ctx: PipelineContext[Any]) -> int:
            return x

        return stage(body)

    made = [make() for _ in range(40)]
    reads: list[object] = []
    real = typing.get_type_hints

    def spy(obj: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", spy)
    stages = [StageDefinition("s0", square)]
    stages += [StageDefinition(f"s{i}", fn, inputs=[f"s{i - 1}"]) for i, fn in enumerate(made, 1)]
    assert pipeline_of(*stages).issues == ()
    assert len(reads) <= 4


# -- without beartype ------------------------------------------------------------------------------


@pytest.fixture
def without_beartype(monkeypatch: pytest.MonkeyPatch) -> typing.Iterator[None]:
    monkeypatch.setitem(sys.modules, "beartype.door", None)  # an import of it raises ImportError
    monkeypatch.setattr(types_module, "_verdicts", {})
    types_module._is_subhint.cache_clear()
    yield
    types_module._is_subhint.cache_clear()


@pytest.mark.usefixtures("without_beartype")
def test_without_beartype_edges_pass_with_one_warning_naming_the_extra(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def mismatched() -> PipelineDefinition:
        return pipeline_of(
            StageDefinition("load", load), StageDefinition("count", count, inputs=["load"])
        )

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert mismatched().issues == ()
        assert mismatched().issues == ()
    warnings = [r.getMessage() for r in caplog.records if "beartype" in r.getMessage()]
    assert len(warnings) == 1
    assert "pip install 'wavepipe[types]'" in warnings[0]


def test_an_old_beartype_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import beartype

    monkeypatch.setattr(beartype, "__version_info__", (0, 18, 5))
    types_module._is_subhint.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline"):
            assert types_module._is_subhint() is not None
    finally:
        types_module._is_subhint.cache_clear()
    [record] = caplog.records
    assert "older than 0.23" in record.getMessage()
    assert "wavepipe[types]" in record.getMessage()


@pytest.mark.usefixtures("without_beartype")
def test_without_beartype_identical_types_need_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = pipeline_of(StageDefinition("load", load), StageDefinition("t", total, inputs=["load"]))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert d.issues == ()
    assert caplog.records == []


def test_a_tuple_annotation_on_a_plain_multi_input_stage_is_a_mismatch() -> None:
    """Only the builder's adapter hands a stage a tuple; a plain stage receives {id: output}.

    (Found in review: `a, b = input` on the dict silently unpacked the keys.)
    """
    from pipeline import PipelineBuilder, stage

    @stage
    async def one(x: Any, ctx: PipelineContext[Any]) -> int:
        return 1

    @stage
    async def word(x: Any, ctx: PipelineContext[Any]) -> str:
        return "w"

    @stage
    async def pair(x: tuple[int, str], ctx: PipelineContext[Any]) -> str:
        return f"{x[0]}-{x[1]}"

    plain = PipelineDefinition(
        "plain",
        [
            StageDefinition("a", one),
            StageDefinition("b", word),
            StageDefinition("c", pair, inputs=["a", "b"]),
        ],
    )
    (issue,) = plain.issues
    assert issue.code == "type_mismatch"
    assert issue.stage_id == "c"
    assert "receives a dict" in issue.message

    builder: PipelineBuilder[Any] = PipelineBuilder("built")
    a, b = builder.add("a", one), builder.add("b", word)
    builder.add("c", pair, inputs=(a, b))
    assert builder.build().issues == ()

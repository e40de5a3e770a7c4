"""`PipelineBuilder` at run time: built pipelines run, tuple inputs arrive as tuples, errors.

The static half (mypy and pyright accepting and rejecting wiring) is `tests/typing/check_builder.py`
and `test_builder_typing.py`. Pipelines run on asyncio and trio.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pipeline import (
    DefinitionError,
    ExecutionPattern,
    PipelineBuilder,
    PipelineContext,
    PipelineDefinition,
    PipelineExecutor,
    PipelineValidationError,
    RetryConfig,
    StageDefinition,
    StageRef,
    StageResult,
    stage,
)
from pipeline.cache import MemoryCache, code_fingerprint, output_type_of
from pipeline.testing import record_run
from tests.unit._support import on_both_backends


@stage
async def split(text: str, ctx: PipelineContext[Any]) -> list[str]:
    return text.split()


@stage
async def length(word: str, ctx: PipelineContext[Any]) -> int:
    return len(word)


@stage
async def count(words: list[str], ctx: PipelineContext[Any]) -> int:
    return len(words)


@stage
def total(lengths: list[int], ctx: PipelineContext[Any]) -> int:
    return sum(lengths)


@stage
async def report(pair: tuple[list[str], int], ctx: PipelineContext[Any]) -> str:
    words, letters = pair
    return f"{len(words)} words, {letters} letters"


class Shout:
    """A class stage."""

    name = "shout"

    async def execute(self, text: str, ctx: PipelineContext[Any], /) -> StageResult[str]:
        return StageResult.success(text.upper())


def words_pipeline() -> PipelineDefinition:
    builder = PipelineBuilder[str]("words", description="counts", fail_fast=False)
    words = builder.add("split", split)
    lengths = builder.fan_out("length", length, inputs=words, max_concurrent_fan_out=2)
    letters = builder.add("total", total, inputs=lengths)
    text = builder.add("report", report, inputs=(words, letters))
    builder.add("shout", Shout(), inputs=text)
    return builder.build()


@on_both_backends
async def test_a_built_pipeline_runs_every_kind_of_wiring() -> None:
    """Entry, fan-out, sync function, tuple of refs and a class stage all get their inputs."""
    result = await PipelineExecutor().execute(words_pipeline(), "to be or not")
    assert result.success, result.error
    assert result.outputs == {
        "split": ["to", "be", "or", "not"],
        "length": [2, 2, 2, 3],
        "total": 9,
        "report": "4 words, 9 letters",
        "shout": "4 WORDS, 9 LETTERS",
    }


def test_build_is_the_hand_written_definition() -> None:
    """Without tuples, `build()` equals the `PipelineDefinition` one would write by hand."""
    shout, retry = Shout(), RetryConfig(max_attempts=3)
    builder = PipelineBuilder[str]("etl", description="d", fail_fast=False)
    words = builder.add("split", split, timeout_ms=500, retry_config=retry, cache_version="2")
    lengths = builder.add("length", length, inputs=words, pattern=ExecutionPattern.FAN_OUT)
    builder.add("total", total, inputs=lengths, critical=False, runner="threads")
    builder.add("shout", shout, pattern=ExecutionPattern.PARALLEL, uses={"llm": 1})
    builder.add("late", count, inputs=words, description="x", max_concurrent_fan_out=None)
    hand = PipelineDefinition(
        "etl",
        [
            StageDefinition("split", split, timeout_ms=500, retry_config=retry, cache_version="2"),
            StageDefinition("length", length, inputs=["split"], pattern=ExecutionPattern.FAN_OUT),
            StageDefinition("total", total, inputs=["length"], critical=False, runner="threads"),
            StageDefinition("shout", shout, pattern=ExecutionPattern.PARALLEL, uses={"llm": 1}),
            StageDefinition(
                "late", count, inputs=["split"], description="x", max_concurrent_fan_out=None
            ),
        ],
        description="d",
        fail_fast=False,
    )
    assert builder.build() == hand


def test_fan_out_is_add_with_the_fan_out_pattern() -> None:
    one, other = PipelineBuilder[str]("p"), PipelineBuilder[str]("p")
    one.fan_out("length", length, inputs=one.add("split", split), timeout_ms=50)
    other.add(
        "length",
        length,
        inputs=other.add("split", split),
        pattern=ExecutionPattern.FAN_OUT,
        timeout_ms=50,
    )
    assert one.build() == other.build()
    assert one.build().get_stage("length").pattern is ExecutionPattern.FAN_OUT


@on_both_backends
async def test_fan_out_over_the_initial_input() -> None:
    """A `PipelineBuilder[list[T]]` fans out over the initial input itself."""
    builder = PipelineBuilder[list[str]]("batch")
    lengths = builder.fan_out("length", length)
    builder.add("total", total, inputs=lengths)
    result = await PipelineExecutor().execute(builder.build(), ["a", "bb", "ccc"])
    assert result.success, result.error
    assert result.outputs == {"length": [1, 2, 3], "total": 6}


# -- tuple inputs ------------------------------------------------------------------------------


def three_inputs() -> tuple[PipelineBuilder[int], list[Any], StageRef[str]]:
    """`join` takes (c, a, b): neither the order they were added nor their ids' order."""
    seen: list[Any] = []

    @stage
    async def as_text(n: int, ctx: PipelineContext[Any]) -> str:
        return str(n)

    @stage
    async def doubled(n: int, ctx: PipelineContext[Any]) -> int:
        return 2 * n

    @stage
    async def as_float(n: int, ctx: PipelineContext[Any]) -> float:
        return n / 4

    @stage
    async def join(values: tuple[float, str, int], ctx: PipelineContext[Any]) -> str:
        seen.append(values)
        c, a, b = values
        return f"{c}|{a}|{b}"

    builder = PipelineBuilder[int]("tuples")
    a = builder.add("a", as_text)
    b = builder.add("b", doubled)
    c = builder.add("c", as_float)
    return builder, seen, builder.add("join", join, inputs=(c, a, b))


@on_both_backends
async def test_a_tuple_of_refs_gives_the_stage_a_tuple_in_order() -> None:
    builder, seen, _ = three_inputs()
    result = await PipelineExecutor().execute(builder.build(), 6)
    assert result.success, result.error
    assert seen == [(1.5, "6", 12)]
    assert type(seen[0]) is tuple
    assert result.get_output("join") == "1.5|6|12"


@on_both_backends
async def test_a_one_ref_tuple_gives_a_one_element_tuple() -> None:
    seen: list[Any] = []

    @stage
    async def first(values: tuple[list[str]], ctx: PipelineContext[Any]) -> str:
        seen.append(values)
        return values[0][0]

    builder = PipelineBuilder[str]("one")
    builder.add("first", first, inputs=(builder.add("split", split),))
    assert builder.build().issues == ()
    result = await PipelineExecutor().execute(builder.build(), "x y")
    assert result.success, result.error
    assert seen == [(["x", "y"],)]
    assert result.get_output("first") == "x"


@on_both_backends
async def test_a_sync_tuple_stage_still_runs_in_a_worker_thread() -> None:
    """A sync function stays a sync function stage: off the event loop, on "threads"."""
    threads: list[threading.Thread] = []

    @stage
    def pair(values: tuple[list[str], int], ctx: PipelineContext[Any]) -> str:
        threads.append(threading.current_thread())
        return f"{values[0]}:{values[1]}"

    builder = PipelineBuilder[str]("sync")
    words = builder.add("split", split)
    builder.add("pair", pair, inputs=(words, builder.add("n", length)))
    result = await PipelineExecutor().execute(builder.build(), "ab")
    assert result.success, result.error
    assert result.get_output("pair") == "['ab']:2"
    assert threads
    assert threads[0] is not threading.main_thread()


def test_a_sync_tuple_stage_on_the_inline_runner_is_still_rejected() -> None:
    @stage
    def pair(values: tuple[list[str], int], ctx: PipelineContext[Any]) -> str:
        return ""

    builder = PipelineBuilder[str]("sync")
    words = builder.add("split", split)
    builder.add("pair", pair, inputs=(words, builder.add("n", length)), runner="inline")
    with pytest.raises(PipelineValidationError) as caught:
        PipelineExecutor().validate(builder.build())
    (issue,) = caught.value.issues
    assert issue.stage_id == "pair"
    assert "sync function stage on the 'inline' runner" in issue.message


def test_the_adapter_stands_for_the_stage() -> None:
    """Name, output type and code fingerprint are the wrapped stage's own."""
    builder, _, _ = three_inputs()
    sdef = builder.build().get_stage("join")
    adapter: Any = sdef.stage
    original = adapter.__wrapped_stage__
    assert sdef.inputs == ("c", "a", "b")
    assert adapter.name == original.name == "join"
    assert output_type_of(adapter) is str
    assert code_fingerprint(adapter) == code_fingerprint(original)
    assert "join" in repr(adapter)


def test_validation_names_the_stage_id() -> None:
    builder = PipelineBuilder[str]("invalid")
    words = builder.add("split", split)
    builder.add(
        "late",
        report,
        inputs=(words, builder.add("n", length)),
        pattern=ExecutionPattern.CONDITIONAL,  # without a condition: invalid
    )
    issues = builder.build().issues
    assert [(i.code, i.stage_id) for i in issues] == [("missing_condition", "late")]
    assert "'late'" in issues[0].message


@on_both_backends
async def test_run_records_and_recorder_name_the_stage_id() -> None:
    builder, _, _ = three_inputs()
    recorded, recorder = record_run(builder.build())
    result = await PipelineExecutor().execute(recorded, 2)
    assert result.success, result.error
    assert set(result.stage_runs) == {"a", "b", "c", "join"}
    assert result.stage_runs["join"].attempts == 1
    assert recorder.started[-1] == "join"
    assert recorder.inputs("join") == [{"c": 0.5, "a": "2", "b": 4}]  # what the executor hands it


@on_both_backends
async def test_a_tuple_stage_is_cached_like_any_stage() -> None:
    """Keys use the stage's code fingerprint and output type through the adapter."""
    calls: list[tuple[list[str], int]] = []

    @stage
    async def count(values: tuple[list[str], int], ctx: PipelineContext[Any]) -> int:
        calls.append(values)
        return len(values[0]) + values[1]

    builder = PipelineBuilder[str]("cached")
    words = builder.add("split", split)
    builder.add(
        "count", count, inputs=(words, builder.add("n", length)), cache_code_fingerprint=True
    )
    definition, executor = builder.build(), PipelineExecutor(cache=MemoryCache())
    first = await executor.execute(definition, "a b")
    second = await executor.execute(definition, "a b")
    assert first.get_output("count") == second.get_output("count") == 5
    assert len(calls) == 1
    assert second.stage_runs["count"].cached


def test_a_stage_without_async_execute_is_left_for_validation() -> None:
    """Not hidden behind an adapter: validation reports it under its id, as without a builder."""

    class SyncExecute:
        name = "sync"

        def execute(self, values: tuple[int, int], ctx: PipelineContext[Any], /) -> Any:
            return StageResult.success(values)

    broken: Any = SyncExecute()
    builder = PipelineBuilder[str]("broken")
    builder.add("bad", broken, inputs=(builder.add("a", length), builder.add("b", length)))
    sdef = builder.build().get_stage("bad")
    assert sdef.stage is broken
    assert [(i.code, i.stage_id) for i in builder.build().issues] == [("invalid_stage", "bad")]


def test_a_one_ref_tuple_declares_its_element_as_input_type() -> None:
    """The executor hands a single input as the value, so edge checks compare the element."""

    @stage
    async def first(values: tuple[list[str]], ctx: PipelineContext[Any]) -> int:
        return 0

    builder = PipelineBuilder[str]("one")
    words = builder.add("split", split)
    builder.add("first", first, inputs=(words,))
    builder.add("declared", first, inputs=(words,), input_type=tuple[list[int]])
    built = builder.build()
    assert built.get_stage("first").input_type == list[str]
    assert built.get_stage("declared").input_type == list[int]


def test_validation_checks_tuple_stages_element_by_element() -> None:
    """Wiring that mypy would reject (here forced through Any) is a `type_mismatch` too."""
    pytest.importorskip("beartype")

    @stage
    async def first(values: tuple[list[str]], ctx: PipelineContext[Any]) -> int:
        return 0

    builder = PipelineBuilder[str]("mismatch")
    words, n = builder.add("split", split), builder.add("n", length)
    add: Any = builder.add
    add("swapped", report, inputs=(n, words))
    add("one", first, inputs=(n,))
    issues = builder.build().issues
    assert {i.code for i in issues} == {"type_mismatch"}
    assert [(i.stage_id, i.message.split(";")[0]) for i in issues] == [
        ("swapped", "Stage 'swapped' expects input[0] to be list[str] but stage 'n' produces int"),
        (
            "swapped",
            "Stage 'swapped' expects input[1] to be int but stage 'split' produces list[str]",
        ),
        ("one", "Stage 'one' expects input list[str] but stage 'n' produces int"),
    ]


# -- the builder as a value ------------------------------------------------------------------------


def test_build_snapshots_and_the_builder_stays_usable() -> None:
    builder = PipelineBuilder("grow")
    builder.add("split", split)
    before = builder.build()
    builder.add("shout", Shout())
    assert [s.id for s in before.stages] == ["split"]
    assert [s.id for s in builder.build().stages] == ["split", "shout"]
    assert repr(builder) == "PipelineBuilder('grow', 2 stages)"


def test_refs_name_their_stage_and_builder() -> None:
    builder = PipelineBuilder("named")
    ref = builder.add("split", split)
    assert ref.id == "split"
    assert ref.builder is builder
    assert repr(ref) == "StageRef('split' of PipelineBuilder 'named')"


# -- errors ----------------------------------------------------------------------------------------


def test_a_duplicate_id_raises_at_add_naming_builder_and_id() -> None:
    builder = PipelineBuilder("dupes")
    builder.add("split", split)
    with pytest.raises(DefinitionError) as caught:
        builder.add("split", Shout())
    err = caught.value
    assert (err.owner, err.field) == ("PipelineBuilder 'dupes'", "id")
    assert "'split' is already the id of an added stage" in str(err)
    assert "unique id" in err.fix
    assert [s.id for s in builder.build().stages] == ["split"]


def test_a_ref_of_another_builder_is_rejected() -> None:
    other = PipelineBuilder("other")
    foreign = other.add("split", split)
    builder = PipelineBuilder("mine")
    mine = builder.add("split", split)
    wirings: list[Any] = [foreign, (mine, foreign)]
    for inputs in wirings:
        with pytest.raises(DefinitionError) as caught:
            builder.add("shout", Shout(), inputs=inputs)
        err = caught.value
        assert (err.owner, err.field) == ("PipelineBuilder 'mine'", "inputs of stage 'shout'")
        assert "StageRef 'split' of another builder, PipelineBuilder 'other'" in err.problem
        assert "SubPipeline" in err.fix
    builder.add("shout", Shout(), inputs=builder.add("s", Shout()))  # the id is still free


def _malformed(inputs: Any) -> DefinitionError:
    builder = PipelineBuilder("bad")
    words = builder.add("split", split)
    wired: Any = inputs(words) if callable(inputs) else inputs
    with pytest.raises(DefinitionError) as caught:
        builder.add("x", length, inputs=wired)
    return caught.value


@pytest.mark.parametrize(
    ("inputs", "problem", "fix"),
    [
        ("split", "is the str 'split'", "pass the StageRef that add() returned"),
        (lambda w: [w, w], "is list", "pass a tuple (ref1, ref2)"),
        ((), "is an empty tuple", "pass None for the pipeline's initial input"),
        (lambda w: (w, "split"), "contains str 'split', not a StageRef", "pass the StageRef"),
        (lambda w: (w, w), "names stage 'split' more than once", "pass each StageRef once"),
        (
            lambda w: StageRef("later", w.builder),
            "StageRef 'later', a stage this builder never added",
            "pass the StageRef that add() returned",
        ),
        (3, "is int", "a tuple of them, or None"),
    ],
)
def test_malformed_inputs_are_rejected_at_add(inputs: Any, problem: str, fix: str) -> None:
    err = _malformed(inputs)
    assert (err.owner, err.field) == ("PipelineBuilder 'bad'", "inputs of stage 'x'")
    assert problem in err.problem
    assert fix in err.fix


def test_a_tuple_for_a_fan_out_is_rejected() -> None:
    builder = PipelineBuilder("fan")
    words = builder.add("split", split)
    add: Any = builder.add  # no overload takes a tuple for a FAN_OUT: mypy rejects this call
    with pytest.raises(DefinitionError) as caught:
        add("x", length, inputs=(words, words), pattern=ExecutionPattern.FAN_OUT)
    assert "is a tuple of 2 refs for a FAN_OUT stage" in caught.value.problem
    assert "pass a single StageRef" in caught.value.fix


def test_stage_definition_errors_surface_at_add() -> None:
    builder = PipelineBuilder("opts")
    with pytest.raises(DefinitionError) as caught:
        builder.add("split", split, timeout_ms=-1)
    assert caught.value.owner == "StageDefinition 'split'"
    assert caught.value.field == "timeout_ms"
    builder.add("split", split, timeout_ms=1)  # the failed add took nothing
    assert [s.id for s in builder.build().stages] == ["split"]


@pytest.mark.parametrize("name", ["", "  ", None])
def test_the_builder_needs_a_name(name: Any) -> None:
    with pytest.raises(DefinitionError) as caught:
        PipelineBuilder(name)
    assert caught.value.field == "name"
    assert "PipelineBuilder(" in caught.value.fix

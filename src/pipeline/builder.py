"""`PipelineBuilder` and `StageRef`: wiring stages by reference, so a type checker sees each edge.

`builder.add(...)` returns a `StageRef[Out]`; passing it as another stage's `inputs` makes mypy
(or pyright) check that the producer's output type is the consumer's input type. `build()`
returns an ordinary `PipelineDefinition`; validation and execution know nothing of builders.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    TypedDict,
    TypeVar,
    Unpack,
    cast,
    final,
    overload,
)

from pipeline._types import stage_input_type
from pipeline.definition import (
    Condition,
    ExecutionPattern,
    PipelineDefinition,
    RetryConfig,
    StageDefinition,
)
from pipeline.errors import DefinitionError
from pipeline.functions import FunctionStage

if TYPE_CHECKING:
    from collections.abc import Mapping

    # A default lets users write a bare `PipelineBuilder("etl")` under mypy --strict (the
    # entry stages then accept any initial input); at run time the default is irrelevant.
    from typing_extensions import TypeVar as DefaultTypeVar

    from pipeline.context import PipelineContext
    from pipeline.protocol import PipelineStage
    from pipeline.result import StageResult

    InitialT = DefaultTypeVar("InitialT", default=Any)
else:
    InitialT = TypeVar("InitialT")

# These names appear in mypy's message for a wrongly wired stage ("Cannot infer value of type
# parameter "InputT" of "add""), so they say which input does not fit.
RefT_co = TypeVar("RefT_co", covariant=True)
InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")
ItemT = TypeVar("ItemT")
Input1T = TypeVar("Input1T")
Input2T = TypeVar("Input2T")
Input3T = TypeVar("Input3T")
Input4T = TypeVar("Input4T")
Input5T = TypeVar("Input5T")
Input6T = TypeVar("Input6T")

OncePattern = Literal[
    ExecutionPattern.SEQUENTIAL, ExecutionPattern.PARALLEL, ExecutionPattern.CONDITIONAL
]
"""The patterns that run a stage once on its whole input (every pattern but FAN_OUT)."""


class StageOptions(TypedDict, total=False):
    """The keyword options of `PipelineBuilder.add`: `StageDefinition`'s, minus id and wiring.

    Each has `StageDefinition`'s default and meaning; see its docstring.
    """

    condition: Condition | None
    retry_config: RetryConfig | None
    timeout_ms: float | None
    critical: bool
    max_concurrent_fan_out: int | None
    description: str | None
    input_type: Any
    output_type: Any
    cache: bool
    cache_version: str | int
    cache_code_fingerprint: bool
    runner: str | None
    uses: Mapping[str, int]


@final
class StageRef(Generic[RefT_co]):
    """A stage added to a `PipelineBuilder`, standing for its output of type `RefT_co`.

    Pass it as `inputs=` of a later `add`; only the builder that made it accepts it. A stage
    that is skipped (its `condition` is false) or fails without being `critical` hands its
    dependents None at run time, so type those consumers' inputs `T | None`.
    """

    __slots__ = ("builder", "id")

    def __init__(self, stage_id: str, builder: PipelineBuilder[Any]) -> None:
        self.id = stage_id
        """The stage's id in the built `PipelineDefinition`."""
        self.builder = builder
        """The builder whose `add` returned this ref."""

    def __repr__(self) -> str:
        return f"StageRef({self.id!r} of PipelineBuilder {self.builder.name!r})"


@final
class PipelineBuilder(Generic[InitialT]):
    """Builds a `PipelineDefinition` stage by stage, with every edge checked by the type checker.

    `add(id, stage, inputs=...)` returns a `StageRef[Out]` for a `PipelineStage[In, Out]`
    (a class stage or a `@stage` function). `inputs` is one ref (the stage receives that
    stage's output), a tuple of up to six refs (it receives a `tuple` of their outputs, in that
    order; typed for up to six) or None (it receives the pipeline's initial input, of type
    `InitialT`: `PipelineBuilder[str]("etl")` checks that the entry stages take a `str`; a bare
    `PipelineBuilder("etl")` accepts any). `fan_out` (or `add(..., pattern=FAN_OUT)`) runs a
    stage once per item of a list and returns a `StageRef[list[Out]]`. mypy --strict and pyright
    reject a ref whose type is not the consumer's input type: mypy says `Cannot infer value of
    type parameter "InputT" of "add"` (`"Input2T"`: the second ref of a pair) or names the
    stage's and the refs' types in an `arg-type` error; pyright names both types.

    At run time the executor gives a stage with several inputs `{id: output}`; for a tuple of
    refs the builder wraps the stage in a small adapter that passes the tuple instead. The
    adapter stands for the stage (`__wrapped_stage__`): output type, cache entries and code
    fingerprint are the stage's own, and validation and run records name the stage id.

    Args:
        name: The pipeline's name.
        description: The pipeline's description.
        fail_fast: `PipelineDefinition.fail_fast` of the built definition.

    Raises:
        DefinitionError: From `add`, for a duplicate id, a ref of another builder or a malformed
            `inputs` (and whatever `StageDefinition` rejects).

    Example:
        ```python
        builder = PipelineBuilder[str]("words")
        words = builder.add("split", split)  # FunctionStage[str, list[str]]
        lengths = builder.fan_out("length", length, inputs=words)  # FunctionStage[str, int]
        builder.add("total", total, inputs=(words, lengths))  # takes tuple[list[str], list[int]]
        definition = builder.build()
        ```
    """

    def __init__(
        self, name: str, *, description: str | None = None, fail_fast: bool = True
    ) -> None:
        checked: object = name
        if not isinstance(checked, str) or not checked.strip():
            raise DefinitionError(
                f"PipelineBuilder {name!r}", "name", "is empty or not a str",
                'give the pipeline a name, e.g. PipelineBuilder("ingest")',
            )  # fmt: skip
        self.name = name
        """The pipeline's name."""
        self.description = description
        """The built definition's description."""
        self.fail_fast = fail_fast
        """The built definition's `fail_fast`."""
        self._stages: dict[str, StageDefinition] = {}

    # One input (or none), run once.
    @overload
    def add(
        self,
        id: str,
        stage: PipelineStage[InitialT, OutputT],
        *,
        inputs: None = None,
        pattern: OncePattern = ExecutionPattern.SEQUENTIAL,
        **options: Unpack[StageOptions],
    ) -> StageRef[OutputT]: ...
    @overload
    def add(
        self,
        id: str,
        stage: PipelineStage[InputT, OutputT],
        *,
        inputs: StageRef[InputT],
        pattern: OncePattern = ExecutionPattern.SEQUENTIAL,
        **options: Unpack[StageOptions],
    ) -> StageRef[OutputT]: ...
    # A tuple of refs: the stage receives a tuple, in the same order. The one-ref tuple comes
    # last: mypy then blames a mismatched longer tuple on the element that does not fit.
    @overload
    def add(
        self,
        id: str,
        stage: PipelineStage[tuple[Input1T, Input2T], OutputT],
        *,
        inputs: tuple[StageRef[Input1T], StageRef[Input2T]],
        pattern: OncePattern = ExecutionPattern.SEQUENTIAL,
        **options: Unpack[StageOptions],
    ) -> StageRef[OutputT]: ...
    @overload
    def add(
        self,
        id: str,
        stage: PipelineStage[tuple[Input1T, Input2T, Input3T], OutputT],
        *,
        inputs: tuple[StageRef[Input1T], StageRef[Input2T], StageRef[Input3T]],
        pattern: OncePattern = ExecutionPattern.SEQUENTIAL,
        **options: Unpack[StageOptions],
    ) -> StageRef[OutputT]: ...
    @overload
    def add(
        self,
        id: str,
        stage: PipelineStage[tuple[Input1T, Input2T, Input3T, Input4T], OutputT],
        *,
        inputs: tuple[StageRef[Input1T], StageRef[Input2T], StageRef[Input3T], StageRef[Input4T]],
        pattern: OncePattern = ExecutionPattern.SEQUENTIAL,
        **options: Unpack[StageOptions],
    ) -> StageRef[OutputT]: ...
    @overload
    def add(
        self,
        id: str,
        stage: PipelineStage[tuple[Input1T, Input2T, Input3T, Input4T, Input5T], OutputT],
        *,
        inputs: tuple[
            StageRef[Input1T],
            StageRef[Input2T],
            StageRef[Input3T],
            StageRef[Input4T],
            StageRef[Input5T],
        ],
        pattern: OncePattern = ExecutionPattern.SEQUENTIAL,
        **options: Unpack[StageOptions],
    ) -> StageRef[OutputT]: ...
    @overload
    def add(
        self,
        id: str,
        stage: PipelineStage[tuple[Input1T, Input2T, Input3T, Input4T, Input5T, Input6T], OutputT],
        *,
        inputs: tuple[
            StageRef[Input1T],
            StageRef[Input2T],
            StageRef[Input3T],
            StageRef[Input4T],
            StageRef[Input5T],
            StageRef[Input6T],
        ],
        pattern: OncePattern = ExecutionPattern.SEQUENTIAL,
        **options: Unpack[StageOptions],
    ) -> StageRef[OutputT]: ...
    @overload
    def add(
        self,
        id: str,
        stage: PipelineStage[tuple[Input1T], OutputT],
        *,
        inputs: tuple[StageRef[Input1T]],
        pattern: OncePattern = ExecutionPattern.SEQUENTIAL,
        **options: Unpack[StageOptions],
    ) -> StageRef[OutputT]: ...
    # FAN_OUT: once per item of a list (a producer's, or the initial input).
    @overload
    def add(
        self,
        id: str,
        stage: PipelineStage[ItemT, OutputT],
        *,
        inputs: StageRef[list[ItemT]],
        pattern: Literal[ExecutionPattern.FAN_OUT],
        **options: Unpack[StageOptions],
    ) -> StageRef[list[OutputT]]: ...
    @overload
    def add(
        self: PipelineBuilder[list[ItemT]],
        id: str,
        stage: PipelineStage[ItemT, OutputT],
        *,
        inputs: None = None,
        pattern: Literal[ExecutionPattern.FAN_OUT],
        **options: Unpack[StageOptions],
    ) -> StageRef[list[OutputT]]: ...
    def add(
        self,
        id: str,
        stage: PipelineStage[Any, Any],
        *,
        inputs: StageRef[Any] | tuple[StageRef[Any], ...] | None = None,
        pattern: ExecutionPattern = ExecutionPattern.SEQUENTIAL,
        **options: Unpack[StageOptions],
    ) -> StageRef[Any]:
        """Add a stage fed by `inputs`; returns the ref later stages take as their input.

        Args:
            id: The stage's id, unique in this builder.
            stage: A `PipelineStage[In, Out]` (a class stage or a `@stage` function).
            inputs: A `StageRef[In]`; a tuple of refs `(StageRef[A], StageRef[B], ...)` for a
                stage taking `tuple[A, B, ...]` (in that order); or None for the pipeline's
                initial input. With `pattern=ExecutionPattern.FAN_OUT`: a ref to a list of
                `In` (or None for an initial input that is one).
            pattern: How the stage runs (`ExecutionPattern`); `fan_out` is a shorthand for
                FAN_OUT.
            **options: `StageDefinition`'s other keyword options (`condition`,
                `retry_config`, `timeout_ms`, `critical`, `uses`, `runner`, ...).

        Returns:
            `StageRef[Out]`, or `StageRef[list[Out]]` for FAN_OUT.

        Raises:
            DefinitionError: The id is taken, `inputs` holds a ref of another builder or is
                not a ref / tuple of refs / None, or `StageDefinition` rejects an option.
        """
        return self._add(id, stage, inputs, pattern, options)

    def _add(
        self,
        id: str,
        stage: PipelineStage[Any, Any],
        inputs: object,
        pattern: ExecutionPattern,
        options: StageOptions,
    ) -> StageRef[Any]:
        ids, as_tuple = self._input_ids(id, inputs, pattern)
        definition = StageDefinition(id, stage, inputs=ids, pattern=pattern, **options)
        if id in self._stages:
            raise DefinitionError(
                f"PipelineBuilder {self.name!r}", "id",
                f"{id!r} is already the id of an added stage", "give every stage a unique id",
            )  # fmt: skip
        if as_tuple and _adaptable(stage):
            definition = dataclasses.replace(definition, stage=_tuple_adapter(stage, ids))
            if len(ids) == 1:
                declared = options.get("input_type")
                element = _single_element_type(stage, declared)
                definition = dataclasses.replace(definition, input_type=element)
        self._stages[id] = definition
        return StageRef(id, self)

    @overload
    def fan_out(
        self,
        id: str,
        stage: PipelineStage[ItemT, OutputT],
        *,
        inputs: StageRef[list[ItemT]],
        **options: Unpack[StageOptions],
    ) -> StageRef[list[OutputT]]: ...
    @overload
    def fan_out(
        self: PipelineBuilder[list[ItemT]],
        id: str,
        stage: PipelineStage[ItemT, OutputT],
        *,
        inputs: None = None,
        **options: Unpack[StageOptions],
    ) -> StageRef[list[OutputT]]: ...
    def fan_out(
        self,
        id: str,
        stage: PipelineStage[Any, Any],
        *,
        inputs: StageRef[Any] | None = None,
        **options: Unpack[StageOptions],
    ) -> StageRef[list[Any]]:
        """Add a FAN_OUT stage: run `stage` once per item of `inputs`' list, outputs in order.

        The same as `add(id, stage, inputs=inputs, pattern=ExecutionPattern.FAN_OUT, ...)`.

        Args:
            id: The stage's id, unique in this builder.
            stage: A `PipelineStage[Item, Out]`, called once per item.
            inputs: A `StageRef[list[Item]]`, or None when the initial input is the list.
            **options: `StageDefinition`'s other keyword options (`max_concurrent_fan_out`,
                `retry_config` and `timeout_ms` apply to each item).

        Returns:
            `StageRef[list[Out]]`.

        Raises:
            DefinitionError: As `add`.
        """
        return self._add(id, stage, inputs, ExecutionPattern.FAN_OUT, options)

    def build(self) -> PipelineDefinition:
        """A `PipelineDefinition` of the stages added so far, in the order they were added.

        The builder stays usable; later `add`s do not change a definition already built.
        """
        return PipelineDefinition(
            self.name,
            tuple(self._stages.values()),
            description=self.description,
            fail_fast=self.fail_fast,
        )

    def _input_ids(
        self, sid: str, inputs: object, pattern: ExecutionPattern
    ) -> tuple[tuple[str, ...], bool]:
        """The input ids of `inputs`, and whether the stage takes them as a tuple."""
        owner, field = f"PipelineBuilder {self.name!r}", f"inputs of stage {sid!r}"
        if inputs is None:
            return (), False
        if isinstance(inputs, StageRef):
            return (self._own(sid, inputs).id,), False
        if not isinstance(inputs, tuple):
            what = f"the str {inputs!r}" if isinstance(inputs, str) else type(inputs).__name__
            fix = (
                "pass a tuple (ref1, ref2): the stage receives their outputs as a tuple"
                if isinstance(inputs, list)
                else "pass the StageRef that add() returned, a tuple of them, or None"
            )
            raise DefinitionError(owner, field, f"is {what}", fix)
        if not inputs:
            raise DefinitionError(
                owner, field, "is an empty tuple", "pass None for the pipeline's initial input"
            )
        if pattern is ExecutionPattern.FAN_OUT:
            raise DefinitionError(
                owner, field, f"is a tuple of {len(inputs)} refs for a FAN_OUT stage",
                "a fan-out maps over one list: pass a single StageRef",
            )  # fmt: skip
        ids = tuple(self._own(sid, ref).id for ref in inputs)
        if len(set(ids)) < len(ids):
            twice = next(i for i in ids if ids.count(i) > 1)
            raise DefinitionError(
                owner, field, f"names stage {twice!r} more than once",
                "pass each StageRef once (the stage can reuse a tuple element)",
            )  # fmt: skip
        return ids, True

    def _own(self, sid: str, ref: object) -> StageRef[Any]:
        owner, field = f"PipelineBuilder {self.name!r}", f"inputs of stage {sid!r}"
        if not isinstance(ref, StageRef):
            raise DefinitionError(
                owner, field, f"contains {type(ref).__name__} {ref!r}, not a StageRef",
                "pass the StageRef that add() returned",
            )  # fmt: skip
        if ref.builder is not self:
            raise DefinitionError(
                owner, field,
                f"contains StageRef {ref.id!r} of another builder, "
                f"PipelineBuilder {ref.builder.name!r}",
                "wire only refs returned by this builder's add(); to reuse another pipeline, "
                "add its build() as a SubPipeline stage",
            )  # fmt: skip
        if ref.id not in self._stages:
            raise DefinitionError(
                owner, field, f"contains StageRef {ref.id!r}, a stage this builder never added",
                "pass the StageRef that add() returned",
            )  # fmt: skip
        return ref

    def __repr__(self) -> str:
        return f"PipelineBuilder({self.name!r}, {len(self._stages)} stages)"


def _adaptable(stage: object) -> bool:
    """Whether a tuple adapter can stand for `stage` (else validation reports it, unwrapped)."""
    if isinstance(stage, type):
        return False
    if isinstance(stage, FunctionStage):
        return True
    execute = getattr(stage, "execute", None)
    return callable(execute) and inspect.iscoroutinefunction(execute)


def _tuple_adapter(stage: PipelineStage[Any, Any], ids: tuple[str, ...]) -> Any:
    """`stage`, receiving `{id: output}` (or one output) from the executor, given a tuple."""
    if isinstance(stage, FunctionStage) and not stage.is_async:
        # Still a sync function stage, so runners treat it as the original (a thread by
        # default, the function itself handed to `"threads"` and to custom runners).
        adapter = FunctionStage(
            _TupleArguments(stage.fn, ids),
            name=stage.name,
            abandon_on_cancel=stage.abandon_on_cancel,
        )
        adapter.__wrapped_stage__ = stage  # type: ignore[attr-defined]  # read by unwrap_stage
        adapter.__pipeline_tuple_input__ = True  # type: ignore[attr-defined]  # read by _types
        return adapter
    return TupleInputStage(stage, ids)


def _as_tuple(value: Any, ids: tuple[str, ...]) -> tuple[Any, ...]:
    if len(ids) == 1:  # a single input arrives as the value itself
        return (value,)
    mapping = cast("Mapping[str, Any]", value)
    return tuple(mapping[i] for i in ids)


@final
class _TupleArguments:
    """A sync function `fn(tuple, context)` called as `fn({id: output}, context)`."""

    def __init__(self, fn: Any, ids: tuple[str, ...]) -> None:
        self.fn = fn
        self.ids = ids

    def __call__(self, value: Any, context: PipelineContext[Any], /) -> Any:
        return self.fn(_as_tuple(value, self.ids), context)


@final
class TupleInputStage(Generic[OutputT]):
    """Gives a stage with several inputs a tuple of their outputs instead of `{id: output}`.

    `PipelineBuilder.add(..., inputs=(a, b))` wraps the stage in one; it stands for the stage
    (`__wrapped_stage__`, which the cache follows for output types and fingerprints).

    Args:
        stage: The stage taking `tuple[...]`.
        ids: The input stage ids, in the tuple's order.
    """

    __pipeline_tuple_input__ = True
    """Validation reads this: the stage receives a tuple, not `{id: output}`."""

    def __init__(self, stage: PipelineStage[Any, OutputT], ids: tuple[str, ...]) -> None:
        self.stage = stage
        """The wrapped stage."""
        self.ids = ids
        """The input stage ids, in the tuple's order."""

    @property
    def __wrapped_stage__(self) -> PipelineStage[Any, OutputT]:
        """The wrapped stage (see `pipeline._wrapped.unwrap_stage`)."""
        return self.stage

    @property
    def name(self) -> str:
        """The wrapped stage's name."""
        return self.stage.name

    async def execute(self, input: Any, context: PipelineContext[Any], /) -> StageResult[OutputT]:
        """Call the wrapped stage with the inputs as a tuple, in `ids` order."""
        return await self.stage.execute(_as_tuple(input, self.ids), context)

    def __repr__(self) -> str:
        return f"TupleInputStage({self.stage!r}, {self.ids!r})"


def _single_element_type(stage: object, declared: Any) -> Any:
    """For a stage wired from a 1-tuple `(ref,)`: the type of what the executor hands it.

    The executor passes a single input as the value itself, so edge type checks must compare
    the producer with the tuple's one element, not with the tuple. With several inputs nothing
    is needed: validation reads the stage's `tuple[...]` (through `__wrapped_stage__`)
    position by position, in the order of `inputs`.
    """
    tp = declared if declared is not None else stage_input_type(stage)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and (len(args) == 1 or args[1:] == (Ellipsis,)):
        return Any if isinstance(args[0], TypeVar) else args[0]
    return Any

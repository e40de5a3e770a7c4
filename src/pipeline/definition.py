"""Declarative values: `ExecutionPattern`, `RetryConfig`, `StageDefinition`, `PipelineDefinition`.

Pure values and their validation; nothing here runs a stage or imports anyio. The wave plan
lives in `pipeline.plan`, execution in `pipeline.executor`.
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeGuard, final

from pipeline._graph import Graph, scan
from pipeline._validation import collect_issues
from pipeline.errors import DefinitionError, PipelineValidationError
from pipeline.plan import build_plan

if TYPE_CHECKING:
    from pipeline.context import PipelineContext
    from pipeline.errors import ValidationIssue
    from pipeline.plan import ExecutionPlan
    from pipeline.protocol import PipelineStage

Condition = Callable[["PipelineContext[Any]"], "bool | Awaitable[bool]"]
"""A stage condition: `condition(context) -> bool`, sync or async."""


class ExecutionPattern(enum.StrEnum):
    """How a stage is run.

    `SEQUENTIAL` and `PARALLEL` run the stage once (parallelism comes from the graph: stages
    whose inputs are done run concurrently either way); `FAN_OUT` runs it once per item of its
    list input; `CONDITIONAL` requires a `condition` and skips the stage when it is false.
    """

    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"
    FAN_OUT = "fan_out"
    CONDITIONAL = "conditional"


ATTEMPT_CHAIN_ATTR: Final = "_pipeline_attempt_chain"
"""Where the executor keeps a stage's built attempt chain on its `StageDefinition` (not a field:
eq, hash, `dataclasses.replace`, pickle and deepcopy all leave it out)."""


def _require(ok: bool, owner: str, name: str, problem: str, fix: str) -> None:
    if not ok:
        raise DefinitionError(owner, name, problem, fix)


def _is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool (`True` is an int to Python, never a count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    """An int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_bool(owner: str, name: str, value: object) -> None:
    _require(
        isinstance(value, bool), owner, name, f"is {value!r} ({type(value).__name__})",
        "use True or False"
        + (" (any non-empty str, even 'false', is truthy)" if isinstance(value, str) else ""),
    )  # fmt: skip


def _valid_uses(uses: Any) -> bool:
    return isinstance(uses, Mapping) and all(
        isinstance(k, str) and _is_int(v) and v >= 1 for k, v in uses.items()
    )


def _positive_ms(value: object) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0


def _check_text(owner: str, name: str, value: object) -> None:
    _require(
        value is None or isinstance(value, str),
        owner, name, f"is {value!r} ({type(value).__name__})", "use a str or None",
    )  # fmt: skip


@final
@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How often, and after which waits, a failed attempt is tried again.

    The wait before retry n (n = 1, 2, ...) is
    `initial_delay_ms * backoff_multiplier ** (n - 1)`, capped at `max_delay_ms`, then spread
    by `jitter`. A failure that carries a Retry-After (an exception with a `retry_after_s`
    attribute, or a failed result with `metadata["retry_after_s"]`) waits that long instead
    (capped by `max_delay_ms`, no jitter).

    Which failures are retried: with none of `retryable_errors`, `retry_on` and `retry_if`
    given, every failure (an exception, a timeout or a failed `StageResult`); with any given, a
    failure that any given filter accepts. `retryable_errors` entries match case-insensitively
    as a substring of the error text or equal the exception's class name; `retry_on` matches an
    exception that is an instance of one of its types (subclasses included; a failed result
    without an exception never matches); `retry_if` receives the exception when there is one,
    else the failed `StageResult`, and retries when it returns True. A stage that *returns*
    cancelled is never retried.

    Args:
        max_attempts: Attempts in all (1 = no retry).
        initial_delay_ms: The wait before the first retry.
        backoff_multiplier: Each later wait is this many times the previous one (>= 1).
        max_delay_ms: The cap on every wait, Retry-After included.
        retryable_errors: Substrings of the error text or exception class names to retry.
        retry_on: Exception types to retry (instances of subclasses too).
        retry_if: `retry_if(exception_or_failed_result) -> bool`.
        jitter: None (exact waits), `"full"` (uniform in [0, wait]) or a fraction f in (0, 1]
            (uniform in [wait * (1 - f), wait * (1 + f)], capped at `max_delay_ms`).
        jitter_seed: Seeds the jitter: each stage (and fan-out item) draws from its own source
            seeded with this and its id, so waits repeat run after run yet differ per item.
    """

    max_attempts: int = 1
    initial_delay_ms: float = 1000
    backoff_multiplier: float = 2.0
    max_delay_ms: float = 60000
    retryable_errors: Sequence[str] | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    retry_if: Callable[[Any], bool] | None = None
    jitter: Literal["full"] | float | None = None
    jitter_seed: int | None = None
    _random: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        own = "RetryConfig"
        _require(
            _is_int(self.max_attempts) and self.max_attempts >= 1,
            own, "max_attempts", f"is {self.max_attempts!r}", "use an int >= 1 (1 = no retry)",
        )  # fmt: skip
        for name in ("initial_delay_ms", "max_delay_ms"):
            value: object = getattr(self, name)
            _require(
                _is_number(value) and math.isfinite(value) and value >= 0,
                own, name, f"is {value!r}", "use a finite number of milliseconds >= 0",
            )  # fmt: skip
        multiplier: object = self.backoff_multiplier
        _require(
            _is_number(multiplier) and math.isfinite(multiplier) and multiplier >= 1,
            own, "backoff_multiplier", f"is {self.backoff_multiplier!r}",
            "use a finite number >= 1 (1 = a constant wait)",
        )  # fmt: skip
        if self.retryable_errors is not None:
            errors: Any = self.retryable_errors
            _require(
                not isinstance(errors, str | bytes | Mapping) and isinstance(errors, Iterable),
                own, "retryable_errors", f"is {errors!r}", 'pass a list of str such as ["timeout"]',
            )  # fmt: skip
            entries: tuple[Any, ...] = tuple(errors)
            for entry in entries:
                _require(
                    isinstance(entry, str) and bool(entry.strip()),
                    own, "retryable_errors", f"contains {entry!r}",
                    "use non-empty strings: an exception class name or a piece of the error text",
                )  # fmt: skip
            object.__setattr__(self, "retryable_errors", entries)
        retry_on: Any = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        _require(
            isinstance(retry_on, tuple | list)
            and all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on),
            own, "retry_on", f"is {self.retry_on!r}",
            "pass exception classes, e.g. retry_on=(RateLimitError, TimeoutError)",
        )  # fmt: skip
        object.__setattr__(self, "retry_on", tuple(retry_on))
        _require(
            self.retry_if is None or callable(self.retry_if),
            own, "retry_if", f"is {self.retry_if!r}, not callable",
            "pass a function of the exception (or failed result) returning bool",
        )  # fmt: skip
        _require(
            not inspect.iscoroutinefunction(self.retry_if),
            own, "retry_if", "is an async function (its coroutine would always count as true)",
            "pass a plain def returning bool",
        )  # fmt: skip
        jitter: object = self.jitter
        _require(
            jitter is None
            or jitter == "full"
            or (_is_number(jitter) and math.isfinite(jitter) and 0 < jitter <= 1),
            own, "jitter", f"is {jitter!r}", 'use None, "full" or a fraction in (0, 1]',
        )  # fmt: skip
        seed: object = self.jitter_seed
        _require(
            seed is None or _is_int(seed), own, "jitter_seed", f"is {seed!r}", "use an int or None"
        )  # fmt: skip
        object.__setattr__(self, "_random", random.Random(self.jitter_seed))

    def wait_s(
        self,
        retry_number: int,
        retry_after_s: float | None = None,
        *,
        rng: random.Random | None = None,
    ) -> float:
        """The wait before retry `retry_number` in seconds: Retry-After or backoff + jitter.

        Jitter draws from `rng` when given (the executor seeds one per stage and item from
        `jitter_seed`), else from this config's own source.
        """
        cap = self.max_delay_ms / 1000
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), cap)
        wait = self.delay_ms(retry_number) / 1000
        jitter = self.jitter
        if jitter is None or wait == 0:
            return wait
        source = rng if rng is not None else self._random
        if jitter == "full":
            return source.uniform(0.0, wait)
        return min(source.uniform(wait * (1 - jitter), wait * (1 + jitter)), cap)

    def accepts(self, error: str | None, exception: BaseException | None, failed: Any) -> bool:
        """Whether a failure (its text, its exception if any, the failed result) may be retried.

        See the class docstring for how `retryable_errors`, `retry_on` and `retry_if` combine.
        """
        if not self.retryable_errors and not self.retry_on and self.retry_if is None:
            return True
        if self.retryable_errors and self.is_retryable(
            error, None if exception is None else type(exception).__name__
        ):
            return True
        if self.retry_on and exception is not None and isinstance(exception, self.retry_on):
            return True
        if self.retry_if is not None:
            try:
                return bool(self.retry_if(exception if exception is not None else failed))
            except Exception:  # noqa: BLE001  # a broken filter means "do not retry", never a crash
                return False
        return False

    def delay_ms(self, retry_number: int) -> float:
        """The wait before retry `retry_number` (1 = the first retry)."""
        cap = self.max_delay_ms
        initial = self.initial_delay_ms
        if initial >= cap or self.backoff_multiplier == 1:
            return float(min(initial, cap))
        # The cap applies before the power can overflow: past this many doublings (or whatever
        # the multiplier is) the wait is the cap, so huge retry numbers never compute a power.
        if initial == 0:
            return 0.0
        # Logs, not the ratio: cap / initial itself overflows for cap=1e300, initial=1e-10.
        limit = (math.log(cap) - math.log(initial)) / math.log(self.backoff_multiplier)
        exponent = retry_number - 1
        if exponent >= limit:
            return float(cap)
        try:
            return float(min(initial * self.backoff_multiplier**exponent, cap))
        except OverflowError:  # pragma: no cover - the limit above keeps the power finite
            return float(cap)

    def retries_after(
        self, attempt: int, error: str | None, exception_type: str | None = None
    ) -> bool:
        """Whether attempt number `attempt`, having failed this way, is followed by another."""
        return attempt < self.max_attempts and self.is_retryable(error, exception_type)

    def is_retryable(self, error: str | None, exception_type: str | None = None) -> bool:
        """Whether `retryable_errors` alone lets this error text / exception class name retry."""
        if not self.retryable_errors:
            return True
        text = (error or "").lower()
        return any(
            entry.lower() in text or entry == exception_type for entry in self.retryable_errors
        )


@final
@dataclass(frozen=True, init=False)
class StageDefinition:
    """One stage of a pipeline: its id, the stage object and how it is wired and run.

    Args:
        id: Unique id within the pipeline; other stages name it in `inputs`.
        stage: An object satisfying `PipelineStage`.
        pattern: How the stage runs (`ExecutionPattern`).
        inputs: Ids of the stages whose outputs this stage receives. None: the pipeline's
            initial input; one: that stage's output; several: `{id: output}` in this order.
        condition: `condition(context) -> bool` (or awaitable), checked just before the stage
            would start; false skips it (dependents still run and receive None).
        retry_config: Retry policy; None means one attempt.
        timeout_ms: Bound on each attempt (each item's attempt for FAN_OUT).
        critical: A failed non-critical stage does not fail the run; dependents receive None.
        max_concurrent_fan_out: FAN_OUT concurrency cap; None or 0 means unlimited.
        description: Free text, shown in graphs and summaries.
        input_type: Declared input type (documentation and tooling).
        output_type: Declared output type (for FAN_OUT: one item's output type); cached
            outputs are restored to it.
        cache: False keeps this stage out of the executor's cache.
        cache_version: Part of the cache key: change it to invalidate old entries.
        cache_code_fingerprint: Also key on the source of the stage's class, so editing the
            code invalidates its entries.
        runner: The name of the runner its attempts run on (`"inline"`, `"threads"` or one
            given to `PipelineExecutor(runners=...)`). None: `"threads"` for a sync function
            stage, `"inline"` otherwise.
        uses: Resources of the executor (`PipelineExecutor(resources=...)`) each attempt holds,
            as `{name: weight}`: acquired before the attempt (each fan-out item's), released
            after it; the wait is not part of `timeout_ms`.
        batch_size: FAN_OUT only: send this many items to the runner at a time (one call of
            the runner per batch); retries, timeouts, cache and events stay per item. None: 1.
        buffer: FAN_OUT over a streaming producer only: how many produced items may wait for
            a free slot (backpressure beyond it). None: `max_concurrent_fan_out`.
    """

    id: str
    stage: PipelineStage[Any, Any]
    _: KW_ONLY
    pattern: ExecutionPattern = ExecutionPattern.SEQUENTIAL
    inputs: Sequence[str] = ()
    condition: Condition | None = None
    retry_config: RetryConfig | None = None
    timeout_ms: float | None = None
    critical: bool = True
    max_concurrent_fan_out: int | None = 4
    description: str | None = None
    input_type: Any = None
    output_type: Any = None
    cache: bool = True
    cache_version: str | int = 0
    cache_code_fingerprint: bool = False
    runner: str | None = None
    uses: Mapping[str, int] = field(default_factory=dict, hash=False)
    batch_size: int | None = None
    buffer: int | None = None

    # Written out rather than generated, with the checks on local names: the generated
    # `__init__` of a frozen dataclass sets each of the 20 fields through `object.__setattr__`
    # and `__post_init__` then reads them back as attributes (2.4 us a stage together); this
    # costs ~1.2 us (benchmarks/overhead.py, W1/W2 "build" rows). It relies on the class having
    # a `__dict__` (no slots) and on these defaults matching the fields' (a test compares them:
    # tests/unit/test_definition.py::test_init_signature_matches_the_dataclass_fields).
    def __init__(
        self,
        id: str,
        stage: PipelineStage[Any, Any],
        *,
        pattern: ExecutionPattern = ExecutionPattern.SEQUENTIAL,
        inputs: Sequence[str] = (),
        condition: Condition | None = None,
        retry_config: RetryConfig | None = None,
        timeout_ms: float | None = None,
        critical: bool = True,
        max_concurrent_fan_out: int | None = 4,
        description: str | None = None,
        input_type: Any = None,
        output_type: Any = None,
        cache: bool = True,
        cache_version: str | int = 0,
        cache_code_fingerprint: bool = False,
        runner: str | None = None,
        uses: Mapping[str, int] | None = None,
        batch_size: int | None = None,
        buffer: int | None = None,
    ) -> None:
        if type(inputs) is not tuple and isinstance(inputs, list):
            inputs = tuple(inputs)
        d = self.__dict__
        d["id"] = id
        d["stage"] = stage
        d["pattern"] = pattern
        d["inputs"] = inputs
        d["condition"] = condition
        d["retry_config"] = retry_config
        d["timeout_ms"] = timeout_ms
        d["critical"] = critical
        d["max_concurrent_fan_out"] = max_concurrent_fan_out
        d["description"] = description
        d["input_type"] = input_type
        d["output_type"] = output_type
        d["cache"] = cache
        d["cache_version"] = cache_version
        d["cache_code_fingerprint"] = cache_code_fingerprint
        d["runner"] = runner
        d["uses"] = {} if uses is None else uses
        d["batch_size"] = batch_size
        d["buffer"] = buffer
        # The common case: every check as one cheap expression (~0.5 us). Only when it fails do
        # the detailed checks run and build the message of the first problem found, so a
        # well-formed definition never formats an error text (that cost ~6 us a stage).
        # Runtime checks for callers without a type checker: read as Any, not narrowed.
        cap: Any = max_concurrent_fan_out
        retry: Any = retry_config
        when: Any = condition
        flags: Any = (critical, cache, cache_code_fingerprint)
        text: Any = description
        if (
            type(id) is str
            and id.strip()
            and type(inputs) is tuple
            and all(type(i) is str for i in inputs)
            and type(pattern) is ExecutionPattern
            and not isinstance(stage, type)
            and (timeout_ms is None or _positive_ms(timeout_ms))
            and (retry is None or type(retry) is RetryConfig)
            and (cap is None or ((type(cap) is int or _is_int(cap)) and cap >= 0))
            and (when is None or callable(when))
            and type(flags[0]) is bool
            and type(flags[1]) is bool
            and type(flags[2]) is bool
            and (text is None or isinstance(text, str))
            and (runner is None or (type(runner) is str and runner.strip()))
            and (type(cache_version) in (str, int) or _is_int(cache_version))
            and (uses is None or not uses or _valid_uses(uses))
            and (
                (batch_size is None and buffer is None)
                or (
                    pattern is ExecutionPattern.FAN_OUT
                    and (batch_size is None or (_is_int(batch_size) and batch_size >= 1))
                    and (buffer is None or (_is_int(buffer) and buffer >= 1))
                )
            )
        ):
            if uses:  # a copy: the caller's dict may change, this stage must not
                d["uses"] = dict(uses)
            return
        self._check_fields()

    def __getstate__(self) -> dict[str, Any]:
        """The fields, for pickle and deepcopy (without the executor's cached attempt chain)."""
        state = dict(self.__dict__)
        state.pop(ATTEMPT_CHAIN_ATTR, None)
        return state

    def _check_fields(self) -> None:
        own = f"StageDefinition {self.id!r}"
        sid: object = self.id
        _require(
            isinstance(sid, str) and bool(sid.strip()),
            own, "id", "is empty or not a str", "give every stage a unique non-empty string id",
        )  # fmt: skip
        stage: object = self.stage
        if isinstance(stage, type):
            name = stage.__name__
            raise DefinitionError(
                own, "stage", f"is the class {name}, not an instance", f"pass {name}() instead"
            )
        _require(
            not isinstance(self.inputs, str),
            own, "inputs", f"is the str {self.inputs!r}", f"use a list: inputs=[{self.inputs!r}]",
        )  # fmt: skip
        inputs: object = self.inputs
        _require(
            isinstance(inputs, Sequence) and all(isinstance(d, str) for d in inputs),
            own, "inputs", f"is {self.inputs!r}", "use a list of stage ids, or [] for none",
        )  # fmt: skip
        object.__setattr__(self, "inputs", tuple(self.inputs))
        pattern: object = self.pattern
        _require(
            pattern in set(ExecutionPattern),
            own, "pattern", f"is {self.pattern!r}",
            f"use an ExecutionPattern ({', '.join(p.name for p in ExecutionPattern)})",
        )  # fmt: skip
        object.__setattr__(self, "pattern", ExecutionPattern(self.pattern))
        timeout: object = self.timeout_ms
        _require(
            timeout is None or (_is_number(timeout) and math.isfinite(timeout) and timeout > 0),
            own, "timeout_ms", f"is {self.timeout_ms!r}", "use a positive number of ms or None",
        )  # fmt: skip
        retry: object = self.retry_config
        _require(
            retry is None or isinstance(retry, RetryConfig),
            own, "retry_config", f"is {type(retry).__name__}",
            "pass RetryConfig(max_attempts=..., ...) or None",
        )  # fmt: skip
        cap: object = self.max_concurrent_fan_out
        _require(
            cap is None or (_is_int(cap) and cap >= 0),
            own, "max_concurrent_fan_out", f"is {cap!r}", "use an int >= 1, or None/0 for no cap",
        )  # fmt: skip
        _require(
            self.condition is None or callable(self.condition),
            own, "condition", f"is {self.condition!r}, not callable",
            "pass a function of the context returning bool",
        )  # fmt: skip
        for flag in ("critical", "cache", "cache_code_fingerprint"):
            _check_bool(own, flag, getattr(self, flag))
        _check_text(own, "description", self.description)
        runner: object = self.runner
        _require(
            runner is None or (isinstance(runner, str) and bool(runner.strip())),
            own, "runner", f"is {runner!r}", 'name a runner such as "threads", or pass None',
        )  # fmt: skip
        uses: object = self.uses
        _require(
            isinstance(uses, Mapping) and _valid_uses(uses),
            own, "uses", f"is {uses!r}",
            'map resource names to int weights >= 1, e.g. uses={"llm": 1}',
        )  # fmt: skip
        object.__setattr__(self, "uses", dict(self.uses))
        version: object = self.cache_version
        _require(
            isinstance(version, str) or _is_int(version),
            own, "cache_version", f"is {version!r} ({type(version).__name__})",
            'use a str or an int, e.g. cache_version="2"',
        )  # fmt: skip
        for name in ("batch_size", "buffer"):
            size: object = getattr(self, name)
            _require(
                size is None or (_is_int(size) and size >= 1),
                own, name, f"is {size!r}", "use an int >= 1, or None for the default",
            )  # fmt: skip
            _require(
                size is None or self.pattern is ExecutionPattern.FAN_OUT,
                own, name, f"is set on a {self.pattern.name} stage",
                "use it on FAN_OUT stages only (it counts list items), or remove it",
            )  # fmt: skip


@final
@dataclass(frozen=True)
class PipelineDefinition:
    """A named set of stages. Constructing an invalid definition does not raise.

    `validate_pipeline()` lists every problem as text; `validate()` raises
    `PipelineValidationError` carrying them as structured `ValidationIssue`s.
    """

    name: str
    stages: Sequence[StageDefinition] = field(default_factory=tuple)
    description: str | None = None
    fail_fast: bool = True

    def __post_init__(self) -> None:
        name: object = self.name
        own = f"PipelineDefinition {name!r}"
        _require(
            isinstance(name, str) and bool(name.strip()),
            own, "name", "is empty or not a str", 'give the pipeline a name, e.g. "ingest"',
        )  # fmt: skip
        stages: object = self.stages
        _require(
            isinstance(stages, Iterable)
            and not isinstance(stages, str | bytes | Mapping | set | frozenset),
            own, "stages", f"is {type(stages).__name__}",
            "pass a list of StageDefinition(...) objects (a list: its order is the tie-breaker)",
        )  # fmt: skip
        entries: tuple[object, ...] = tuple(self.stages)
        for i, entry in enumerate(entries):
            if not isinstance(entry, StageDefinition):
                what = type(entry).__name__
                raise DefinitionError(
                    own, f"stages[{i}]", f"is an instance of {what}, not a StageDefinition",
                    f'wrap it: StageDefinition("some_id", <the {what}>)',
                )  # fmt: skip
        object.__setattr__(self, "stages", entries)
        _check_bool(own, "fail_fast", self.fail_fast)
        _check_text(own, "description", self.description)

    @functools.cached_property
    def _graph(self) -> Graph:
        return scan(self.stages)

    @functools.cached_property
    def issues(self) -> tuple[ValidationIssue, ...]:
        """Every problem with this definition, as structured items (empty when valid)."""
        return collect_issues(self.stages, self._graph)

    def validate_pipeline(self) -> list[str]:
        """Every problem with this definition, as messages (empty when valid)."""
        return [issue.message for issue in self.issues]

    def validate(self) -> None:
        """Raise `PipelineValidationError` listing every problem, if there is any."""
        if self.issues:
            raise PipelineValidationError(self.name, self.issues)

    @functools.cached_property
    def _by_id(self) -> dict[str, StageDefinition]:
        return {s.id: s for s in reversed(self.stages)}  # first definition wins on duplicates

    def get_stage(self, stage_id: str) -> StageDefinition:
        """The stage with `stage_id`; `KeyError` naming the known ids otherwise."""
        try:
            return self._by_id[stage_id]
        except KeyError:
            known = ", ".join(repr(s.id) for s in self.stages) or "none"
            msg = f"pipeline {self.name!r} has no stage {stage_id!r}; known stages: {known}"
            raise KeyError(msg) from None

    def get_entry_points(self) -> list[StageDefinition]:
        """The stages without inputs: they receive the pipeline's initial input."""
        return [s for s in self.stages if not s.inputs]

    @functools.cached_property
    def plan(self) -> ExecutionPlan:
        """The execution plan (waves, predecessors, successors); validates first."""
        self.validate()
        return build_plan(self.stages, self._graph)

    def to_config(self, format: Literal["yaml", "toml", "json"] = "yaml") -> str:
        """This definition as a declarative file (`pipeline.config.load` reads it back).

        Every part must be importable: stages are written as `module:attr` references (a stage
        loaded from a file keeps its reference and `params`), conditions as their CEL `when:`
        expressions, `retry_on` / `retry_if` as references. TOML has no null: an unlimited
        `max_concurrent_fan_out` is written as 0 (which also means no cap).

        Raises:
            ConfigError: A part cannot be written (a lambda or local class, an instance built
                with arguments, a condition that is not CEL, a declared `input_type`); the
                message names the stage and the field.
        """
        from pipeline.config._dump import to_config

        return to_config(self, format)

"""What the edge type checks (SPEC section 10) cost: build, validate and type-check per stage.

Definitions of 1,000 stages in blocks of 14: a chain through ten typed functions, a FAN_OUT
over a list, two typed stage classes and a two-input join whose input is a TypedDict keyed by
its inputs' ids:

- "annotated": the same ten typed `@stage` functions and two typed stage classes in every
  block (the common case: few stage functions, many stages). Types are read once per function
  or class and each pair of types is decided once, so a later definition reuses both.
- "annotated, new functions": every block gets ten freshly made functions (a factory called in
  a loop: new function objects, same code), read once per code and annotations.
- "annotated, distinct code": every block's ten functions are distinct code (made with `exec`
  each round), so every stage's types are read for the first time: the one-time cost of a
  function never seen before (not part of the budget: it is paid once per function).
- "unannotated": the same shape with unannotated functions (`Any` everywhere).

For each: "build" constructs the `StageDefinition`s and the `PipelineDefinition`; "validate" is
`.issues` on that fresh definition (every rule, the edge types included); "validate, no types"
is the same with the edge type rule unregistered; "type-check" is the edge type rule alone. The
budget (issue 12) is the added cost, validate minus validate-without-types, at most 10 µs per
stage. Medians of `--rounds` rounds after one warm-up.

Usage: python benchmarks/typecheck.py [--stages N] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any, TypedDict

from pydantic import BaseModel

from pipeline import (
    ExecutionPattern,
    FunctionStage,
    PipelineContext,
    PipelineDefinition,
    StageDefinition,
    StageResult,
    _types,
    _validation,
    stage,
)

if TYPE_CHECKING:
    from collections.abc import Callable

BUDGET_US = 10.0

_MAKE_TYPEDDICT: Any = TypedDict
"""`TypedDict`'s functional form, for keys known only at run time (the joins' input ids)."""


class Row(BaseModel):
    """A typed record flowing through the chain."""

    n: int


_SOURCE = """
async def a{k}(x: int, ctx: PipelineContext[Any]) -> str: ...
async def b{k}(x: str, ctx: PipelineContext[Any]) -> list[int]: ...
async def c{k}(x: list[int], ctx: PipelineContext[Any]) -> Row: ...
async def d{k}(x: Row, ctx: PipelineContext[Any]) -> dict[str, float]: ...
async def e{k}(x: dict[str, float], ctx: PipelineContext[Any]) -> tuple[int, ...]: ...
async def f{k}(x: tuple[int, ...], ctx: PipelineContext[Any]) -> int | None: ...
async def g{k}(x: int | None, ctx: PipelineContext[Any]) -> bytes: ...
async def h{k}(x: bytes, ctx: PipelineContext[Any]) -> list[Row]: ...
async def i{k}(x: list[Row], ctx: PipelineContext[Any]) -> bool: ...
async def j{k}(x: int, ctx: PipelineContext[Any]) -> int: ...
"""
_made = 0


def _distinct_functions() -> list[FunctionStage[Any, Any]]:
    """Ten functions like `_typed_functions`, but of code never compiled before."""
    global _made
    _made += 1
    namespace: dict[str, Any] = {"PipelineContext": PipelineContext, "Any": Any, "Row": Row}
    exec(  # fixed source: distinct code objects on purpose
        "from __future__ import annotations\n" + _SOURCE.format(k=_made), namespace
    )
    return [stage(namespace[f"{name}{_made}"]) for name in "abcdefghij"]


def _typed_functions() -> list[FunctionStage[Any, Any]]:
    """Ten stage functions whose types chain: each one's output is the next one's input."""

    async def a(x: int, ctx: PipelineContext[Any]) -> str:
        return str(x)

    async def b(x: str, ctx: PipelineContext[Any]) -> list[int]:
        return [len(x)]

    async def c(x: list[int], ctx: PipelineContext[Any]) -> Row:
        return Row(n=sum(x))

    async def d(x: Row, ctx: PipelineContext[Any]) -> dict[str, float]:
        return {"n": float(x.n)}

    async def e(x: dict[str, float], ctx: PipelineContext[Any]) -> tuple[int, ...]:
        return (int(x["n"]),)

    async def f(x: tuple[int, ...], ctx: PipelineContext[Any]) -> int | None:
        return x[0]

    async def g(x: int | None, ctx: PipelineContext[Any]) -> bytes:
        return b""

    async def h(x: bytes, ctx: PipelineContext[Any]) -> list[Row]:
        return []

    async def i(x: list[Row], ctx: PipelineContext[Any]) -> bool:
        return True

    async def j(x: int, ctx: PipelineContext[Any]) -> int:  # bool fits int
        return 1

    return [stage(fn) for fn in (a, b, c, d, e, f, g, h, i, j)]


class Count:
    """A typed stage class: `str -> int`."""

    name = "count"

    async def execute(self, input: str, context: PipelineContext[Any]) -> StageResult[int]:
        return StageResult.success(len(input))


class Show:
    """A typed stage class: `int -> str`."""

    name = "show"

    async def execute(self, input: int, context: PipelineContext[Any]) -> StageResult[str]:
        return StageResult.success(str(input))


@stage
async def each(x: int, ctx: PipelineContext[Any]) -> int:
    return x


@stage
async def source(x: Any, ctx: PipelineContext[Any]) -> int:
    return 0


@stage
async def loose(x, ctx):  # type: ignore[no-untyped-def]  # the unannotated case on purpose
    return x


@stage
async def join(x: Any, ctx: PipelineContext[Any]) -> int:
    return 0


def definition(n: int, kind: str, join_types: dict[int, Any]) -> PipelineDefinition:
    """`n` stages of `kind` (see the module docstring), every edge well typed.

    Blocks of 14 stages, each taking and giving an int: a, b (-> list[int]), a FAN_OUT over
    it, c .. j, a `Show` and a `Count` class stage, and a join of `Count` and `j` whose input
    is a TypedDict keyed by those two ids (one TypedDict per join, made once).
    """
    fns = _typed_functions() if kind != "annotated, distinct code" else _distinct_functions()
    stages = [StageDefinition("s", loose if kind == "unannotated" else source)]
    prev = "s"
    block = 0
    while len(stages) < n:
        if kind == "annotated, new functions":
            fns = _typed_functions()
        elif kind == "annotated, distinct code":
            fns = _distinct_functions()
        a, b, c, d, e, f, g, h, i, j = fns
        chain: list[tuple[str, Any, dict[str, Any]]] = [
            ("a", a, {}), ("b", b, {}), ("each", each, {"pattern": ExecutionPattern.FAN_OUT}),
            ("c", c, {}), ("d", d, {}), ("e", e, {}), ("f", f, {}), ("g", g, {}),
            ("h", h, {}), ("i", i, {}), ("j", j, {}), ("show", Show(), {}),
            ("count", Count(), {}),
        ]  # fmt: skip
        for name, fn, options in chain:
            sid = f"{name}{block}"
            obj = loose if kind == "unannotated" else fn
            stages.append(StageDefinition(sid, obj, inputs=[prev], **options))
            prev = sid
        left, right = f"count{block}", f"j{block}"
        join_type: Any = None
        if kind != "unannotated":
            join_type = join_types.get(block)
            if join_type is None:
                keys = {left: int, right: int}
                join_type = _MAKE_TYPEDDICT(f"Join{block}", keys)
                join_types[block] = join_type
        sid = f"join{block}"
        obj = loose if kind == "unannotated" else join
        stages.append(StageDefinition(sid, obj, inputs=[left, right], input_type=join_type))
        prev = sid
        block += 1
    return PipelineDefinition(f"typed-{kind}", stages[:n])


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(n: int, kind: str, rounds: int) -> dict[str, float]:
    """Per-stage µs of build, validate, validate without the type rule, type-check alone."""
    join_types: dict[int, Any] = {}
    warm = definition(n, kind, join_types)
    assert warm.issues == (), [i.message for i in warm.issues][:3]
    samples: dict[str, list[float]] = {
        "build": [], "validate": [], "validate, no types": [], "type-check": []
    }  # fmt: skip
    for _ in range(rounds):
        t0 = time.perf_counter()
        d = definition(n, kind, join_types)
        samples["build"].append(time.perf_counter() - t0)
        samples["validate"].append(timed(lambda d=d: d.issues))  # type: ignore[misc]  # bound default
        d = definition(n, kind, join_types)
        _validation._late_rules.remove(_types.edge_type_issues)
        try:
            samples["validate, no types"].append(timed(lambda d=d: d.issues))  # type: ignore[misc]
        finally:
            _validation.register_late_rule(_types.edge_type_issues)
        d = definition(n, kind, join_types)
        scope = _validation.Scope(d.stages, {s.id for s in d.stages}, acyclic=True)
        samples["type-check"].append(
            timed(lambda scope=scope: list(_types.edge_type_issues(scope)))  # type: ignore[misc]
        )
    return {k: statistics.median(v) / n * 1e6 for k, v in samples.items()}


KINDS = ("annotated", "annotated, new functions", "annotated, distinct code", "unannotated")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    n = args.stages
    gc.collect()
    gc.freeze()
    print(f"{n}-stage definitions, µs per stage (median of {args.rounds} rounds)")
    print(f"{'definition':<28}{'build':>9}{'validate':>10}{'no types':>10}{'types':>8}  added")
    ok = True
    for kind in KINDS:
        us = measure(n, kind, args.rounds)
        added = us["validate"] - us["validate, no types"]
        within = added <= BUDGET_US
        if kind == "annotated, distinct code":
            print(
                f"{kind:<28}{us['build']:>9.2f}{us['validate']:>10.2f}"
                f"{us['validate, no types']:>10.2f}{us['type-check']:>8.2f}  {added:+.2f}"
                " (first read of every function: once per function, not in the budget)"
            )
            continue
        ok &= within
        print(
            f"{kind:<28}{us['build']:>9.2f}{us['validate']:>10.2f}"
            f"{us['validate, no types']:>10.2f}{us['type-check']:>8.2f}  {added:+.2f}"
            f" ({'ok' if within else 'OVER'} <= {BUDGET_US:g})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Which CEL engine for `when:` conditions: the three Python CEL packages, measured side by side.

For each of Google's `cel-expr-python` (import `cel_expr_python`, the C++ cel-cpp runtime),
`common-expression-language` (import `cel`, Rust) and `cel-python` (import `celpy`, pure
Python): the median time to compile one condition, to evaluate it once (with the data
conversion each needs), and whether compiling catches, before anything runs, a syntax error,
an unknown variable and a condition that cannot be a bool. The baseline is the same condition
hand-written as a Python function over the same dicts, measured in the same run: the ratio
column is the engine's evaluation time over it.

Usage: python benchmarks/cel_conditions.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

EXPRESSION = "state.risk > 0.7 && 'admin' in state.roles && size(outputs.scores) == 3"
DATA: dict[str, Any] = {
    "state": {"risk": 0.75, "roles": ["admin", "dev"]},
    "metrics": {"calls": 3},
    "outputs": {"scores": [3, 5, 8]},
    "input": None,
}
BAD_SYNTAX = "state.risk >"
UNKNOWN_VARIABLE = "secrets.key == 1"
NOT_A_BOOL = "1 + 2"


def baseline(data: dict[str, Any]) -> bool:
    """The condition as hand-written Python."""
    state = data["state"]
    return bool(
        state["risk"] > 0.7 and "admin" in state["roles"] and len(data["outputs"]["scores"]) == 3
    )


class Engine:
    """One CEL package: how to compile, evaluate and check with it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def compile(self, source: str) -> Any:
        """A compiled program (raises when the package rejects the source at compile time)."""
        raise NotImplementedError

    def evaluate(self, program: Any, data: dict[str, Any]) -> bool:
        """One evaluation, including the conversion of the data the package needs."""
        raise NotImplementedError

    def rejects(self, source: str) -> bool:
        """Whether compiling `source` fails (the check happens at load time)."""
        try:
            self.compile(source)
        except Exception:  # any rejection counts
            return True
        return False


class GoogleCel(Engine):
    """`cel-expr-python`: compile type-checks against declared variables."""

    def __init__(self) -> None:
        super().__init__("cel-expr-python (Google, C++)")
        from cel_expr_python import cel  # type: ignore[import-untyped]  # no py.typed

        self.cel = cel
        dyn = cel.Type.DYN
        by_name = cel.Type.Map(cel.Type.STRING, dyn)
        names = ("state", "metrics", "outputs")
        self.env = cel.NewEnv(variables={**dict.fromkeys(names, by_name), "input": dyn})

    def compile(self, source: str) -> Any:
        program = self.env.compile(source)
        if program.return_type() not in (self.cel.Type.BOOL, self.cel.Type.DYN):
            msg = "not a bool"
            raise TypeError(msg)
        return program

    def evaluate(self, program: Any, data: dict[str, Any]) -> bool:
        return bool(program.eval(data=data).value())


class RustCel(Engine):
    """`common-expression-language`: parses at compile; variables are checked by hand."""

    def __init__(self) -> None:
        super().__init__("common-expression-language (Rust)")
        import cel

        self.cel = cel

    def compile(self, source: str) -> Any:
        program = self.cel.compile(source)
        unknown = set(program.variables()) - {"state", "metrics", "outputs", "input"}
        if unknown:
            msg = f"unknown variables {unknown}"
            raise NameError(msg)
        return program

    def evaluate(self, program: Any, data: dict[str, Any]) -> bool:
        return bool(program.execute(data))


class PyCel(Engine):
    """`cel-python`: pure Python; parses at compile, names are resolved when evaluating."""

    def __init__(self) -> None:
        super().__init__("cel-python (pure Python)")
        import celpy

        self.celpy = celpy
        self.env = celpy.Environment()

    def compile(self, source: str) -> Any:
        return self.env.program(self.env.compile(source))

    def evaluate(self, program: Any, data: dict[str, Any]) -> bool:
        to_cel = self.celpy.json_to_cel  # type: ignore[attr-defined]  # re-exported untyped
        activation = {k: to_cel(v) for k, v in data.items()}
        return bool(program.evaluate(activation))


def _median_us(fn: Callable[[], object], loops: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops * 1e6)
    return statistics.median(samples)


def main(quick: bool) -> None:
    """Measure every installed engine and print the table."""
    loops, rounds = (200, 3) if quick else (5000, 7)
    base_us = _median_us(lambda: baseline(DATA), loops, rounds)
    engines: list[Engine] = []
    for make in (GoogleCel, RustCel, PyCel):
        try:
            engines.append(make())
        except ImportError as exc:
            print(f"(skipped {make.__name__}: {exc})")
    header = (
        f"{'engine':<36} {'compile us':>10} {'eval us':>8} {'x python':>8} "
        f"{'syntax':>6} {'unknown var':>11} {'not bool':>8}"
    )
    print(f"condition: {EXPRESSION}")
    print(f"hand-written Python baseline: {base_us:.2f} us per evaluation")
    print(header)
    print("-" * len(header))
    for engine in engines:
        program = engine.compile(EXPRESSION)
        assert engine.evaluate(program, DATA) is True
        compile_loops = max(loops // 10, 20)
        compile_us = _median_us(lambda e=engine: e.compile(EXPRESSION), compile_loops, rounds)  # type: ignore[misc]
        eval_us = _median_us(lambda e=engine, p=program: e.evaluate(p, DATA), loops, rounds)  # type: ignore[misc]
        checks = [engine.rejects(s) for s in (BAD_SYNTAX, UNKNOWN_VARIABLE, NOT_A_BOOL)]
        marks = ["yes" if c else "no" for c in checks]
        print(
            f"{engine.name:<36} {compile_us:>10.1f} {eval_us:>8.2f} {eval_us / base_us:>8.1f} "
            f"{marks[0]:>6} {marks[1]:>11} {marks[2]:>8}"
        )
    from pipeline import PipelineContext
    from pipeline.config import CelCondition

    condition = CelCondition(EXPRESSION)
    context = PipelineContext(state=DATA["state"], metrics=DATA["metrics"])
    outputs = DATA["outputs"]
    assert condition(context, None, outputs) is True
    used_us = _median_us(lambda: condition(context, None, outputs), loops, rounds)
    print(
        f"{'pipeline.config.CelCondition (as run)':<36} {'':>10} {used_us:>8.2f} "
        f"{used_us / base_us:>8.1f}   (cel-expr-python + state/metrics/outputs conversion)"
    )
    print(
        "\ncompile = once per when: at load time; eval = per stage per run (includes the data "
        "conversion each engine needs);\nsyntax / unknown var / not bool = rejected at compile "
        "time, before any run (common-expression-language: variables checked by listing them)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few loops: a smoke test")
    main(parser.parse_args().quick)

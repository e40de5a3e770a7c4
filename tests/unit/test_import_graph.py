"""The package's import graph has no circle, and the pure modules never reach anyio or the executor.

The graph is read from the source with `ast`: every `import` / `from ... import` of a
`pipeline` module, at module level and inside functions and classes alike (a function-level
import is still a circle, only a deferred one), except those under `if TYPE_CHECKING:`, which
never run. An edge goes to the module named (`from pipeline.x import y` goes to `pipeline.x.y`
when that is a module, else to `pipeline.x`); the implicit import of a parent package is not an
edge, but importing a package (`from pipeline import X`) is.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import pipeline

SRC = Path(pipeline.__file__).parent
"""`src/pipeline`."""

PURE = (
    "pipeline.definition",
    "pipeline.plan",
    "pipeline._validation",
    "pipeline.viz",
    "pipeline.events",
)
"""Modules that describe and draw pipelines or their events, and never run anything."""

RUNNING = frozenset({"anyio", "pipeline.executor"})
"""What the pure modules must never import, directly or not."""


@dataclass(frozen=True)
class Import:
    """One import statement's target, and where it is."""

    target: str
    line: int
    deferred: bool
    """True for an import inside a function (it runs on the first call, not on import)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from` import reads from (relative imports included)."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str) -> list[Import]:
    """Every import that runs (at import time or later) in `module`, with external ones too."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(statements: list[ast.stmt], deferred: bool) -> None:
        for node in statements:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse, deferred)  # the body never runs; an else branch does
                continue
            if isinstance(node, ast.Import):
                found.extend(Import(a.name, node.lineno, deferred) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.append(Import(sub if sub in MODULES else base, node.lineno, deferred))
            inner = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    blocks = [c for c in children if isinstance(c, ast.stmt)]
                    blocks += [s for c in children if not isinstance(c, ast.stmt) for s in c.body]
                    visit(blocks, deferred or inner)

    visit(tree.body, deferred=False)
    return found


GRAPH: dict[str, dict[str, Import]] = {
    module: {imp.target: imp for imp in reversed(imports_of(module)) if imp.target in MODULES}
    for module in MODULES
}
"""Module -> the pipeline modules it imports (first import statement of each)."""


def _cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(c), c[0]) for c in components]


def _cycle_in(graph: dict[str, dict[str, Import]], members: set[str], start: str) -> list[str]:
    """The shortest path from `start` back to itself inside one component."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for succ in sorted(graph[node]):
            if succ == start:
                return [*paths[node], start]
            if succ in members and succ not in paths:
                paths[succ] = [*paths[node], succ]
                queue.append(succ)
    raise AssertionError("a component without a cycle")  # pragma: no cover


def _describe(cycle: list[str]) -> str:
    steps = []
    for a, b in itertools.pairwise(cycle):
        imp = GRAPH[a][b]
        where = f"{MODULES[a].relative_to(SRC.parent)}:{imp.line}"
        steps.append(f"{a} -> {b} ({where}{', in a function' if imp.deferred else ''})")
    return "\n    ".join(steps)


def test_the_graph_was_read() -> None:
    assert len(MODULES) > 30
    assert "pipeline.plan" in GRAPH["pipeline.definition"]
    assert "pipeline.errors" in GRAPH["pipeline.result"]


def test_the_package_has_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    shown = "\n  ".join(_describe(c) for c in cycles)
    assert not cycles, f"import cycles (break each with a module of its own):\n  {shown}"


def test_the_cycle_finder_finds_deferred_and_indirect_cycles() -> None:
    late = Import("x", 1, deferred=True)
    graph = {
        "a": {"b": Import("b", 1, deferred=False)},
        "b": {"c": Import("c", 1, deferred=False)},
        "c": {"a": late},
        "d": {"a": Import("a", 1, deferred=False)},
    }
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {}, "b": {"a": late}}) == []


def _reached_from(start: str) -> dict[str, list[str]]:
    """Every module `start` imports, directly or not, with the import chain that gets there."""
    chains = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for succ in GRAPH[node]:
            if succ not in chains:
                chains[succ] = [*chains[node], succ]
                queue.append(succ)
    return chains


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_neither_anyio_nor_the_executor(module: str) -> None:
    offending = []
    for reached, chain in _reached_from(module).items():
        if reached in RUNNING:
            offending.append(" -> ".join(chain))
        offending.extend(
            f"{' -> '.join(chain)} -> anyio (line {imp.line})"
            for imp in imports_of(reached)
            if imp.target.split(".")[0] == "anyio"
        )
    assert offending == []


@pytest.mark.parametrize("module", PURE)
def test_importing_a_pure_module_loads_neither_anyio_nor_the_executor(module: str) -> None:
    # The package's __init__ re-exports PipelineExecutor, so `import pipeline.plan` alone loads
    # anyio through it; a bare package object stands in for it to see the module's own imports.
    code = textwrap.dedent(
        f"""
        import importlib.util, sys, types
        spec = importlib.util.find_spec("pipeline")
        package = types.ModuleType("pipeline")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["pipeline"] = package
        import {module}
        print(sorted(m for m in sys.modules if m.split(".")[0] == "anyio"
                     or m in ("pipeline.executor", "pipeline._run", "pipeline._invoke")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

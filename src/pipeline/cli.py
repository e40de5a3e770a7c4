"""The `pipeline` command line: validate, draw and run a definition named as `MODULE:ATTR`.

    python -m pipeline validate MODULE:ATTR
    python -m pipeline graph MODULE:ATTR [--format mermaid|dot] [--waves]
    python -m pipeline run MODULE:ATTR [--input JSON] [--cache PATH] [--scheduling waves|eager]

Exit codes: 0 success, 1 an invalid definition or a failed run, 2 bad arguments or a
`MODULE:ATTR` that cannot be loaded (one line on stderr naming the reference and the fix, no
traceback). The graph text is `pipeline.viz`, the table `PipelineResult.summary()`, the live display
`pipeline.observers.progress`, `module:attr` loading `pipeline._loading`; this module only parses
arguments and wires them together.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline import _loading
from pipeline.errors import (
    LoadError,
    UsageError as UsageError,  # defined in errors; importable here too
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline._run import Scheduling
    from pipeline.definition import PipelineDefinition
    from pipeline.events import Observer
    from pipeline.result import PipelineResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description="Validate, draw and run pipelines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    target_help = (
        "the definition as module:attribute (a PipelineDefinition or a function making one)"
    )

    validate = sub.add_parser("validate", help="list every problem of a definition (exit 1 if any)")
    validate.add_argument("target", help=target_help)

    graph = sub.add_parser("graph", help="print the definition's graph as Mermaid or DOT text")
    graph.add_argument("target", help=target_help)
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    graph.add_argument("--waves", action="store_true", help="group stages into wave subgraphs")

    run = sub.add_parser("run", help="run the pipeline and print a summary (exit 1 on failure)")
    run.add_argument("target", help=target_help)
    run.add_argument("--input", dest="input_json", help="the initial input, as JSON")
    run.add_argument("--cache", metavar="PATH", help="a SQLite cache file (created if missing)")
    run.add_argument("--scheduling", choices=("waves", "eager"), default="waves")
    run.add_argument(
        "--no-progress", action="store_true", help="no live display even on a terminal"
    )
    return parser


def _echo(text: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def load_definition(target: str) -> PipelineDefinition:
    """Import `module:attr` (the current directory is importable) and return the definition.

    The attribute may be a `PipelineDefinition` or a zero-argument callable returning one.
    Every problem becomes a one-line `UsageError` naming the reference, the cause and the fix
    (the user's own exception, if any, is its `__cause__`); only `KeyboardInterrupt` and
    `SystemExit` raised by the user's code pass through. The loading itself is
    `pipeline._loading`, shared with anything else that resolves `module:attr` references.

    Raises:
        UsageError: The reference is malformed, the module cannot be found or raises on import,
            the attribute is missing, or it is not a definition nor a zero-argument factory
            that returns one (a factory that needs arguments, raises or returns something else).
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return _loading.load_definition(target)
    except LoadError as exc:
        raise UsageError(str(exc)) from exc.__cause__


def _problems(definition: PipelineDefinition) -> list[str]:
    messages = definition.validate_pipeline()
    lines = [f"pipeline {definition.name!r} is invalid ({len(messages)} problem(s)):"]
    lines.extend(f"  - {m}" for m in messages)
    return lines


def _validate(definition: PipelineDefinition) -> int:
    if definition.issues:
        _echo("\n".join(_problems(definition)))
        return EXIT_FAILED
    plan = definition.plan
    _echo(
        f"pipeline {definition.name!r} is valid: "
        f"{len(plan.order)} stage(s) in {len(plan.waves)} wave(s)"
    )
    return EXIT_OK


def _graph(definition: PipelineDefinition, fmt: str, *, waves: bool) -> int:
    from pipeline.viz import to_dot, to_mermaid

    if definition.issues:
        _echo("\n".join(_problems(definition)), err=True)
        return EXIT_FAILED
    render = to_mermaid if fmt == "mermaid" else to_dot
    sys.stdout.write(render(definition, waves=waves))
    return EXIT_OK


def _progress_observers(enabled: bool) -> list[Observer]:
    """The live display, when asked for, stdout is a terminal and rich is installed."""
    if not enabled or not sys.stdout.isatty():
        return []
    try:
        from pipeline.observers.progress import ProgressObserver
    except ImportError:
        return []
    return [ProgressObserver(transient=True)]


def _run(
    definition: PipelineDefinition,
    *,
    input_json: str | None,
    cache_path: str | None,
    scheduling: str,
    progress: bool,
) -> int:
    import anyio

    from pipeline.executor import PipelineExecutor

    initial: Any = None
    if input_json is not None:
        try:
            initial = json.loads(input_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input is not valid JSON: {exc}") from exc
    if definition.issues:
        _echo("\n".join(_problems(definition)))
        return EXIT_FAILED

    observers = _progress_observers(progress)
    policy: Scheduling = "eager" if scheduling == "eager" else "waves"

    async def execute() -> PipelineResult:
        if cache_path is None:
            executor = PipelineExecutor(scheduling=policy, observers=observers)
            return await executor.execute(definition, initial)
        from pipeline.cache import SQLiteCache

        async with SQLiteCache(cache_path) as cache:
            executor = PipelineExecutor(scheduling=policy, observers=observers, cache=cache)
            return await executor.execute(definition, initial)

    result = anyio.run(execute)
    _echo(result.summary())
    return EXIT_OK if result.success else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default `sys.argv[1:]`); return the exit code."""
    try:
        args = _parser().parse_args(argv)
        definition = load_definition(args.target)
        if args.command == "validate":
            return _validate(definition)
        if args.command == "graph":
            return _graph(definition, args.format, waves=args.waves)
        return _run(
            definition,
            input_json=args.input_json,
            cache_path=args.cache,
            scheduling=args.scheduling,
            progress=not args.no_progress,
        )
    except UsageError as exc:
        _echo(f"pipeline: error: {exc}", err=True)
        return EXIT_USAGE

"""The `pipeline` command line: validate, draw and run a definition named as `MODULE:ATTR`.

    python -m pipeline validate MODULE:ATTR
    python -m pipeline graph MODULE:ATTR [--format mermaid|dot] [--waves]
    python -m pipeline run MODULE:ATTR [--input JSON] [--cache PATH] [--scheduling waves|eager]

Exit codes: 0 success, 1 an invalid definition or a failed run, 2 bad arguments or a
`MODULE:ATTR` that cannot be loaded (one line on stderr naming the reference and the fix, no
traceback). The graph text is `pipeline.viz`, the table `PipelineResult.summary()`, the live display
`pipeline.observers.progress`; this module only parses arguments and wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline.definition import PipelineDefinition

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline._run import Scheduling
    from pipeline.events import Observer
    from pipeline.result import PipelineResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument: reported on one line, exit code 2."""


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


_MAX_DETAIL = 300
_SHOWN_NAMES = 8


def _describe(exc: BaseException) -> str:
    """`ExcType: message` of a user's exception on one short line, even if its `__str__` raises."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001  # a user's broken __str__ must not hide the real error
        text = "<the exception's message could not be read>"
    text = " ".join(text.split())
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return f"{name}: {text}" if text else name


def _fail(what: str, target: str, detail: str, fix: str) -> UsageError:
    shown = target if target.isprintable() else repr(target)
    return UsageError(f"{what} ({shown}): {detail}; {fix}")


def _is_dotted_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _definitions_in(module: Any) -> str:
    """The fix for a missing attribute: the module's top-level `PipelineDefinition` names."""
    try:
        names = sorted(
            name for name, value in vars(module).items() if isinstance(value, PipelineDefinition)
        )
    except Exception:  # noqa: BLE001  # only a hint: a module whose namespace misbehaves gets none
        names = []
    if not names:
        return "point at a PipelineDefinition or a zero-argument function returning one"
    shown = ", ".join(names[:_SHOWN_NAMES]) + (", ..." if len(names) > _SHOWN_NAMES else "")
    return f"check the name; the module defines: {shown}"


def _import(module_name: str, target: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            fix = (
                f"drop the .py suffix: {module_name.removesuffix('.py')}:ATTR"
                if module_name.endswith(".py")
                else "check the spelling and run from the directory holding it "
                "or add that directory to PYTHONPATH"
            )
            raise _fail(
                f"cannot import module {module_name!r}", target, _describe(exc), fix
            ) from exc
        raise _import_raised(module_name, target, exc) from exc
    except Exception as exc:  # any error while importing is the module's, incl. SyntaxError
        raise _import_raised(module_name, target, exc) from exc


def _import_raised(module_name: str, target: str, exc: Exception) -> UsageError:
    fix = f"fix the module (python -c 'import {module_name}' shows the traceback)"
    return _fail(f"module {module_name!r} failed to import", target, _describe(exc), fix)


def _lookup(module: Any, attr: str, target: str) -> Any:
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise _fail(
                "attribute not found", target, _describe(exc), _definitions_in(module)
            ) from exc
        except Exception as exc:  # a module __getattr__ or property of the user's
            fix = "fix the code that attribute runs, or point at a plain PipelineDefinition"
            raise _fail(f"looking up {part!r} failed", target, _describe(exc), fix) from exc
    return obj


def _call_factory(factory: Any, target: str) -> PipelineDefinition:
    try:
        signature = inspect.signature(factory)
    except Exception:  # noqa: BLE001  # no signature (a builtin, a broken __signature__): just call
        signature = None
    if signature is not None:
        try:
            signature.bind()
        except TypeError as exc:
            fix = "give its parameters defaults, or point at a PipelineDefinition"
            raise _fail("factory needs arguments", target, _describe(exc), fix) from exc
    try:
        made = factory()
    except Exception as exc:  # the user's factory: its error is reported, not raised
        fix = "fix the function, or point at a PipelineDefinition"
        raise _fail("factory raised", target, _describe(exc), fix) from exc
    if isinstance(made, PipelineDefinition):
        return made
    kind = type(made).__name__
    fix = "return the PipelineDefinition itself"
    if inspect.iscoroutine(made):
        made.close()  # never awaited on purpose: no "coroutine was never awaited" warning
        fix = "make it a plain def (async factories are not supported)"
    what = "factory returned the wrong type"
    raise _fail(what, target, f"it returned a {kind}, not a PipelineDefinition", fix)


def load_definition(target: str) -> PipelineDefinition:
    """Import `module:attr` (the current directory is importable) and return the definition.

    The attribute may be a `PipelineDefinition` or a zero-argument callable returning one.
    Every problem becomes a one-line `UsageError` naming the reference, the cause and the fix;
    only `KeyboardInterrupt` and `SystemExit` raised by the user's code pass through.

    Raises:
        UsageError: The reference is malformed, the module cannot be found or raises on import,
            the attribute is missing, or it is not a definition nor a zero-argument factory
            that returns one (a factory that needs arguments, raises or returns something else).
    """
    module_name, sep, attr = target.partition(":")
    if not (sep and _is_dotted_name(module_name) and _is_dotted_name(attr)):
        raise _fail(
            "bad definition reference",
            target,
            "expected MODULE:ATTR with dotted Python names on both sides",
            "write it like package.module:PIPELINE (a module name, not a file path)",
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = _import(module_name, target)
    obj = _lookup(module, attr, target)
    if isinstance(obj, PipelineDefinition):
        return obj
    if callable(obj):
        return _call_factory(obj, target)
    kind = type(obj).__name__
    raise _fail(
        "not a pipeline definition",
        target,
        f"it is a {kind}, not a PipelineDefinition",
        "point at a PipelineDefinition or a zero-argument function returning one",
    )


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

"""The `pipeline` command line: validate, draw and run a definition (`MODULE:ATTR` or a file).

    python -m pipeline validate TARGET
    python -m pipeline graph TARGET [--format mermaid|dot] [--waves]
    python -m pipeline run TARGET [--input JSON] [--context MODULE:FACTORY] [--cache PATH]
                              [--scheduling waves|eager] [--no-progress]
    python -m pipeline schema
    python -m pipeline cache gc STORE --artifacts DIR_OR_URL [--namespace NAME] [--grace SECONDS]

TARGET is `MODULE:ATTR` (a `PipelineDefinition` or a zero-argument function making one) or a
pipeline file ending in .yaml, .yml, .toml or .json (`pipeline.config.load`). `--context`
names a zero-argument function making the run's `PipelineContext`; if it returns anything
else, that value becomes the context's `deps`. `schema` prints the file format's JSON Schema. `--cache` is a SQLite file or a `redis://`
URL; `cache gc` removes the artifacts no entry of that store refers to (and stale temp files).

Exit codes: 0 success, 1 an invalid definition or a failed run, 2 bad arguments, a
`MODULE:ATTR` that cannot be loaded or a config file with an error (one line on stderr naming
the reference or `file:line:column` and the fix, no traceback). The graph text is
`pipeline.viz`, the table `PipelineResult.summary()`, the live display
`pipeline.observers.progress`, `module:attr` loading `pipeline._loading`, files
`pipeline.config`; this module only parses arguments and wires them together. Each subcommand
is one `_add_*` function registering its arguments and its handler (`handler(args) -> exit
code`).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline import _loading
from pipeline.errors import (
    ConfigError,
    DefinitionError,
    LoadError,
    UsageError as UsageError,  # defined in errors; importable here too
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline._run import Scheduling
    from pipeline.cache import RedisCache, SQLiteCache
    from pipeline.context import PipelineContext
    from pipeline.definition import PipelineDefinition
    from pipeline.events import Observer
    from pipeline.result import PipelineResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


_TARGET_HELP = (
    "the definition: module:attribute (a PipelineDefinition or a function making one) or a "
    "pipeline file (.yaml, .yml, .toml, .json)"
)
_CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


def _add_validate(sub: Any) -> None:
    validate = sub.add_parser("validate", help="list every problem of a definition (exit 1 if any)")
    validate.add_argument("target", help=_TARGET_HELP)
    validate.set_defaults(handler=lambda args: _validate(load_target(args.target)))


def _add_graph(sub: Any) -> None:
    graph = sub.add_parser("graph", help="print the definition's graph as Mermaid or DOT text")
    graph.add_argument("target", help=_TARGET_HELP)
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    graph.add_argument("--waves", action="store_true", help="group stages into wave subgraphs")
    graph.set_defaults(
        handler=lambda args: _graph(load_target(args.target), args.format, waves=args.waves)
    )


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run the pipeline and print a summary (exit 1 on failure)")
    run.add_argument("target", help=_TARGET_HELP)
    run.add_argument("--input", dest="input_json", help="the initial input, as JSON")
    run.add_argument(
        "--context",
        metavar="MODULE:FACTORY",
        help="a zero-argument function making the run's PipelineContext (any other return "
        "value becomes the context's deps)",
    )
    run.add_argument(
        "--cache",
        metavar="PATH|URL",
        help="a SQLite cache file (created if missing) or a redis:// URL (RedisCache)",
    )
    run.add_argument("--scheduling", choices=("waves", "eager"), default="waves")
    run.add_argument(
        "--no-progress", action="store_true", help="no live display even on a terminal"
    )
    run.set_defaults(handler=_run_command)


def _add_schema(sub: Any) -> None:
    schema = sub.add_parser("schema", help="print the JSON Schema of pipeline files")
    schema.set_defaults(handler=lambda args: _schema())


def _add_cache(sub: Any) -> None:
    cache = sub.add_parser("cache", help="maintain a cache store")
    inner = cache.add_subparsers(dest="cache_command", required=True, parser_class=_Parser)
    gc = inner.add_parser("gc", help="remove artifacts no entry refers to, and stale temp files")
    gc.add_argument("store", help="a SQLite cache file or a redis:// URL")
    gc.add_argument("--artifacts", required=True, help="the artifact directory or fsspec URL")
    gc.add_argument("--namespace", default="pipeline", help="the RedisCache namespace")
    gc.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="keep temp files younger than this (a write may still be under way)",
    )
    gc.set_defaults(handler=_cache_gc)


def _cache_gc(args: argparse.Namespace) -> int:
    from pipeline.cache import CacheError, describe_gc, run_cache_gc

    try:
        report = run_cache_gc(
            args.store, artifacts=args.artifacts, namespace=args.namespace, grace_s=args.grace
        )
    except (DefinitionError, ValueError) as exc:  # a malformed URL, namespace or location
        raise UsageError(f"cache gc: {exc}") from exc
    except (CacheError, ImportError) as exc:
        _echo(f"pipeline cache gc: {exc}", err=True)
        return EXIT_FAILED
    _echo(describe_gc(report))
    return EXIT_OK


_COMMANDS = (_add_validate, _add_graph, _add_run, _add_schema, _add_cache)
"""Each adds one subcommand; a new subcommand is one more function here."""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description="Validate, draw and run pipelines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in _COMMANDS:
        add(sub)
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
    _importable_cwd()
    try:
        return _loading.load_definition(target)
    except LoadError as exc:
        raise UsageError(str(exc)) from exc.__cause__


def _importable_cwd() -> None:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def is_config_file(target: str) -> bool:
    """Whether `target` names a pipeline file (by its suffix) rather than `module:attr`."""
    return target.lower().endswith(_CONFIG_SUFFIXES)


def load_target(target: str) -> PipelineDefinition:
    """The definition a file (by suffix) or a `module:attr` reference names.

    A file is read by `pipeline.config.load` (the current directory is importable, for its
    references); its `ConfigError` becomes a one-line `UsageError` (`file:line:column:
    problem; fix`). Anything else goes to `load_definition`.

    Raises:
        UsageError: The file has an error, or as `load_definition`.
    """
    if not is_config_file(target):
        return load_definition(target)
    from pipeline.config import load

    _importable_cwd()
    try:
        return load(Path(target))
    except ConfigError as exc:
        raise UsageError(" ".join(str(exc).split())) from None


def load_context(reference: str) -> PipelineContext[Any]:
    """The run's context from `--context MODULE:FACTORY`.

    The factory is called with no arguments; a `PipelineContext` it returns is used as is, any
    other value becomes the `deps` of a new context.

    Raises:
        UsageError: The reference cannot be loaded, is not a zero-argument function, raises,
            or is async.
    """
    from pipeline.context import PipelineContext

    _importable_cwd()
    try:
        factory = _loading.load_attribute(reference, what="context", example="make_context")
    except LoadError as exc:
        raise UsageError(f"--context: {exc}") from exc.__cause__
    if not callable(factory) or isinstance(factory, PipelineContext):
        kind = type(factory).__name__
        msg = f"--context {reference}: it is a {kind}; point at a function returning the context"
        raise UsageError(msg)
    try:
        made = factory()
    except Exception as exc:  # the user's factory: reported on one line
        detail = _loading.describe_exception(exc)
        msg = f"--context {reference}: the factory raised {detail}; fix it"
        raise UsageError(msg) from exc
    if inspect.iscoroutine(made):
        made.close()
        msg = f"--context {reference}: the factory is async; make it a plain def"
        raise UsageError(msg)
    if isinstance(made, PipelineContext):
        return made
    return PipelineContext(deps=made)


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


def _schema() -> int:
    from pipeline.config import json_schema

    _echo(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def _run_command(args: argparse.Namespace) -> int:
    definition = load_target(args.target)
    return _run(
        definition,
        input_json=args.input_json,
        context_factory=args.context,
        cache_path=args.cache,
        scheduling=args.scheduling,
        progress=not args.no_progress,
    )


def _run(
    definition: PipelineDefinition,
    *,
    input_json: str | None,
    cache_path: str | None,
    scheduling: str,
    progress: bool,
    context_factory: str | None = None,
) -> int:
    import anyio

    from pipeline.executor import PipelineExecutor

    initial: Any = None
    if input_json is not None:
        try:
            initial = json.loads(input_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input is not valid JSON: {exc}") from exc
    context = load_context(context_factory) if context_factory is not None else None
    if definition.issues:
        _echo("\n".join(_problems(definition)))
        return EXIT_FAILED

    observers = _progress_observers(progress)
    policy: Scheduling = "eager" if scheduling == "eager" else "waves"

    store = None if cache_path is None else _cache_store(cache_path)

    async def execute() -> PipelineResult:
        if store is None:
            executor = PipelineExecutor(scheduling=policy, observers=observers)
            return await executor.execute(definition, initial, context)
        from pipeline.cache import CacheError

        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(store)
            except CacheError as exc:
                raise UsageError(f"--cache {cache_path!r} cannot be opened: {exc}") from exc
            executor = PipelineExecutor(scheduling=policy, observers=observers, cache=store)
            return await executor.execute(definition, initial, context)

    result = anyio.run(execute)
    _echo(result.summary())
    return EXIT_OK if result.success else EXIT_FAILED


def _cache_store(spec: str) -> SQLiteCache | RedisCache:
    """The store `--cache` names: a `redis://` (`rediss://`, `unix://`) URL or a SQLite file."""
    from pipeline.cache import RedisCache, SQLiteCache

    try:
        if spec.startswith(("redis://", "rediss://", "unix://")):
            return RedisCache(spec)
        return SQLiteCache(spec)
    except (DefinitionError, ValueError) as exc:
        raise UsageError(f"--cache {spec!r}: {exc}") from exc
    except ImportError as exc:
        raise UsageError(f"--cache {spec!r} needs an extra: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default `sys.argv[1:]`); return the exit code."""
    try:
        args = _parser().parse_args(argv)
        code: int = args.handler(args)
    except UsageError as exc:
        _echo(f"pipeline: error: {exc}", err=True)
        return EXIT_USAGE
    return code

"""`python -m pipeline` given a `MODULE:ATTR` it cannot load: one line naming it, exit code 2.

A user's typo or broken module must read as a usage error with the fix, never as a traceback
from inside the framework.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

DEFS = textwrap.dedent(
    """
    from typing import Any

    from pipeline import PipelineDefinition, StageDefinition, StageResult


    class Noop:
        name = "noop"

        async def execute(self, input: Any, context: Any) -> StageResult[Any]:
            return StageResult.success(input)


    GOOD = PipelineDefinition("good", [StageDefinition("a", Noop())])
    NOT_A_PIPELINE = 42


    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message for you")


    def needs_args(n: int, *, label: str) -> PipelineDefinition:
        return GOOD


    def raises() -> PipelineDefinition:
        raise ValueError("factory exploded")


    def raises_unprintable() -> PipelineDefinition:
        raise Unprintable()


    def raises_multiline() -> PipelineDefinition:
        raise ValueError("line one\\nline two")


    def wrong_type() -> Any:
        return {"not": "a pipeline"}


    async def async_factory() -> PipelineDefinition:
        return GOOD
    """
)

MODULES = {
    "defs": DEFS,
    "broken_import": "X = 1 / 0\n",
    "broken_syntax": "def oops(:\n    pass\n",
    "missing_dep": "import no_such_dependency_xyz\n",
    "unprintable_import": (
        "class Unprintable(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no message')\n"
        "raise Unprintable()\n"
    ),
    "lazy": "def __getattr__(name):\n    raise RuntimeError('lazy load failed')\n",
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(source)
    return tmp_path


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=25,
        check=False,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], ref: str) -> str:
    """Exit 2, nothing on stdout, one stderr line naming the reference, no traceback."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    (line,) = lines
    assert line.startswith("pipeline: error: ")
    assert f"({ref})" in line
    return line


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        # bad `module:attr` syntax
        ("defs", ["bad definition reference", "expected MODULE:ATTR", "package.module:PIPELINE"]),
        ("defs:", ["bad definition reference", "expected MODULE:ATTR"]),
        (":GOOD", ["bad definition reference", "expected MODULE:ATTR"]),
        ("defs:GOOD:extra", ["bad definition reference"]),
        ("sub/defs:GOOD", ["bad definition reference", "not a file path"]),
        (".defs:GOOD", ["bad definition reference"]),
        # module not found
        (
            "no_such_module_abc:GOOD",
            [
                "cannot import module 'no_such_module_abc'",
                "ModuleNotFoundError: No module named 'no_such_module_abc'",
                "PYTHONPATH",
            ],
        ),
        ("defs.py:GOOD", ["cannot import module 'defs.py'", "drop the .py suffix: defs:ATTR"]),
        # module raising on import, whatever it raises
        (
            "broken_import:X",
            [
                "module 'broken_import' failed to import",
                "ZeroDivisionError: division by zero",
                "python -c 'import broken_import'",
            ],
        ),
        ("broken_syntax:X", ["module 'broken_syntax' failed to import", "SyntaxError: "]),
        (
            "missing_dep:X",
            [
                "module 'missing_dep' failed to import",
                "ModuleNotFoundError: No module named 'no_such_dependency_xyz'",
            ],
        ),
        (
            "unprintable_import:X",
            ["failed to import", "Unprintable: <the exception's message could not be read>"],
        ),
        # attribute missing, or its lookup raising
        (
            "defs:MISSING",
            [
                "attribute not found",
                "AttributeError: module 'defs' has no attribute 'MISSING'",
                "the module defines: GOOD",
            ],
        ),
        ("defs:GOOD.nope", ["attribute not found", "has no attribute 'nope'"]),
        ("lazy:X", ["looking up 'X' failed", "RuntimeError: lazy load failed"]),
        # neither a definition nor a callable
        (
            "defs:NOT_A_PIPELINE",
            ["not a pipeline definition", "it is a int, not a PipelineDefinition"],
        ),
        # factory needing arguments, raising, or returning the wrong type
        (
            "defs:needs_args",
            [
                "factory needs arguments",
                "TypeError: missing a required argument: 'n'",
                "give its parameters defaults",
            ],
        ),
        ("defs:Noop.execute", ["factory needs arguments", "TypeError: "]),
        ("defs:raises", ["factory raised", "ValueError: factory exploded", "fix the function"]),
        (
            "defs:raises_unprintable",
            ["factory raised", "Unprintable: <the exception's message could not be read>"],
        ),
        ("defs:raises_multiline", ["factory raised", "ValueError: line one line two"]),
        (
            "defs:wrong_type",
            [
                "factory returned the wrong type",
                "it returned a dict, not a PipelineDefinition",
                "return the PipelineDefinition itself",
            ],
        ),
        (
            "defs:async_factory",
            ["factory returned the wrong type", "it returned a coroutine", "plain def"],
        ),
    ],
)
def test_unloadable_reference_is_one_line_and_exit_2(
    workdir: Path, ref: str, expected: list[str]
) -> None:
    line = assert_one_line_error(cli(workdir, "validate", ref), ref)
    for part in expected:
        assert part in line


@pytest.mark.parametrize("command", [["graph"], ["run", "--input", "1"]])
def test_every_command_reports_load_errors_the_same_way(workdir: Path, command: list[str]) -> None:
    name, *rest = command
    line = assert_one_line_error(cli(workdir, name, "defs:raises", *rest), "defs:raises")
    assert "factory raised" in line
    assert "ValueError: factory exploded" in line


def test_a_good_reference_still_loads(workdir: Path) -> None:
    done = cli(workdir, "validate", "defs:GOOD")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pipeline 'good' is valid: 1 stage(s) in 1 wave(s)"


def test_in_process_the_error_chains_the_users_exception(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import UsageError, load_definition, main

    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.delitem(sys.modules, "defs", raising=False)
    with pytest.raises(UsageError, match=r"factory raised \(defs:raises\)") as caught:
        load_definition("defs:raises")
    assert isinstance(caught.value.__cause__, ValueError)
    assert str(caught.value.__cause__) == "factory exploded"

    assert main(["validate", "defs:needs_args"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("pipeline: error: factory needs arguments (defs:needs_args): ")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["run", "defs:GOOD", "--cache", "redis://localhost:notaport/0"],
            "--cache 'redis://localhost:notaport/0'",
        ),
        (
            ["cache", "gc", "redis://localhost:notaport/0", "--artifacts", "arts"],
            "cache gc: RedisCache: url is",
        ),
        (
            ["cache", "gc", "redis://127.0.0.1:1/0", "--artifacts", "arts", "--namespace", " "],
            "namespace is ' '",
        ),
        (
            ["cache", "gc", "redis://127.0.0.1:1/0", "--artifacts", "nosuchproto://x"],
            "cache gc: Protocol not known: nosuchproto",
        ),
    ],
)
def test_bad_cache_arguments_are_one_line_and_exit_2(
    workdir: Path, args: list[str], expected: str
) -> None:
    done = cli(workdir, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pipeline: error: ")
    assert expected in lines[0]

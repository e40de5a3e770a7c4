"""`python -m pipeline` with config files: validate, graph, run (`--input`, `--context`), schema."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from pipeline.cli import main
from pipeline.config import json_schema

if TYPE_CHECKING:
    from pathlib import Path

M = "tests.unit.config.stages"

GOOD_YAML = f"""name: good
stages:
  - {{id: start, stage: "{M}:Add", params: {{n: 1}}}}
  - {{id: greet, stage: "{M}:Greets", inputs: [start], when: "input > 1"}}
"""
GOOD_TOML = f"""name = "good"

[[stages]]
id = "start"
stage = "{M}:Add"
params = {{ n = 1 }}

[[stages]]
id = "greet"
stage = "{M}:Greets"
inputs = ["start"]
when = "input > 1"
"""
GOOD_JSON = json.dumps(
    {
        "name": "good",
        "stages": [
            {"id": "start", "stage": f"{M}:Add", "params": {"n": 1}},
            {"id": "greet", "stage": f"{M}:Greets", "inputs": ["start"], "when": "input > 1"},
        ],
    }
)
FILES = {".yaml": GOOD_YAML, ".toml": GOOD_TOML, ".json": GOOD_JSON}


@pytest.fixture(params=sorted(FILES))
def good_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"good{request.param}"
    path.write_text(FILES[request.param], encoding="utf-8")
    return path


def test_validate_and_graph_a_file(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(good_file)]) == 0
    assert capsys.readouterr().out.strip() == "pipeline 'good' is valid: 2 stage(s) in 2 wave(s)"
    assert main(["graph", str(good_file), "--format", "dot"]) == 0
    assert '"start" -> "greet";' in capsys.readouterr().out


def test_run_a_file_with_input_and_a_context_factory(
    good_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", str(good_file), "--input", "4", "--context", f"{M}:make_context"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "pipeline 'good' succeeded" in out
    assert "greet" in out
    # without the context the stage cannot reach its service: the run fails, exit 1
    assert main(["run", str(good_file), "--input", "4"]) == 1
    assert "greet: TypeError" in capsys.readouterr().out


def test_a_factory_returning_plain_dependencies_gives_them_as_deps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deps.yaml"
    path.write_text(f'name: deps\nstages:\n  - {{id: a, stage: "{M}:UsesDeps"}}\n')
    assert main(["run", str(path), "--input", "1", "--context", f"{M}:make_deps"]) == 0
    assert "pipeline 'deps' succeeded" in capsys.readouterr().out


def test_when_skips_in_a_cli_run(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(good_file), "--input", "0", "--context", f"{M}:make_context"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("greet"))
    assert "skipped" in line


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("name: bad\nstages:\n  - {id: a, stage: nope}\n", ":3:20: ", "no registry"),
        ("name: bad\nstages:\n  - {id: a, stage: x:y, inputz: []}\n", ":3:25: ", "inputz"),
        (f'name: bad\nstages:\n  - {{id: a, stage: "{M}:Add", inputs: [a]}}\n', ":3:60: ",
         "Circular"),
        ("name: [oops\n", ":2:1: ", "invalid YAML"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["validate", "graph", "run"])
def test_a_config_error_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, text: str,
    where: str, words: str,
) -> None:  # fmt: skip
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main([command, str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"pipeline: error: {path}{where}")
    assert words in lines[0]


def test_a_missing_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("reference", "words"),
    [
        ("nosuch_module_x:make", "cannot import module"),
        (f"{M}:missing_factory", "attribute not found"),
        (f"{M}:NOT_A_STAGE", "it is a int"),
        (f"{M}:Cranky", "the factory raised RuntimeError: no"),
        ("not a reference", "bad context reference"),
    ],
)
def test_context_errors_are_one_line_and_exit_2(
    good_file: Path, capsys: pytest.CaptureFixture[str], reference: str, words: str
) -> None:
    assert main(["run", str(good_file), "--input", "1", "--context", reference]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert words in err


def test_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_context_works_for_module_attr_targets_too(capsys: pytest.CaptureFixture[str]) -> None:
    # before --context, such a run could not get its dependencies ('NoneType' ... 'offset')
    assert main(["run", f"{M}:DEPS_PIPELINE", "--input", "1"]) == 1
    capsys.readouterr()
    assert main(["run", f"{M}:DEPS_PIPELINE", "--input", "1", "--context", f"{M}:make_deps"]) == 0
    assert "pipeline 'deps' succeeded" in capsys.readouterr().out

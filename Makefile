# Two commands on a fresh machine with only python3 and make:
#   make demo   -> creates .venv, installs the project, runs the flagship example
#   make test   -> creates .venv, installs the project, runs ruff, mypy --strict, pyright
#                  (on the typing tests and the builder) and pytest
# CI (.ci/run) also runs `make test-floors`: pytest in .venv-floors, where every runtime dependency
# is pinned to the lowest version pyproject.toml allows (computed by .ci/floors.py).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FLOORS_VENV  := .venv-floors
FLOORS_BIN   := $(FLOORS_VENV)/bin
FLOORS_STAMP := $(FLOORS_VENV)/.installed

.PHONY: demo test test-floors lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/render_pipeline.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pyright also checks the typing tests and the builder's overloads (the whole project is not
# pyright-clean: a few of the testing helpers and tests use mypy-only idioms). The pyright
# package (a dev extra) runs on the machine's node, or fetches its own from the npm registry.
typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/pyright --pythonpath $(BIN)/python tests/typing src/pipeline/builder.py

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit

$(FLOORS_BIN)/python:
	$(PYTHON) -m venv $(FLOORS_VENV)

$(FLOORS_STAMP): pyproject.toml .ci/floors.py | $(FLOORS_BIN)/python
	$(FLOORS_BIN)/python -m pip install --quiet --upgrade pip
	$(FLOORS_BIN)/python .ci/floors.py > $(FLOORS_VENV)/constraints.txt
	$(FLOORS_BIN)/python -m pip install --quiet -c $(FLOORS_VENV)/constraints.txt -e '.[dev]'
	$(FLOORS_BIN)/python .ci/floors.py --check
	touch $(FLOORS_STAMP)

# The suite against the dependency floors (no ruff/mypy: those run in `make test`).
test-floors: $(FLOORS_STAMP)
	$(FLOORS_BIN)/python .ci/floors.py --check
	$(FLOORS_BIN)/python -m pytest -q

# Per-stage and per-item overhead; then build + validate + type-check costs of 1,000 typed stages
# (SPEC 10). Cache, flow-control, resource and soak figures have scripts of their own.
bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/typecheck.py

clean:
	rm -rf $(VENV) $(FLOORS_VENV) .mypy_cache .pytest_cache .ruff_cache

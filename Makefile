# Two commands on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv and install dualfuse into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real data for the main job and the tests (CI and the development machines keep it beside the repo).
DUALFUSE_DATA ?= $(abspath $(CURDIR)/../shared/data)
export DUALFUSE_DATA

$(BIN)/.dualfuse-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: install run test bench
install: $(BIN)/.dualfuse-installed

run: install
	$(BIN)/dualfuse train --config configs/quickstart.yaml

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: install
	$(BIN)/python benchmarks/model_cost.py --out benchmarks/results/model_cost.json

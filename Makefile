# Two commands for a fresh machine: `make run` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint typecheck check bench soak container-test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

# The gateway and the reference downstream together, wired by env; Ctrl-C stops both.
run: $(STAMP)
	$(BIN)/python -m devstack.run_both

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check service devstack tests bench
	$(BIN)/ruff format --check service

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench.run

soak: $(STAMP)
	$(BIN)/python -m bench.run --soak

container-test: $(STAMP)
	bash docker/smoke-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Two commands for a fresh machine: `make run` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint typecheck check bench soak container-test clean lock wrk nginx postgres

# Exact, hash-checked versions from the lock files (requirements/*.txt); the project itself on top, without deps.
$(STAMP): pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# The gateway and the reference downstream together, wired by env; Ctrl-C stops both.
run: $(STAMP)
	$(BIN)/python -m devstack.run_both

# wrk (Debian's package) drives the benchmarks and their quick end-to-end test: installed when missing.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing wrk with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null; \
	} || echo "wrk could not be installed: the bench quick test skips (and fails under CI=true)"

# nginx (Debian's package) runs the shipped load-balancer configuration in tests/e2e/test_load_balancer.py.
nginx:
	@[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || { \
	  echo "installing nginx with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null; \
	} || echo "nginx could not be installed: the load-balancer tests skip (and fail under CI=true)"

# PostgreSQL's server binaries (Debian's package; the tests start their own server from
# /usr/lib/postgresql/<version>/bin): installed when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	} || echo "postgresql could not be installed: the PostgreSQL tests skip (and fail under CI=true)"

# Two pytest-xdist workers (CI has 2 cores), each test file on one worker, so a module's module-scoped servers
# start once; each worker has its own devstack, PostgreSQL server and port block (tests/support/ports.py).
# TEST_WORKERS=0 runs the suite serially in one process.
TEST_WORKERS ?= 2
test: $(STAMP) wrk nginx postgres
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check service devstack tests bench
	$(BIN)/ruff format --check service

# mypy's file list is in pyproject.toml; the conftest.py of each test directory is checked on its own (they all
# share the module name "conftest").
typecheck: $(STAMP)
	$(BIN)/mypy
	for conftest in tests/*/conftest.py; do $(BIN)/mypy "$$conftest" || exit 1; done

check: lint typecheck test

# then the README's targets table from the same bench/results/bench.json
bench: $(STAMP) wrk postgres
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.readme

soak: $(STAMP) wrk
	$(BIN)/python -m bench.run --soak

# Both runs of docker/smoke-test.sh: SQLite on a volume, then the same image on a PostgreSQL server the test starts.
container-test: $(STAMP) postgres
	$(BIN)/pytest -q -s -p no:cacheprovider tests/container

# Re-resolve the lock files from pyproject.toml (newest versions allowed by its ranges); commit the result.
# The image's lock (runtime.txt) holds the postgres extra: one image runs either backend.
# `make lock UPGRADE=--upgrade-package=NAME` moves one package; without it, versions already locked are kept.
LOCK := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --quiet
lock: $(STAMP)
	$(LOCK) $(UPGRADE) --extra postgres -o requirements/runtime.txt
	$(LOCK) $(UPGRADE) --all-extras -o requirements/dev.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

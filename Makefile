# Everything a fresh machine with Python 3.11 needs: `make run` and `make test` install first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast dev mlflow bench scale lock lint clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## the main job on the embedded database: demo markets through every asset, then a summary
run: install
	$(BIN)/rl-lifecycle run

## the whole suite against a real PostgreSQL (embedded, or RL_DATABASE_URL)
test: install
	$(BIN)/python -m pytest -n 2

## the suite without the slow end-to-end tests
test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow"

## Dagster UI + daemon on the same PostgreSQL (http://127.0.0.1:$(DEV_PORT)); Ctrl-C stops both
DEV_PORT ?= 3000
dev: install
	$(BIN)/rl-lifecycle dev --port $(DEV_PORT)

## MLflow UI on the project's tracking database (http://127.0.0.1:$(MLFLOW_PORT)), one worker
MLFLOW_PORT ?= 5000
mlflow: install
	$(BIN)/rl-lifecycle mlflow ui --port $(MLFLOW_PORT)

## benchmarks; results in docs/benchmarks.md and $$RL_HOME/bench/latest.json
bench: install
	$(BIN)/python -m rl_lifecycle.bench

## growth with markets (5, 20, 50 markets of 10 years) and cluster.speedup_2_workers: about an hour
scale: install
	$(BIN)/python -m rl_lifecycle.bench.scale $(SCALE_ARGS)

## re-pin the whole dependency tree after changing pyproject.toml
lock:
	rm -rf /tmp/rl-lock-venv && $(PYTHON) -m venv /tmp/rl-lock-venv
	/tmp/rl-lock-venv/bin/pip install --quiet "torch==2.13.0" -e ".[dev]"
	/tmp/rl-lock-venv/bin/pip freeze --exclude-editable | grep -v '^rl.lifecycle' > requirements.lock

lint: install
	$(BIN)/ruff check rl_lifecycle rl_lifecycle_tests

clean:
	rm -rf $(VENV) .pytest_cache

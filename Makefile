# slipway: the two commands are `make demo` and `make test`; each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
# uv from PATH, else the one pip installs for $(PYTHON) (run as a module, so no PATH change is needed).
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

.PHONY: help install demo test test-fast lint typecheck bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

install: .venv/.synced ## create .venv from uv.lock (installs uv with pip if it is missing)

demo: install ## train the example model and release it end to end (embedded MLflow, ephemeral Prefect)
	$(UV) run slipway train
	$(UV) run slipway models

test: install ## run the whole test suite (real MLflow, Prefect, ONNX Runtime, bentoml serve)
	$(UV) run pytest

test-fast: install ## the tests not marked slow
	$(UV) run pytest -m "not slow"

lint: install ## ruff and mypy
	$(UV) run ruff check .
	$(UV) run mypy configs tasks flows serving

bench: install ## benchmarks, printing ratios against peers measured in the same run
	$(UV) run python -m bench

clean: ## remove embedded state (.slipway/) and caches
	rm -rf .slipway .pytest_cache .ruff_cache .mypy_cache

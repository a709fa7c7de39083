# AML classifier: see README.md. Every target runs from the repo root.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
DATA    ?= ../shared/data
# every install takes the versions the test suite passed with (constraints.txt; `make lock` renews it)
PIP_INSTALL := $(BIN)/pip install -q -c constraints.txt

.PHONY: help setup setup-train lock soup test test-fast run cell-service subtype-service train-cells adopt-cells train-apl quantize-cells train-subtype bench bench-cells bench-gpu bench-subtype bench-gateway load load-cells gateway clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PYTHON):  # a half-made .venv is removed, so that make setup can simply be run again
	$(PY) -m venv $(VENV) || { rm -rf $(VENV); echo "python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }
	$(BIN)/pip install -q --upgrade pip || { rm -rf $(VENV); exit 1; }

setup: $(PYTHON) ## create .venv with everything to serve and test (no TensorFlow)
	$(PIP_INSTALL) -e '.[test]'

setup-train: setup ## add the training stack (TensorFlow, tf2onnx, scikit-learn)
	$(PIP_INSTALL) -e '.[test,train]'

lock: ## renew constraints.txt: the newest releases pyproject.toml allows, resolved in a scratch venv (then make setup-train soup test, commit)
	rm -rf .lock-venv
	$(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q '.[test,train]'
	{ printf '%s\n' '# Exact versions of every package `make setup` / `make setup-train` and the images install,' \
	    '# resolved by `make lock` on CPython 3.11, Linux x86_64, and passed by `make test` before commit.' \
	    '# onnxruntime-gpu (the GPU image) is pinned in deploy/Dockerfile: it replaces onnxruntime there.'; \
	  .lock-venv/bin/pip freeze --exclude aml-classifier; } > constraints.txt
	rm -rf .lock-venv build

soup: ## rewrite docs/soup.md, the third-party packages and images the services ship with (from .venv, as pinned)
	$(PYTHON) deploy/soup.py

test: ## the whole test suite (tests needing TensorFlow skip unless make setup-train ran)
	$(PYTHON) -m pytest

test-fast: ## unit tests only
	$(PYTHON) -m pytest tests/unit

run: ## run the system on localhost: every service, ready-checked (Ctrl-C or kill stops all)
	$(PYTHON) -m launcher

cell-service: ## the cell classifier alone on CELL_HOST:CELL_PORT (127.0.0.1:8001)
	$(PYTHON) -m services.cell_classifier

gateway: ## the gateway alone on GATEWAY_HOST:GATEWAY_PORT (127.0.0.1:8000)
	$(PYTHON) -m gateway

subtype-service: ## the subtype service alone on SUBTYPE_HOST:SUBTYPE_PORT (127.0.0.1:8002)
	$(PYTHON) -m services.subtype

train-subtype: ## cross-validate, train and export the subtype ensemble (stage 1 also on the DeepAPL AML patients); report in docs/
	AML_PATIENTS_CSV=$(DATA)/aml_patients/expert_differentials.csv DEEPAPL_DIR=$(DATA)/deepapl_discovery \
		$(PYTHON) -m training.train_subtype

train-cells: ## fine-tune the committed cell CNN on PBC + DeepAPL and average it with the committed one (2.3.0's recipe; TRAIN_ARGS="--out DIR ..." adds or overrides options), calibrate, evaluate, export (~35-75 min on 2 cores)
	PBC_DIR=$(DATA)/pbc DEEPAPL_DIR=$(DATA)/deepapl_discovery $(PYTHON) -m training.train_cells \
		--init-network services/cell_classifier/model/cell_cnn.keras \
		--soup-with services/cell_classifier/model/cell_cnn.keras \
		--deepapl-weight 2 --learning-rate 5e-4 --epochs 12 --full-size-epochs 12 --seed 79 \
		--source-scale 2 --sharp-fraction 0.5 $(TRAIN_ARGS)

adopt-cells: ## serve a candidate the rule adopted (CANDIDATE=the --out folder of train-cells): check, copy, int8, APL alert, robustness report (~1 h)
	@test -n "$(CANDIDATE)" || { echo "usage: make adopt-cells CANDIDATE=DIR"; exit 2; }
	PBC_DIR=$(DATA)/pbc DEEPAPL_DIR=$(DATA)/deepapl_discovery $(PYTHON) -m training.adopt_cells $(CANDIDATE)

train-apl: ## APL alert: repeated patient-level CV on the DeepAPL patients, per-cell head + patient model to ONNX, docs/apl_model.md (~20 min)
	DEEPAPL_DIR=$(DATA)/deepapl_discovery $(PYTHON) -m training.train_apl

quantize-cells: ## int8 model of the trained cell CNN, float vs int8 and today's vs new preprocessing on the test splits, into the card (~8 min)
	PBC_DIR=$(DATA)/pbc DEEPAPL_DIR=$(DATA)/deepapl_discovery $(PYTHON) -m training.quantize_cells

bench: bench-cells bench-subtype bench-gateway ## all benchmarks

bench-cells: ## preprocessing and inference alone, ceilings (today's vs new path), service (2 processes, and 1) at 1 and 64 images/request vs 1.2.0 (~4 min)
	$(PYTHON) -m bench.bench_cells

bench-gpu: ## the bench-cells table on the CUDA provider, in its own environment (.venv-gpu: onnxruntime-gpu as the GPU image pins it, no TensorFlow)
	PY=$$(bash bench/gpu_env.sh) && "$$PY" -m bench.bench_gpu

bench-subtype: ## p50/p99 latency of one-patient subtype requests
	$(PYTHON) -m bench.bench_subtype

bench-gateway: ## one 500-image patient through the gateway, cold and warm, vs in-process
	$(PYTHON) -m bench.bench_gateway

load: ## locust scenarios at 1, 8, 32, 64 users; writes docs/load_report.md (a few minutes)
	$(PYTHON) -m bench.load_report

load-cells: ## headless locust run against a cell service on 127.0.0.1:8001 (bounded)
	$(BIN)/locust -f tests/load/locustfile.py CellClient --headless --host http://127.0.0.1:8001 -u 32 -r 8 -t 60s --only-summary

clean:
	rm -rf .cache .pytest_cache artifacts

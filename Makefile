# PanSeg Workflow: `make demo` runs the synthetic demo study, `make test` the test suite.
# Both create .venv on first use (CPU PyTorch) and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# SAM / MedSAM (workflow_scripts.nnunet.prompted) and their tests: segment-anything imports torchvision,
# which does not import beside the CPU torch of .venv, so they get a venv of their own.
SAM_VENV := .venv-sam
SAM_STAMP := $(SAM_VENV)/.installed
CORES ?= 2
export PATH := $(BIN):$(PATH)

.PHONY: demo test test-unit lint install sam-env clean-demo lock

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	# torch first, alone: resolving it together with nnunetv2 lets pip swap in a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --constraint requirements.lock --editable '.[test]'
	# nnU-Net v1, for the tests of the v1 import only (tests/test_v1_*.py): its network and inference code
	# import with what nnunetv2 brings (+ medpy, in the test extra); its other pins would pull another torch
	$(BIN)/pip install --quiet --constraint requirements.lock --no-deps nnunet==1.7.1
	touch $(STAMP)

sam-env: $(SAM_STAMP)

$(SAM_STAMP): requirements-sam.lock
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --requirement requirements-sam.lock
	touch $(SAM_STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	@echo "Tables: results/demo/tables/  (SYNTHETIC demo data)"

test: $(STAMP) $(SAM_STAMP)
	$(BIN)/pytest -q
	$(abspath $(SAM_VENV))/bin/pytest -q tests/test_prompted.py

# The quick tier: everything but the workflow and SLURM tests (under two minutes)
test-unit: $(STAMP)
	$(BIN)/pytest -q -m unit

# Rules (Snakemake's linter, snakefmt) and the package's layers (import-linter's contract in
# pyproject.toml; no module imports another's _private name: tests/test_architecture.py)
lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q -p no:cacheprovider tests/test_architecture.py

lock: $(STAMP)
	(echo "# Full pin set for a reproducible install (pip constraints). Regenerate: make lock"; \
	 $(BIN)/pip freeze --exclude-editable | sed 's/+cpu//') > requirements.lock

clean-demo:
	rm -rf data results .snakemake

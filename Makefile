# PanSeg Workflow: `make demo` runs the synthetic demo study, `make test` the test suite.
# Both create .venv on first use (CPU PyTorch) and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
CORES ?= 2
export PATH := $(BIN):$(PATH)

.PHONY: demo test lint install clean-demo lock

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

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	@echo "Tables: results/demo/tables/  (SYNTHETIC demo data)"

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

lock: $(STAMP)
	(echo "# Full pin set for a reproducible install (pip constraints). Regenerate: make lock"; \
	 $(BIN)/pip freeze --exclude-editable | sed 's/+cpu//') > requirements.lock

clean-demo:
	rm -rf data results .snakemake

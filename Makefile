# Set-up, demo and tests. `make demo` and `make test` set up .venv first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# The CUDA build of fbgemm only where a GPU answers; on a CPU machine it breaks fbgemm.
HAS_CUDA := $(shell nvidia-smi >/dev/null 2>&1 && echo yes)
FBGEMM := $(if $(HAS_CUDA),fbgemm-gpu==1.8.0,fbgemm-gpu-cpu==1.8.0)
PINS := torch==2.13.0 $(FBGEMM)
# torchrec comes without its dependencies (its metadata asks for the CUDA fbgemm-gpu);
# these are the ones it really imports.
TORCHREC_NEEDS := tensordict torchmetrics tqdm pyre-extensions iopath
PACKAGES := numpy pandas scikit-learn tqdm matplotlib pyyaml pytest hypothesis ninja

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(PINS)
	$(PIP) install -q $(PINS) $(PACKAGES) $(TORCHREC_NEEDS)
	$(PIP) install -q --no-deps torchrec==1.8.0
	$(PIP) install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	@if [ -z "$(HAS_CUDA)" ] && $(PIP) show fbgemm-gpu >/dev/null 2>&1; then \
		echo "the CUDA fbgemm-gpu is installed on a machine without CUDA; remove .venv and run make again"; exit 1; fi
	$(PY) -c "import torch, fbgemm_gpu, torchrec, recemb; print('recemb ready: torch', torch.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m recemb.cli demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m recemb.cli bench lookup

clean:
	rm -rf $(VENV) build *.egg-info

# Benchmark-only peer of `recemb bench train`: DeepCTR-Torch, without its dependencies (it
# would pull another torch; the ones it imports, torch, tqdm and scikit-learn, are here).
.PHONY: bench-env
bench-env: $(STAMP)
	$(PIP) install -q --no-deps deepctr-torch==0.3.0

# `make test` builds .venv from nothing: a CPU torch 2.13.0 (from this machine's local wheel; on a
# GPU machine pip resolves the CUDA build), then this package with its test extras.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: test env compile-check clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

env: $(VPY)
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q $(TORCH_SPEC)
	$(VPY) -m pip install -q -e ".[test]"

test: env
	TRITON_INTERPRET=1 TRITON_DEFAULT_FP_FUSION=1 KERNELS_POISON=1 $(VPY) -m pytest -q tests

compile-check: env
	$(VPY) -m kernels.compile_check

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

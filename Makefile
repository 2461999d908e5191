# `make test` builds .venv from nothing: a CPU torch 2.13.0 (from this machine's local wheel; on a
# GPU machine pip resolves the CUDA build), then this package with its test extras.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: test test-system env compile-check clean bench bench-quick

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

env: $(VPY)
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q $(TORCH_SPEC)
	$(VPY) -m pip install -q -e ".[test]"

# make test: the fast tier (every test but the system ones), in two interleaved parts side by side
# (one process per core, one torch thread each; the first part's output follows the second's);
# make test-system: the system tests (ahead-of-time compilation, the GPU-check dry run, killed and
# side-by-side processes, full runs that resume bit for bit, demo and ablation runs, the heaviest
# parity cases). .ci/run runs both. Each prints its wall time.
PYTEST = TRITON_INTERPRET=1 TRITON_DEFAULT_FP_FUSION=1 KERNELS_POISON=1 $(VPY) -m pytest -q --durations=10
TEST_LOG := $(VENV)/test-part-0.log

test: env
	@start=$$(date +%s); \
	  OMP_NUM_THREADS=1 $(PYTEST) -m "not system" --shard 0/2 tests > $(TEST_LOG) 2>&1 & first=$$!; \
	  OMP_NUM_THREADS=1 $(PYTEST) -m "not system" --shard 1/2 tests; second=$$?; \
	  wait $$first; status=$$?; echo "--- the other part:"; cat $(TEST_LOG); \
	  echo "make test: $$(( $$(date +%s) - start )) s"; [ $$status -eq 0 ] && [ $$second -eq 0 ]

test-system: env
	@start=$$(date +%s); $(PYTEST) -m system tests; status=$$?; \
	  echo "make test-system: $$(( $$(date +%s) - start )) s"; exit $$status

compile-check: env
	$(VPY) -m kernels.compile_check

# Benchmarks (docs/benchmarks.md): CPU figures on a CPU machine, GPU figures where CUDA is available.
# Results are written afresh to bench/results/<device>-<date>[-quick].{json,md,png}.
BENCH_THREADS ?= 1
BENCH_RUN = OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) $(VPY) -m pytest bench -q \
	--bench-threads=$(BENCH_THREADS)

bench-quick: env
	$(VPY) -m pip install -q -e ".[bench]"
	$(BENCH_RUN) --bench-set=quick --bench-docs docs/benchmarks.md

# BENCH_SET=medium: every op, size and implementation at D = 256, float32 only.
BENCH_SET ?= full
bench: env
	$(VPY) -m pip install -q -e ".[bench]"
	$(BENCH_RUN) --bench-set=$(BENCH_SET) --bench-docs docs/benchmarks.md

# The README's demo: source-only vs SePiCo (DistCL) on the synthetic domain shift, on CPU
# (docs/demo.md). Writes runs/demo/{summary.json,results.png,examples.png}; demo-seeds runs
# three seeds and writes their mean and spread to runs/demo-seeds/.
.PHONY: demo demo-seeds
DEMO_ARGS ?=

demo: env
	$(VPY) -m sepico.demo --seeds 0 --out runs/demo $(DEMO_ARGS)

demo-seeds: env
	$(VPY) -m sepico.demo --seeds 0 1 2 --out runs/demo-seeds --docs docs/demo.md $(DEMO_ARGS)

# GPU readiness in one command (docs/kernels.md, "GPU check"): the environment (timed), the CUDA tests, the
# quick benchmark with torch.compile(reference) and bandwidth, the full-resolution training step;
# bench/results/<device>-<date>-gpu-check.{md,json} and $(GPU_CHECK_OUT) when set. Where $(PY)
# already has a CUDA torch and triton (a GPU machine's own, perhaps offline), it runs with them as
# they are, from this folder, and installs nothing. Without CUDA: a dry run of the same steps at
# tiny sizes on the CPU, in .venv.
.PHONY: gpu-check
gpu-check:
	@start=$$(date +%s); \
	if $(PY) -c "import sys, torch, triton; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then \
	  py=$(PY); echo "gpu-check: $$($(PY) -c 'import sys; print(sys.executable)') has a CUDA torch: installing nothing"; \
	else $(MAKE) --no-print-directory env && $(VPY) -m pip install -q -e ".[bench]" && py=$(VPY) || exit 1; fi; \
	$$py -m bench.gpu_check --install-s $$(( $$(date +%s) - start )) $${GPU_CHECK_OUT:+--out "$$GPU_CHECK_OUT"}

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# Ablation on the synthetic benchmark (docs/ablation.md): source-only, self-training alone, a
# control with the contrastive loss weighted 0, ProtoCL, BankCL, DistCL diagonal and full at
# temperatures 0.1 and 100, GroupNorm-encoder variants, DistCL in the earlier loop and DistCL with
# forgetting statistics, 3 seeds each, with the demo's model and schedule. Each run writes
# runs/ablation/runs/<run>/result.json as it ends; rerunning skips finished runs.
# ABLATION_JOBS runs at a time (one process each, one torch thread): the results do not depend on it.
.PHONY: ablation ablation-quick
ABLATION_JOBS ?= 2
ablation: env
	$(VENV)/bin/sepico ablate --seeds 0 1 2 --jobs $(ABLATION_JOBS) --out runs/ablation --docs docs/ablation.md

ablation-quick: env
	$(VENV)/bin/sepico ablate --quick --jobs $(ABLATION_JOBS) --out runs/ablation-quick

# The contrast-weight sweep (docs/ablation.md, "Contrast-weight sweep"): DistCL diagonal at
# temperatures 0.1 and 100 and ProtoCL at 0.1 at five weights, the control (weight 0), the published
# setting and its control, 3 seeds each: 54 runs into runs/ablation-sweep, resumable as the ablation.
# Writes the 'contrast-weight-sweep' block of docs/ablation.md and docs/ablation/contrast_weight_sweep.*.
.PHONY: ablation-sweep
ablation-sweep: env
	$(VENV)/bin/sepico ablate --sweep method.contrast_weight=0,0.03,0.1,0.3,1,3 --seeds 0 1 2 \
	  --jobs $(ABLATION_JOBS) --out runs/ablation-sweep --docs docs/ablation.md

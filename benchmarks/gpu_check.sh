#!/usr/bin/env bash
# GPU check: one table (CUDA unit tests, a streamed `interp sae train` on SmolLM2, the TopK step against
# the bf16 matmul ceiling and eai-sparsify, harvest/train overlap, sharded SAE memory), each row
# PASS / FAIL / SKIP with its reason. The work is benchmarks/gpu_check.py; this wrapper picks the
# python and installs the wheels it is given (no network needed) before handing over.
#
#   bash benchmarks/gpu_check.sh --dry-run                      # CPU, toy sizes, tiny model (~1-2 min; a test runs it)
#   bash benchmarks/gpu_check.sh --wheels DIR --corpus FILE.tar.gz --gguf FILE [--out table.json] [--timeout-s 480]
#
# On a GPU machine without network, the packages it lacks (transformer-lens, gguf, datasets, plotly,
# eai-sparsify, ...) come as wheels (--wheels: installed with pip --no-index --no-deps into
# WORKDIR/site, put first on PYTHONPATH), the built-in corpus as a .tar.gz (--corpus), and SmolLM2 as
# its GGUF (--gguf), which may arrive in parts FILE.part-* that are joined and checked against
# FILE.sha256. `bash benchmarks/gpu_check_bundle.sh` makes all three here; docs/scaling.md ("GPU
# check") gives the exact steps, two device calls because the GGUF (94 MiB) exceeds one call's 64 MiB.
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3); GPU_CHECK_WORK
# the folder for the installed wheels, logs and outputs (default /tmp/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check}"
wheels=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --wheels) wheels="${args[$((i + 1))]:-}" ;;
        --wheels=*) wheels="${args[$i]#--wheels=}" ;;
    esac
done
mkdir -p "$WORK"
if [ -n "$wheels" ]; then
    shopt -s nullglob
    files=("$wheels"/*.whl)
    if [ ${#files[@]} -eq 0 ]; then
        echo "error: --wheels $wheels holds no .whl files" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --disable-pip-version-check \
        --target "$WORK/site" "${files[@]}"
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed ${#files[@]} wheels from $wheels into $WORK/site"
fi
exec "$PYTHON" benchmarks/gpu_check.py --workdir "$WORK/run" "$@"

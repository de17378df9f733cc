#!/usr/bin/env bash
# Creates .venv-sparsify in the repository root: EleutherAI's sparsify (PyPI eai-sparsify) in an
# environment of its own, used only by benchmarks/bench_sae_train.py to time its TopK training
# step on the same activations as ours. Its dependencies (transformers, accelerate, ...) resolve
# on their own here and never touch the main venv or its lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${SPARSIFY_VENV:-.venv-sparsify}"
VERSION="${SPARSIFY_VERSION:-1.3.3}"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.installed" 2>/dev/null)" = "$VERSION" ]; then
    echo "sparsify venv ready: $VENV (eai-sparsify $VERSION)"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip -q --disable-pip-version-check"
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
$PIP install torch==2.13.0
$PIP install "eai-sparsify==$VERSION"
echo "$VERSION" >"$VENV/.installed"
echo "sparsify venv ready: $VENV (eai-sparsify $VERSION)"

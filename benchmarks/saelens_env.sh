#!/usr/bin/env bash
# Creates .venv-saelens in the repository root: a separate environment holding SAELens,
# used by the interop tests (tests/saes/test_io.py) and the training benchmark.
# SAELens pins transformer-lens<4, which cannot share the main venv (transformer-lens 4.x).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${SAELENS_VENV:-.venv-saelens}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import sae_lens" 2>/dev/null; then
    echo "SAELens venv ready: $VENV ($("$VENV/bin/python" -c 'import importlib.metadata as m; print("sae-lens", m.version("sae-lens"))'))"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip -q --disable-pip-version-check"
$PIP install --upgrade pip
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
$PIP install torch==2.13.0
# The newest 6.x that resolves; 6.54 is the version the file format was checked against.
$PIP install "sae-lens==6.54.*" || $PIP install "sae-lens>=6,<7"
echo "SAELens venv ready: $VENV ($("$VENV/bin/python" -c 'import importlib.metadata as m; print("sae-lens", m.version("sae-lens"))'))"

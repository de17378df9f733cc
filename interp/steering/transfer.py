"""Maps between two models' residual streams, so a steering vector built on one steers the other.

After Oozeer et al. 2025 ("Activation Space Interventions Can Be Transferred Between Large
Language Models"): activations of a source model at one point and of a target model at another,
on the same text (`interp.steering.alignment`), train a map `f: (n, d_source) -> (n, d_target)`:

- `affine`: `f(x) = x W + b`, the ridge least-squares solution in closed form (float64);
- `autoencoder`: the paper's map, `f(x) = relu(x' E + e) D + d` on standardised inputs and
  outputs (`x' = (x - mean) / scale`), trained with Adam on the mean squared error.

A steering vector `v` at the source point becomes `v' = mean over anchors x of f(x + v) - f(x)`,
the shift the map predicts in the target when the source is shifted by `v`. For an affine map
that is `v W` exactly, whatever the anchors; for the autoencoder the anchors are source
activations kept from the map's training data.

A map folder holds `map.safetensors` (the weights, the standardisation, the anchors) and
`map.json` (kind, both models and points, widths, fit statistics, data fingerprint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.steering.vector import SteeringVector

FORMAT = "interp.activation_map"
KINDS = ("affine", "autoencoder")
N_ANCHORS = 512


def fve(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of variance explained: `1 - sum |y - y_hat|^2 / sum |y - mean y|^2` over rows `(n, d)`."""
    target = target.double()
    return float(1 - (target - pred.double()).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-30))


class ActivationMap(nn.Module):
    """`f: (n, d_in) -> (n, d_out)` between two models' activations, plus what describes it.

    `info` holds the JSON metadata (models, points, fit statistics); `anchors (m, d_in)` are
    source activations used to transfer vectors through a non-linear map.
    """

    def __init__(self, kind: str, d_in: int, d_out: int, hidden: int = 0, info: dict | None = None):
        super().__init__()
        if kind not in KINDS:
            raise InterpError(f"unknown map kind {kind!r}: use affine or autoencoder")
        if kind == "autoencoder" and hidden < 1:
            raise InterpError(f"an autoencoder map needs a hidden width of at least 1, got {hidden}")
        self.kind, self.d_in, self.d_out, self.hidden = kind, int(d_in), int(d_out), int(hidden)
        self.info = dict(info or {})
        if kind == "affine":
            self.weight = nn.Parameter(torch.zeros(d_in, d_out))
            self.bias = nn.Parameter(torch.zeros(d_out))
        else:
            self.encoder = nn.Linear(d_in, hidden)
            self.decoder = nn.Linear(hidden, d_out)
        for name, size in (("in_mean", d_in), ("out_mean", d_out)):
            self.register_buffer(name, torch.zeros(size))
        self.register_buffer("in_scale", torch.ones(()))
        self.register_buffer("out_scale", torch.ones(()))
        self.register_buffer("anchors", torch.zeros(0, d_in))

    @classmethod
    def identity(cls, d: int, info: dict | None = None) -> "ActivationMap":
        """The affine map `f(x) = x` on width `d`."""
        out = cls("affine", d, d, info=info)
        with torch.no_grad():
            out.weight.copy_(torch.eye(d))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x (n, d_in)` -> `(n, d_out)`."""
        if x.shape[-1] != self.d_in:
            raise InterpError(f"the map takes width {self.d_in} but got {x.shape[-1]}")
        if self.kind == "affine":
            return x @ self.weight + self.bias
        z = (x - self.in_mean) / self.in_scale
        return self.decoder(torch.relu(self.encoder(z))) * self.out_scale + self.out_mean

    def transfer(self, vector: torch.Tensor) -> torch.Tensor:
        """A source-space shift `(d_in,)` as the target-space shift it causes `(d_out,)` (module docstring)."""
        v = vector.detach().reshape(-1).float()
        if v.numel() != self.d_in:
            raise InterpError(f"the vector has width {v.numel()} but the map's source point has width {self.d_in}")
        with torch.no_grad():
            if self.kind == "affine":
                return v @ self.weight
            if len(self.anchors) == 0:
                raise InterpError("this autoencoder map has no anchor activations to transfer vectors with: refit it")
            return (self(self.anchors + v) - self(self.anchors)).mean(0)

    # -------------------------------------------------------------------- disk
    def save(self, directory: str | Path) -> Path:
        """Write `map.safetensors` and `map.json` into `directory`."""
        directory = Path(directory)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        write_safetensors(directory / "map.safetensors", tensors, metadata={"format": FORMAT})
        write_json(directory / "map.json", {"format": FORMAT, "kind": self.kind, "d_in": self.d_in, "d_out": self.d_out,
                                            "hidden": self.hidden, **self.info})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ActivationMap":
        """Read a map written by `save` (safetensors and JSON only)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path, weights_path = directory / "map.json", directory / "map.safetensors"
        for path in (meta_path, weights_path):
            if not path.is_file():
                raise InterpError(f"{path} is missing: point --map at a folder written by `interp steer map`")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(weights_path))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError) as exc:
            raise InterpError(f"the map in {directory} is corrupt ({type(exc).__name__}): refit it") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise InterpError(f"{meta_path} does not describe an activation map: refit it with `interp steer map`")
        info = {k: v for k, v in meta.items() if k not in ("format", "kind", "d_in", "d_out", "hidden")}
        out = cls(meta["kind"], meta["d_in"], meta["d_out"], meta.get("hidden", 0), info)
        out.anchors = torch.zeros_like(tensors.get("anchors", out.anchors))
        try:
            out.load_state_dict(tensors)
        except RuntimeError as exc:
            raise InterpError(f"the weights in {weights_path} do not match {meta_path}: refit the map") from exc
        return out.eval()


def _standardise(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean `(d,)` and one scale: the root mean squared norm of the centred rows."""
    mean = rows.mean(0)
    return mean, (rows - mean).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)


def fit_affine(source: torch.Tensor, target: torch.Tensor, ridge: float = 1e-4) -> ActivationMap:
    """The ridge least-squares affine map from `source (n, d_in)` to `target (n, d_out)`.

    `ridge` is relative: the penalty is `ridge * trace(Xc^T Xc) / d_in` on the centred source
    `Xc`, so it means the same at any activation scale.
    """
    x, y = source.double(), target.double()
    _check_rows(x, y)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    gram = gram + ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram, xc.T @ yc)
    out = ActivationMap("affine", x.shape[1], y.shape[1])
    with torch.no_grad():
        out.weight.copy_(weight.float())
        out.bias.copy_((my - mx @ weight).float())
    out.info["ridge"] = ridge
    return out.eval()


def fit_autoencoder(
    source: torch.Tensor,
    target: torch.Tensor,
    hidden: int = 1024,
    steps: int = 2000,
    lr: float = 1e-3,
    batch_rows: int = 512,
    seed: int = 0,
) -> ActivationMap:
    """The paper's map (encoder, ReLU, decoder) trained with Adam on the MSE of standardised rows.

    `source (n, d_in)`, `target (n, d_out)`; minibatches of `batch_rows` rows drawn with `seed`.
    Records the loss curve in `info["loss_history"]` (every 50 steps).
    """
    x, y = source.float(), target.float()
    _check_rows(x, y)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = ActivationMap("autoencoder", x.shape[1], y.shape[1], hidden)
    (mx, sx), (my, sy) = _standardise(x), _standardise(y)
    with torch.no_grad():
        out.in_mean.copy_(mx), out.in_scale.copy_(sx), out.out_mean.copy_(my), out.out_scale.copy_(sy)
    xs, ys = (x - mx) / sx, (y - my) / sy
    opt = torch.optim.Adam([p for p in out.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / steps) + 1e-3)
    history = []
    for step in range(steps):
        idx = torch.randint(0, len(xs), (min(batch_rows, len(xs)),), generator=gen)
        pred = out.decoder(torch.relu(out.encoder(xs[idx])))
        # Summed over the width (a row's squared error relative to the centred target's total variance).
        loss = (pred - ys[idx]).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": float(loss)})
    out.info.update({"steps": steps, "lr": lr, "batch_rows": batch_rows, "seed": seed, "loss_history": history})
    return out.eval().requires_grad_(False)


def _check_rows(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise InterpError(f"a map is fitted on paired rows (n, d_in) and (n, d_out); got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2:
        raise InterpError("fitting a map needs at least 2 paired rows: give more text")


def fit_map(kind: str, source: torch.Tensor, target: torch.Tensor, **options: Any) -> ActivationMap:
    """`fit_affine` or `fit_autoencoder` by name; `options` go to the fitter, anchors are kept for both."""
    if kind not in KINDS:
        raise InterpError(f"unknown map kind {kind!r}: use affine or autoencoder")
    amap = fit_affine(source, target, **options) if kind == "affine" else fit_autoencoder(source, target, **options)
    gen = torch.Generator().manual_seed(int(options.get("seed", 0)))
    pick = torch.randperm(len(source), generator=gen)[:N_ANCHORS]
    amap.anchors = source[pick].float().clone()
    return amap


def transfer_vector(vector: SteeringVector, amap: ActivationMap) -> SteeringVector:
    """The steering vector at the map's source point, carried to its target point on the target model.

    The result records the target's mean residual norm at the point (so `alpha_unit="norm"`
    means the same as for a vector built there) and keeps the source's data description (its
    text hashes keep held-out scorers off the build texts).
    """
    point_from, point_to = amap.info.get("source_point"), amap.info.get("target_point")
    if point_from not in vector.directions:
        raise InterpError(f"the map starts at {point_from} but the vector has {vector.points}: "
                          f"build the vector at {point_from} or fit a map from one of its points")
    source_model = amap.info.get("source_model")
    if source_model and vector.model_name not in (source_model, "unknown"):
        raise InterpError(f"the vector was built on {vector.model_name!r} but the map starts at {source_model!r}: "
                          "use a map fitted from that model")
    direction = amap.transfer(vector.directions[point_from])
    norms = {point_to: float(amap.info["target_mean_norm"])} if "target_mean_norm" in amap.info else {}
    params = {"transferred_from": {"model": vector.model_name, "point": point_from, "method": vector.method,
                                   "norm": vector.norms[point_from], "params": vector.params},
              "map": {k: amap.info.get(k) for k in ("map_dir", "source_model", "target_model", "heldout_fve")} | {"kind": amap.kind}}
    return SteeringVector({point_to: direction}, str(amap.info.get("target_model", "unknown")), f"transferred-{vector.method}",
                          norms, dict(vector.source), params)

"""LinEAS: per-dimension affine maps on several layers, trained end to end with a 1-D optimal-transport loss.

Rodriguez et al., "End-to-end Learning of Sparse Interventions on Activations to Steer
Generation" (LinEAS). At each point `l` the activation `a (.., d)` becomes

    T_l(a) = omega_l * a + beta_l                      (omega_l, beta_l: (d,), per dimension)

All maps act in one forward pass (through `HookManager.edit`), so a map at an early layer changes
what every later layer sees, and they are trained jointly so that the *steered* activations of
source texts match the (unsteered) activations of target texts, dimension by dimension:

    L = sum_l  mean_k W2^2(steered source[:, k], target[:, k]) / v_l

`W2^2` between two 1-D samples is the mean squared difference of their sorted values (the
target's quantile function is interpolated when the sample sizes differ); `v_l` is the target's
mean per-dimension variance at `l`, so every layer counts alike whatever its scale.

Sparsity. The parameters are kept relative to the identity, `theta_l = (omega_l - 1, beta_l /
sqrt(v_l))` `(2, d)`, and penalised by a sparse group lasso

    R = sum_l  lambda_l1 / d * |theta_l|_1  +  lambda_group / sqrt(d) * |theta_l|_2

applied, as in the paper, by a proximal step after each gradient step (soft-thresholding, then
group shrinkage), so an unneeded dimension or a whole unneeded layer sits *exactly* at the
identity. The gradient step is Adam; the proximal step is taken in Adam's own per-coordinate
metric (step `lr / (sqrt(v_hat) + eps)`), which keeps the fixed points those of the penalised
loss: a dimension stays at identity iff `|dL/dtheta| <= lambda_l1 / d`, i.e. roughly iff the
mean mismatch of its sorted samples is below `lambda_l1 / 2` (in units of the layer's
root-mean-square standard deviation `sqrt(v_l)`); a layer stays at identity iff its whole
gradient has norm `<= lambda_group / sqrt(d)` (root-mean-square mismatch over its dimensions
below about `lambda_group / 2`).

Texts are tokenised and pooled by `interp.readout`'s rules (BOS never read); the target side is
read with `readout.read` / `readout.read_tokens`. The map acts on every position, BOS included,
in training and when applied, so what was trained is what runs.
"""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from interp import manifest, readout
from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.forward import StopForward
from interp.hooks import HookManager
from interp.models import model_device, model_name
from interp.readout import text_hash, texts_fingerprint

FORMAT = "interp.lineas"
VERSION = 1
METHOD = "lineas"
POOLS = ("mean", "last", "tokens")
_FILES = ("lineas.json", "lineas.safetensors")


# ----------------------------------------------------------------------------- artifact
@dataclass
class LinEASMaps:
    """Learned affine maps `a -> omega * a + beta` by hook point (`omega`, `beta`: `{point: (d,)}`).

    `source` describes the data (fingerprint, counts, text hashes), `params` the fit's settings
    and its loss before/after. Saved as a folder: `lineas.safetensors` + `lineas.json` (with the
    project's manifest).
    """

    omega: dict[str, torch.Tensor]
    beta: dict[str, torch.Tensor]
    model_name: str
    source: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.omega or set(self.omega) != set(self.beta):
            raise InterpError("LinEAS maps need omega and beta at the same, non-empty set of points")
        sizes = {int(t.numel()) for t in [*self.omega.values(), *self.beta.values()]}
        if len(sizes) != 1:
            raise InterpError(f"LinEAS maps have different widths {sorted(sizes)}: every omega and beta must be (d,)")
        self.omega = {p: v.detach().reshape(-1).float().cpu() for p, v in self.omega.items()}
        self.beta = {p: self.beta[p].detach().reshape(-1).float().cpu() for p in self.omega}

    method = METHOD

    @property
    def points(self) -> list[str]:
        return list(self.omega)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.omega.values())).numel())

    @property
    def manifest(self) -> dict[str, Any]:
        """The project's manifest (`interp.manifest.make_manifest`) of these maps."""
        return manifest.make_manifest(self.model_name, {p: self.d_model for p in self.points}, self.source.get("fingerprint"))

    def active_dims(self, atol: float = 0.0) -> dict[str, int]:
        """Per point, how many dimensions are not the identity (`|omega-1| > atol` or `|beta| > atol`)."""
        return {p: int((((self.omega[p] - 1).abs() > atol) | (self.beta[p].abs() > atol)).sum()) for p in self.points}

    def describe(self) -> dict:
        """The JSON metadata (everything but the tensors)."""
        return {"format": FORMAT, "version": VERSION, "method": METHOD, "model_name": self.model_name,
                "d_model": self.d_model, "points": self.points, "active_dims": self.active_dims(),
                "source": self.source, "params": self.params, "manifest": self.manifest}

    def save(self, directory: str | Path) -> Path:
        """Write `lineas.safetensors` (`omega:<point>`, `beta:<point>`) and `lineas.json`, atomically."""
        directory = Path(directory)
        tensors = {f"{k}:{p}": getattr(self, k)[p] for p in self.points for k in ("omega", "beta")}
        write_safetensors(directory / _FILES[1], tensors, metadata={"format": FORMAT, "manifest": json.dumps(self.manifest)})
        write_json(directory / _FILES[0], self.describe())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "LinEASMaps":
        """Read maps saved by `save` (safetensors + JSON only)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path, weights_path = (directory / f for f in _FILES)
        for path in (meta_path, weights_path):
            if not path.is_file():
                raise InterpError(f"{path} is missing: point at a folder written by LinEASMaps.save (interp steer build --method lineas)")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(weights_path))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError) as exc:
            raise InterpError(f"LinEAS maps in {directory} are corrupt ({type(exc).__name__}): refit them") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("points"), list):
            raise InterpError(f"{meta_path} is not a LinEAS description: refit the maps")
        missing = [f"{k}:{p}" for p in meta["points"] for k in ("omega", "beta") if f"{k}:{p}" not in tensors]
        if missing:
            raise InterpError(f"{weights_path} lacks {missing[:3]}: the folder is incomplete, refit the maps")
        maps = cls({p: tensors[f"omega:{p}"] for p in meta["points"]}, {p: tensors[f"beta:{p}"] for p in meta["points"]},
                   meta.get("model_name", "unknown"), meta.get("source", {}), meta.get("params", {}))
        stored = meta.get("manifest")
        if isinstance(stored, dict) and manifest.differences(stored, maps.manifest):
            raise InterpError(f"{meta_path}: its manifest does not match the weights "
                              f"({'; '.join(manifest.differences(stored, maps.manifest))}); refit the maps")
        return maps


def is_lineas_folder(directory: str | Path) -> bool:
    """True when `directory` holds LinEAS maps (`lineas.json`), e.g. to tell them from a vector folder."""
    return (Path(directory) / _FILES[0]).is_file()


# ------------------------------------------------------------------------------- loss
def wasserstein_1d(x: torch.Tensor, target_sorted: torch.Tensor) -> torch.Tensor:
    """Squared 1-D Wasserstein-2 distance per dimension between samples `x (n, d)` and a target.

    `target_sorted (m, d)` holds the target sample sorted along dim 0. Returns `(d,)`: the mean
    of `(sort(x)_i - Q_t((i + 0.5) / n))^2` over `i`, where `Q_t` is the target's quantile
    function (its sorted values themselves when `m == n`).
    """
    xs = torch.sort(x, dim=0).values
    return (xs - _target_quantiles(target_sorted, xs.shape[0]).to(xs)).pow(2).mean(0)


def _target_quantiles(target_sorted: torch.Tensor, n: int) -> torch.Tensor:
    """The target's quantiles at levels `(i + 0.5) / n` `(n, d)` (linear interpolation of order statistics)."""
    m = target_sorted.shape[0]
    if m == n:
        return target_sorted
    pos = ((torch.arange(n, dtype=torch.float64) + 0.5) / n * m - 0.5).clamp(0, m - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    w = (pos - lo).to(target_sorted.device, target_sorted.dtype).unsqueeze(1)
    lo, hi = lo.to(target_sorted.device), hi.to(target_sorted.device)
    return target_sorted.index_select(0, lo) * (1 - w) + target_sorted.index_select(0, hi) * w


# ------------------------------------------------------------------- proximal Adam step
def _group_shrink(u: torch.Tensor, h: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_x lam*|x|_2 + sum_i (x_i - u_i)^2 / (2 h_i): zero iff |u / h| <= lam, else
    `x_i = u_i r / (r + lam h_i)` with `r = |x|` the root of `sum_i (u_i / (r + lam h_i))^2 = 1`."""
    if lam <= 0 or float((u / h).norm()) <= lam:
        return torch.zeros_like(u) if lam > 0 else u
    u64, h64 = u.double(), h.double()
    lo, hi = 0.0, float(u64.norm())
    for _ in range(60):  # bisection: the left side decreases in r
        r = 0.5 * (lo + hi)
        lo, hi = (r, hi) if float((u64 / (r + lam * h64)).pow(2).sum()) > 1 else (lo, r)
    r = 0.5 * (lo + hi)
    return (u64 * r / (r + lam * h64)).to(u.dtype)


class _ProxAdam:
    """Adam on the smooth loss, then the sparse-group-lasso proximal step in Adam's metric."""

    def __init__(self, params: list[torch.Tensor], lr: float, lam_l1: float, lam_group: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        d = params[0].shape[-1]
        self.l1, self.group = lam_l1 / d, lam_group / d ** 0.5
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            h = self.lr / ((v / (1 - b2 ** self.t)).sqrt() + self.eps)  # per-coordinate step
            u = p - h * m / (1 - b1 ** self.t)
            u = u.sign() * (u.abs() - h * self.l1).clamp_min(0)
            p.copy_(_group_shrink(u, h, self.group))


# ------------------------------------------------------------------------------ fitting
def _edit_fn(theta: torch.Tensor, scale: torch.Tensor, strength: float = 1.0, store: dict | None = None, name: str = "",
             stop_after: int = 0):
    """`a -> a + strength * (theta[0] * a + theta[1] * scale)`, optionally recording the result."""
    def fn(act: torch.Tensor) -> torch.Tensor:
        if act.shape[-1] != theta.shape[-1]:
            raise InterpError(f"LinEAS map at {name} has width {theta.shape[-1]} but the activation there is {act.shape[-1]} wide")
        t = theta.to(act.device, act.dtype)
        out = act + strength * (t[0] * act + t[1] * scale.to(act.device, act.dtype))
        if store is not None:
            store[name] = out
            if stop_after and len(store) == stop_after:
                raise StopForward
        return out
    return fn


def _pooled(act: torch.Tensor, lengths: torch.Tensor | None, pool: str) -> torch.Tensor:
    """Steered token activations `(b, pos, d)` -> samples `(n, d)` by the readout rules (BOS left out)."""
    if lengths is None:  # plain module: one sample per input
        if act.ndim != 2:
            raise InterpError(f"LinEAS on a plain module needs (n, d) outputs at its points; got shape {tuple(act.shape)}")
        return act
    if pool == "tokens":
        real = torch.arange(act.shape[1], device=act.device)[None, :] < lengths.to(act.device)[:, None]
        real[:, 0] = False
        return act[real]
    return readout.pool_tokens(act, lengths.to(act.device), pool, start=1)


def _target(hm: HookManager, target, names: list[str], pool: str, batch_size: int) -> dict[str, torch.Tensor]:
    """Unsteered target samples `{point: (m, d)}` through `interp.readout`."""
    if hm.is_bridge and pool == "tokens":
        return readout.read_tokens(hm, list(target), names, batch_size=batch_size)[0]
    return dict(readout.read(hm, target if not hm.is_bridge else list(target), names,
                             pool="mean" if pool == "tokens" else pool, batch_size=batch_size))


def fit_lineas(
    model: Any,
    source: Sequence[str] | torch.Tensor,
    target: Sequence[str] | torch.Tensor,
    points: str | Sequence[str],
    pool: str = "mean",
    steps: int = 200,
    lr: float = 0.02,
    lambda_group: float = 0.05,
    lambda_l1: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> LinEASMaps:
    """Fit LinEAS maps at `points` that carry `source` activations onto `target`'s distribution.

    `source`/`target` are texts (a transformer bridge; they need not be paired or equally many)
    or input tensors `(n, ...)` (a plain module whose points output `(n, d)`). `pool`: `mean` or
    `last` (one sample per text, readout rules) or `tokens` (every non-BOS token a sample).
    `batch_size`: source inputs per step (None: all of them each step; the target is always
    used whole). `lambda_group` / `lambda_l1`: the sparse-group-lasso weights in the module
    docstring's units (0 turns a term off). Returns the maps with `params["loss_before"]` /
    `params["loss_after"]` (the transport loss without the penalty, on the whole source set).
    """
    if pool not in POOLS:
        raise InterpError(f"unknown pool {pool!r} for LinEAS: use {', '.join(POOLS)}")
    if steps < 0 or lr <= 0 or lambda_group < 0 or lambda_l1 < 0:
        raise InterpError("LinEAS needs steps >= 0, lr > 0 and non-negative lambdas")
    hm = HookManager(model)
    names = hm.resolve(points)
    if len(source) == 0 or len(target) == 0:
        raise InterpError(f"the {'source' if len(source) == 0 else 'target'} set is empty: give at least one input on each side")
    read_batch = batch_size or 16
    tgt = _target(hm, target, names, pool, read_batch)
    d = int(tgt[names[0]].shape[1])
    if any(t.shape[1] != d for t in tgt.values()):
        raise InterpError(f"LinEAS needs the same width at every point; got {[int(t.shape[1]) for t in tgt.values()]}")
    device = model_device(model)
    tgt_sorted = {p: torch.sort(t.to(device), dim=0).values for p, t in tgt.items()}
    var = {p: float(t.var(0, unbiased=False).mean()) + 1e-12 for p, t in tgt.items()}
    scale = {p: torch.tensor(var[p] ** 0.5, device=device) for p in names}
    theta = {p: torch.zeros(2, d, device=device) for p in names}

    if hm.is_bridge:
        tokens, lengths = readout.tokenize(model, list(source))
    else:
        tokens, lengths = readout.tensor_inputs(source), None
    n = tokens.shape[0]

    def steered(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples `{point: (n_idx, d)}` of source inputs `idx` with every map applied."""
        store: dict[str, torch.Tensor] = {}
        batch, lens = tokens.index_select(0, idx), None  # index_select: far faster than [idx] on CPU
        if lengths is not None:
            lens = lengths.index_select(0, idx)
            batch = batch[:, : int(lens.max())]
        stop_after = len(names) if hm.is_bridge else 0
        with ExitStack() as stack:
            for p in names:
                stack.enter_context(hm.edit(p, _edit_fn(theta[p], scale[p], store=store, name=p, stop_after=stop_after)))
            hm.forward(batch.to(device))
        missing = [p for p in names if p not in store]
        if missing:
            raise InterpError(f"the forward pass never reached {missing}: check the hook points")
        return {p: _pooled(store[p], lens, pool) for p in names}

    def transport_loss(samples: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(wasserstein_1d(samples[p], tgt_sorted[p]).mean() / var[p] for p in names)

    @torch.no_grad()
    def full_loss() -> float:
        parts = [steered(idx) for idx in torch.arange(n).split(read_batch)]
        return float(transport_loss({p: torch.cat([s[p] for s in parts]) for p in names}))

    loss_before = full_loss()
    gen = torch.Generator().manual_seed(seed)
    opt = _ProxAdam([theta[p] for p in names], lr, lambda_l1, lambda_group)
    for _ in tqdm(range(steps), desc="LinEAS", disable=not progress, leave=False):
        idx = torch.randperm(n, generator=gen)[:batch_size] if batch_size and batch_size < n else torch.arange(n)
        params = [theta[p].requires_grad_(True) for p in names]
        with torch.enable_grad():
            grads = torch.autograd.grad(transport_loss(steered(idx)), params)
        for p in params:
            p.requires_grad_(False)
        opt.step(grads)
    loss_after = full_loss()

    src_texts = list(source) if hm.is_bridge else []
    tgt_texts = list(target) if hm.is_bridge else []
    texts = src_texts + tgt_texts
    src_info = {"fingerprint": texts_fingerprint(texts) if texts else None, "n_source": n, "n_target": len(target),
                "text_hashes": [text_hash(t) for t in texts] if len(texts) <= 20000 else []}
    params = {"pool": pool, "steps": steps, "lr": lr, "lambda_group": lambda_group, "lambda_l1": lambda_l1,
              "batch_size": batch_size, "seed": seed, "loss_before": loss_before, "loss_after": loss_after,
              "target_scale": {p: float(scale[p]) for p in names}}
    return LinEASMaps({p: 1 + theta[p][0] for p in names}, {p: theta[p][1] * scale[p] for p in names},
                      model_name(model), src_info, params)


# ---------------------------------------------------------------------------- applying
def _check(model: Any, hm: HookManager, maps: LinEASMaps) -> None:
    names = hm.resolve(maps.points)
    if names != maps.points:
        raise InterpError(f"LinEAS points {maps.points} are not hook point names of this model: refit the maps on it")
    want = manifest.make_manifest(model_name(model), {p: int(model.cfg.d_model) for p in maps.points} if hm.is_bridge else {})
    want["points"] = list(maps.points)  # a plain module's widths are checked when the map runs
    manifest.check_manifest(maps.manifest, want, f"the LinEAS maps (fitted for {maps.model_name!r}, width {maps.d_model})",
                              "load the model they were fitted on or refit them on this one")


@contextmanager
def apply_lineas(model: Any, maps: LinEASMaps | str | Path, strength: float = 1.0) -> Iterator[None]:
    """While the block runs, replace the activation `a (.., d)` at each point of `maps` by
    `a + strength * ((omega - 1) * a + beta)`: `strength=0` is the identity, `1` the fitted map.

    Works for every forward in the block (generation with or without a KV cache: the map acts
    on each position alike). `maps` may be a folder written by `LinEASMaps.save`.
    """
    if not isinstance(maps, LinEASMaps):
        maps = LinEASMaps.load(maps)
    hm = HookManager(model)
    _check(model, hm, maps)
    with ExitStack() as stack:
        for p in maps.points:
            theta = torch.stack([maps.omega[p] - 1, maps.beta[p]])
            stack.enter_context(hm.edit(p, _edit_fn(theta, torch.tensor(1.0), float(strength), name=p)))
        yield

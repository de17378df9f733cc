"""Train sparse autoencoders on streamed or stored activations.

Activation source (`ActivationSource`): either
- an iterable of activation batches, `Tensor (batch, d_in)` for `train_sae` or
  `dict[str, Tensor (batch, d)]` for `train_saes` (e.g. `ActivationStore.batches(...)`,
  `interp.activations.harvest(...)`, a list of tensors); or
- a callable `source(start_token: int) -> iterable of batches` that starts `start_token`
  tokens into the stream (cheaper on resume: nothing is read twice).
Batches of any size are re-cut into `TrainConfig.batch_size` rows. The stream must be
deterministic: on resume the first `tokens_seen` tokens are skipped (an iterable is simply
consumed that far), so the data order matches an uninterrupted run.

Recipe (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", unless noted):
- Inputs are scaled by one constant so their mean norm is `sqrt(d_in)` (estimated on the first
  `init_tokens` tokens); on save the scale is folded into the weights (`SAE.fold_input_scale`)
  and recorded in `cfg.activation_scale`, so the saved SAE takes raw activations.
- `b_dec` starts at the data mean, `W_enc = W_dec.T`, decoder rows have unit norm; before each
  Adam step the gradient component parallel to each decoder row is removed and the rows are
  renormalised after it.
- Adam with linear warm-up and a linear decay to 0 over the last `decay_fraction` of steps.
- A latent is dead when it has not fired for `dead_after_tokens` tokens. TopK, BatchTopK and
  top-AFA SAEs add the AuxK loss: the `aux_k` largest dead latents reconstruct the residual,
  weighted `aux_coefficient`.
- `init_active_subspace` (Wang et al. 2025, "Attention Layers Add Into Low-Dimensional Residual
  Subspaces"): activations occupy a low-dimensional subspace, and random decoder directions
  outside it rarely fire and die. With this option decoder rows (and so encoder columns) are
  drawn from a Gaussian restricted to the top principal components of the first `init_tokens`
  activations that explain `active_subspace_variance` of their variance.

Checkpoints (`out_dir/checkpoint.safetensors`, one atomic file; a readable summary in
`checkpoint.json`) hold the SAE weights, Adam moments, per-latent "tokens since fired" counters,
and in their metadata the step and token counters and configs. The run is deterministic given
the seed and the stream, so a resumed run continues exactly where the checkpoint left off.
Ctrl-C writes a checkpoint and re-raises.
"""

from __future__ import annotations

import json
import math
import re
import signal
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import torch
from tqdm.auto import tqdm

from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from saes.architectures import SAE, SAEConfig, make_sae

ActivationSource = Union[Iterable[Any], Callable[[int], Iterable[Any]]]
CHECKPOINT = "checkpoint.safetensors"


@dataclass
class TrainConfig:
    """How to train: data budget, optimiser and dead-latent handling (see the module docstring)."""

    n_tokens: int = 10_000_000
    batch_size: int = 4096
    lr: float | None = None  # None: 2e-4 / sqrt(d_sae / 2**14) for topk-like SAEs, 7e-5 otherwise
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.999
    aux_k: int | None = None  # None: min(512, d_in // 2)
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int | None = None  # None: min(1M, n_tokens // 10), at least one batch
    init_active_subspace: bool = False
    active_subspace_variance: float = 0.9
    normalize: bool = True
    init_tokens: int = 2**15
    checkpoint_every: int = 1000
    seed: int = 0
    device: str | None = None

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def default_lr(cfg: SAEConfig) -> float:
    """Gao et al.'s learning-rate scaling with width for TopK-style SAEs; a safe constant otherwise."""
    if cfg.arch in ("topk", "batchtopk", "topafa"):
        return 2e-4 / math.sqrt(cfg.d_sae / 2**14)
    return 7e-5


class Trainer:
    """Training state of one SAE: model, Adam, counters. Driven batch by batch by `train_sae(s)`."""

    def __init__(self, sae_cfg: SAEConfig, train_cfg: TrainConfig):
        self.cfg, self.tcfg = sae_cfg, train_cfg
        self.device = train_cfg.resolved_device()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_cfg.seed)
            self.sae = make_sae(sae_cfg)
        self.sae.to(self.device)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=(train_cfg.beta1, train_cfg.beta2))
        self.since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=self.device)
        self.scale = 1.0
        self.step = 0
        self.tokens = 0
        self.stats: dict[str, float] = {}

    @property
    def lr(self) -> float:
        return self.tcfg.lr if self.tcfg.lr is not None else default_lr(self.cfg)

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.tcfg.n_tokens / self.tcfg.batch_size))

    @property
    def aux_k(self) -> int:
        return self.tcfg.aux_k if self.tcfg.aux_k is not None else min(512, max(1, self.cfg.d_in // 2))

    @property
    def dead_after(self) -> int:
        if self.tcfg.dead_after_tokens is not None:
            return self.tcfg.dead_after_tokens
        return max(self.tcfg.batch_size, min(1_000_000, self.tcfg.n_tokens // 10))

    def lr_at(self, step: int) -> float:
        """Linear warm-up over `warmup_steps`, then linear decay to 0 over the last `decay_fraction`."""
        warm = min(1.0, (step + 1) / max(1, self.tcfg.warmup_steps))
        decay_steps = max(1.0, self.tcfg.decay_fraction * self.total_steps)
        return self.lr * warm * min(1.0, (self.total_steps - step) / decay_steps)

    def check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            where = f" for {self.cfg.hook_name}" if self.cfg.hook_name else ""
            raise InterpError(
                f"an activation batch has shape {list(x.shape)} but the SAE{where} expects (batch, {self.cfg.d_in}); "
                "check the hook point and d_in"
            )
        return x.to(self.device, self.cfg.torch_dtype, non_blocking=True)

    @torch.no_grad()
    def initialise(self, sample: torch.Tensor) -> None:
        """Input scale, `b_dec` and (optionally) active-subspace decoder from a sample `(n, d_in)`."""
        sample = self.check(sample).float()
        if self.tcfg.normalize:
            self.scale = math.sqrt(self.cfg.d_in) / sample.norm(dim=1).mean().clamp_min(1e-12).item()
        sample = sample * self.scale
        mean = sample.mean(0)
        sae = self.sae
        if self.tcfg.init_active_subspace:
            centred = sample - mean
            _, s, v = torch.linalg.svd(centred, full_matrices=False)
            explained = (s.pow(2).cumsum(0) / s.pow(2).sum()).cpu()
            dims = int((explained < self.tcfg.active_subspace_variance).sum()) + 1
            gen = torch.Generator(device="cpu").manual_seed(self.tcfg.seed)
            coords = torch.randn(self.cfg.d_sae, dims, generator=gen).to(self.device)
            rows = coords @ v[:dims]
            sae.W_dec.copy_(rows / rows.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.t())
        sae.b_dec.copy_(mean.to(sae.b_dec.dtype))

    @torch.enable_grad()
    def train_step(self, x: torch.Tensor) -> None:
        """One Adam step on a batch `(n, d_in)` of raw activations (autograd on, whatever the caller's grad mode)."""
        x = self.check(x) * self.scale
        sae = self.sae
        dead = self.since_fired >= self.dead_after
        out = sae.training_loss(x, dead=dead, aux_k=self.aux_k, aux_coefficient=self.tcfg.aux_coefficient)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        with torch.no_grad():
            g = sae.W_dec.grad
            if g is not None:
                rows = sae.W_dec
                g -= (g * rows).sum(1, keepdim=True) * rows
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.step()
        sae.normalize_decoder()
        self.since_fired += x.shape[0]
        self.since_fired[out.fired] = 0
        self.step += 1
        self.tokens += x.shape[0]
        if self.step % 10 == 1 or self.step == self.total_steps:
            variance = (x - x.mean(0)).pow(2).sum(-1).mean()
            self.stats = {
                "mse": out.mse.item(),
                "fvu": (out.mse / variance).item(),
                "l0": out.l0.item(),
                "dead": dead.float().mean().item(),
            }

    # --- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, folder: Path) -> None:
        """Write weights, Adam moments and counters to `folder/checkpoint.safetensors` atomically."""
        tensors = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        state_steps = {}
        for name, p in self.sae.named_parameters():
            st = self.opt.state.get(p, {})
            if st:
                tensors[f"adam.{name}.exp_avg"] = st["exp_avg"]
                tensors[f"adam.{name}.exp_avg_sq"] = st["exp_avg_sq"]
                state_steps[name] = float(st["step"])
        tensors["since_fired"] = self.since_fired
        meta = {
            "step": self.step,
            "tokens": self.tokens,
            "scale": self.scale,
            "adam_steps": state_steps,
            "sae_cfg": self.cfg.to_dict(),
            "train_cfg": asdict(self.tcfg),
        }
        write_safetensors(folder / CHECKPOINT, tensors, metadata={"state": json.dumps(meta)})
        write_json(folder / "checkpoint.json", {k: meta[k] for k in ("step", "tokens", "scale", "sae_cfg", "train_cfg")})

    def load_checkpoint(self, folder: Path) -> None:
        """Restore everything `save_checkpoint` wrote."""
        from safetensors import safe_open

        path = folder / CHECKPOINT
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = json.loads(f.metadata()["state"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own types for corrupt files
            raise InterpError(f"checkpoint {path} is unreadable ({type(exc).__name__}): delete it to start over") from None
        if (meta["sae_cfg"]["d_in"], meta["sae_cfg"]["d_sae"], meta["sae_cfg"]["arch"]) != (self.cfg.d_in, self.cfg.d_sae, self.cfg.arch):
            raise InterpError(f"checkpoint {path} is for a different SAE ({meta['sae_cfg']['arch']}, d_in={meta['sae_cfg']['d_in']}, d_sae={meta['sae_cfg']['d_sae']}): use another out dir or resume=False")
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        for name, p in self.sae.named_parameters():
            if name in meta["adam_steps"]:
                self.opt.state[p] = {
                    "step": torch.tensor(meta["adam_steps"][name]),
                    "exp_avg": tensors[f"adam.{name}.exp_avg"].to(self.device),
                    "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(self.device),
                }
        self.since_fired.copy_(tensors["since_fired"])
        self.step, self.tokens, self.scale = meta["step"], meta["tokens"], meta["scale"]

    def final_sae(self) -> SAE:
        """The trained SAE with the input scale folded in (works on raw activations), in eval mode."""
        sae = self.sae
        sae.cfg = replace(sae.cfg)
        sae.fold_input_scale(self.scale)
        return sae.eval()


# --- the stream ------------------------------------------------------------------------------
def _open(source: ActivationSource, start: int) -> Iterator[Any]:
    """Batches from `start` tokens into the stream."""
    if callable(source) and not isinstance(source, Iterable):
        return iter(source(start))
    return _skip(iter(source), start)


def _rows(batch: Any) -> int:
    return next(iter(batch.values())).shape[0] if isinstance(batch, dict) else batch.shape[0]


def _slice(batch: Any, a: int, b: int | None) -> Any:
    return {k: v[a:b] for k, v in batch.items()} if isinstance(batch, dict) else batch[a:b]


def _cat(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def _skip(it: Iterator[Any], n: int) -> Iterator[Any]:
    for batch in it:
        rows = _rows(batch)
        if n >= rows:
            n -= rows
            continue
        yield _slice(batch, n, None) if n else batch
        n = 0


def _rebatch(it: Iterator[Any], size: int, limit: int) -> Iterator[Any]:
    """Re-cut a stream into batches of `size` rows, stopping after `limit` rows."""
    parts: list[Any] = []
    have = 0
    for batch in it:
        if limit <= 0:
            return
        batch = _slice(batch, 0, limit) if _rows(batch) > limit else batch
        limit -= _rows(batch)
        parts.append(batch)
        have += _rows(batch)
        while have >= size:
            full = _cat(parts)
            yield _slice(full, 0, size)
            rest = _slice(full, size, None)
            have -= size
            parts = [rest] if have else []
    if have:
        yield _cat(parts)


def _pick(batch: Any, point: str | None) -> torch.Tensor:
    if point is None:
        if isinstance(batch, dict):
            raise InterpError("the activation source yields dicts of hook points; use train_saes, or give train_sae one point's batches")
        return batch
    if point not in batch:
        raise InterpError(f"the activation source has no batches for {point!r} (it has {', '.join(batch)}); harvest that hook point")
    return batch[point]


# --- drivers ---------------------------------------------------------------------------------
def _folder_name(point: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", point)


def train_saes(
    source: ActivationSource,
    sae_cfgs: dict[str, SAEConfig],
    train_cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, SAE]:
    """Train one SAE per hook point from a single pass over a multi-point stream.

    `source` yields `dict[point, Tensor (batch, d)]` (e.g. `harvest(model, points, ...)`);
    `sae_cfgs` maps each point to its SAE config. Each SAE is saved to `out_dir/<point>`
    (SAELens layout) with its checkpoints beside it. Returns the trained SAEs by point.
    """
    return _train(source, {p: c for p, c in sae_cfgs.items()}, train_cfg, Path(out_dir), resume, progress, multi=True)


def train_sae(
    source: ActivationSource,
    sae_cfg: SAEConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> SAE:
    """Train one SAE on a stream of `Tensor (batch, d_in)` batches; save it to `out_dir`.

    With `resume=True` the run continues from `out_dir/checkpoint.safetensors` (if present),
    skipping the tokens already consumed. Returns the trained SAE (input scale folded in).
    Raises InterpError for a non-positive token budget, an empty stream, or a batch whose
    width is not `d_in`.
    """
    return _train(source, {None: sae_cfg}, train_cfg, Path(out_dir), resume, progress, multi=False)[None]


def _train(source, cfgs: dict, tcfg: TrainConfig, out_dir: Path, resume: bool, progress: bool, multi: bool) -> dict:
    if tcfg.n_tokens < 1:
        raise InterpError(f"n_tokens={tcfg.n_tokens}: train on at least one token (e.g. n_tokens=10_000_000)")
    if tcfg.batch_size < 1:
        raise InterpError(f"batch_size={tcfg.batch_size} must be at least 1")
    folders = {p: out_dir / _folder_name(p) if multi else out_dir for p in cfgs}
    trainers = {p: Trainer(c, tcfg) for p, c in cfgs.items()}
    resumed = resume and all((folders[p] / CHECKPOINT).exists() for p in cfgs)
    if resumed:
        for p, t in trainers.items():
            t.load_checkpoint(folders[p])
        if len({t.tokens for t in trainers.values()}) != 1:
            raise InterpError(f"checkpoints under {out_dir} are at different token counts: resume=False to start over")
    start = next(iter(trainers.values())).tokens
    stream = _rebatch(_open(source, start), tcfg.batch_size, tcfg.n_tokens - start)

    if not resumed:
        head, got = [], 0
        for batch in stream:
            head.append(batch)
            got += _rows(batch)
            if got >= tcfg.init_tokens:
                break
        if not head:
            raise InterpError("the activation source yielded no activations: check the data source and token budget")
        sample = _cat(head)
        for p, t in trainers.items():
            t.initialise(_pick(sample, p))
        stream = _chain(head, stream)

    bar = tqdm(total=tcfg.n_tokens, initial=start, unit="tok", unit_scale=True, disable=not progress, desc="SAE training")
    last_saved = {p: t.step for p, t in trainers.items()}
    try:
        with _DeferredInterrupt() as interrupt:
            for batch in stream:
                for p, t in trainers.items():
                    t.train_step(_pick(batch, p))
                if interrupt.hit:
                    raise KeyboardInterrupt
                bar.update(_rows(batch))
                lead = next(iter(trainers.values()))
                if lead.stats:
                    bar.set_postfix(mse=f"{lead.stats['mse']:.3g}", fvu=f"{lead.stats['fvu']:.3f}", L0=f"{lead.stats['l0']:.1f}", dead=f"{lead.stats['dead']:.1%}", refresh=False)
                if tcfg.checkpoint_every and lead.step % tcfg.checkpoint_every == 0:
                    for p, t in trainers.items():
                        t.save_checkpoint(folders[p])
                        last_saved[p] = t.step
    except KeyboardInterrupt:
        for p, t in trainers.items():
            if t.step > last_saved[p]:
                t.save_checkpoint(folders[p])
        raise
    finally:
        bar.close()
    if next(iter(trainers.values())).step == 0:
        raise InterpError("the activation source yielded no activations: check the data source and token budget")
    return {p: _finish(t, folders[p]) for p, t in trainers.items()}


class _DeferredInterrupt:
    """Turn the first Ctrl-C into a flag checked between batches, so a checkpoint never holds a half-done step.

    A second Ctrl-C interrupts at once. Outside the main thread signals cannot be caught; then
    KeyboardInterrupt arrives as usual.
    """

    def __enter__(self) -> "_DeferredInterrupt":
        self.hit = False
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


def _finish(trainer: Trainer, folder: Path) -> SAE:
    trainer.save_checkpoint(folder)
    sae = trainer.final_sae()
    from saes.io import save_sae

    save_sae(sae, folder)
    write_json(folder / "training.json", {"tokens": trainer.tokens, "steps": trainer.step, "final": trainer.stats, "train_cfg": asdict(trainer.tcfg)})
    return sae

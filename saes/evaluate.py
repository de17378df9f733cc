"""How good is an SAE: reconstruction, sparsity, latent health, and the language model's loss with it.

Metrics (`evaluate_sae` returns them in one dict, also written as results.json):

- `mse`: mean squared error per element, `mean((x - x_hat)^2)` over tokens and dimensions;
- `fve`: fraction of variance explained, `1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`
  (`fvu = 1 - fve`);
- `l0`: mean number of active latents per token;
- `dead_fraction_eval_window`: latents that never fired in the evaluation window of
  `eval_window_tokens` tokens. A short window overstates it: a live latent of density 1e-4 goes
  unseen in 10k tokens with probability e^-1 (37%). The trainer's own figure,
  `dead_fraction_training` (not fired in the last `training_window_tokens` tokens of training),
  is added from the SAE folder's `training.json` by `add_training_dead`;
- `dense_fraction`: latents firing on more than `dense_threshold` (10%) of tokens;
  `feature_density`: each latent's firing frequency;
- `ce_loss_clean` / `ce_loss_spliced` / `ce_loss_ablated`: the model's next-token loss as is,
  with the SAE's reconstruction in place of the activation, and with the activation zeroed;
  `ce_loss_recovered = (ablated - spliced) / (ablated - clean)` (1: the SAE loses nothing; 0: no
  better than deleting the activation).

Activations exclude the BOS position (SAEs are trained without it), and by default the splice and
the ablation leave BOS untouched too, so both edit exactly the tokens the SAE was evaluated on.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from interp.store import ActivationStore
from interp.atomic import write_json
from interp.data import token_batches
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.manifest import check_manifest
from interp.manifest import make_manifest
from interp.models import model_device, model_name
from interp.reports import html_table, write_report
from saes.architectures import SAE
from saes.io import check_sae

DENSE_THRESHOLD = 0.1


class _Stats:
    """Running sums for the reconstruction and sparsity metrics, in float64."""

    def __init__(self, d_in: int, d_sae: int):
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq = 0.0
        self.sum_err = 0.0
        self.active = 0
        self.fired = torch.zeros(d_sae, dtype=torch.long)

    @torch.no_grad()
    def update(self, sae: SAE, x: torch.Tensor) -> None:
        """Add a batch of activations x `(n, d_in)`."""
        x = x.to(sae.W_enc.device, sae.W_enc.dtype)
        z = sae.encode(x)
        x_hat = sae.decode(z)
        xd = x.double()
        self.n += x.shape[0]
        self.sum_x += xd.sum(0).cpu()
        self.sum_sq += float(xd.pow(2).sum())
        self.sum_err += float((xd - x_hat.double()).pow(2).sum())
        on = z != 0
        self.active += int(on.sum())
        self.fired += on.sum(0).cpu()

    def metrics(self, dense_threshold: float) -> dict[str, Any]:
        n, d = self.n, self.sum_x.shape[0]
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / n
        fvu = self.sum_err / total_var if total_var > 0 else float("nan")
        density = (self.fired.double() / n).numpy()
        return {
            "n_tokens": n,
            "mse": self.sum_err / (n * d),
            "fvu": fvu,
            "fve": 1.0 - fvu,
            "l0": self.active / n,
            "dead_fraction_eval_window": float((density == 0).mean()),
            "n_dead_eval_window": int((density == 0).sum()),
            "eval_window_tokens": n,
            "dense_fraction": float((density > dense_threshold).mean()),
            "n_dense": int((density > dense_threshold).sum()),
            "feature_density": density.tolist(),
        }


def activation_metrics(sae: SAE, batches: Any, dense_threshold: float = DENSE_THRESHOLD) -> dict[str, Any]:
    """Reconstruction and sparsity metrics of `sae` over activation `batches` (each `(n, d_in)`), no model needed.

    The same figures `evaluate_sae` reports (mse, fve, l0, dead/dense fractions over this window,
    feature_density), for activations already at hand (a store, a tensor list).
    """
    stats = _Stats(sae.cfg.d_in, sae.cfg.d_sae)
    for batch in batches:
        stats.update(sae, batch.float() if batch.dtype == torch.bfloat16 else batch)
    if stats.n == 0:
        raise InterpError("no activations to evaluate on: give at least one non-empty batch")
    return stats.metrics(dense_threshold)


def add_training_dead(results: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """Add the trainer's dead-latent figure from a `training.json` record to `results` (in place).

    Sets `dead_fraction_training`, `n_dead_training` and `training_window_tokens` (dead: not fired
    in the last that many training tokens) beside the evaluation window's figure.
    """
    dead = (record or {}).get("dead_latents")
    if dead:
        results["dead_fraction_training"] = dead["dead_fraction"]
        results["n_dead_training"] = dead["n_dead"]
        results["training_window_tokens"] = dead["window_tokens"]
    return results


def lm_losses(
    sae: SAE,
    model: Any,
    point: str,
    batches: Any,
    keep_bos: bool = True,
    stats: _Stats | None = None,
    progress: bool = False,
    total: int | None = None,
) -> dict[str, float]:
    """Next-token loss over `batches` of token ids `(batch, ctx)`: clean, SAE spliced in, point zero-ablated.

    When `stats` is given, the clean pass also feeds the point's non-BOS activations to it.
    Losses are means over every predicted token.
    """
    hm = HookManager(model)
    device = model_device(model)
    sums = {"clean": 0.0, "spliced": 0.0, "ablated": 0.0}
    count = 0
    positions = slice(1, None) if keep_bos else None

    def spliced(act: torch.Tensor) -> torch.Tensor:
        out = sae(act.reshape(-1, act.shape[-1])).reshape(act.shape).to(act.dtype)
        out[:, 0] = act[:, 0]  # BOS stays as it was: the SAE never saw it in training
        return out

    bar = tqdm(total=total, unit="tok", desc="eval", disable=not progress)
    with torch.no_grad(), bar:
        for tokens in batches:
            tokens = tokens.to(device)
            n_pred = tokens.shape[0] * (tokens.shape[1] - 1)
            if n_pred == 0:
                continue
            if stats is not None:
                with hm.capture(point, positions=slice(1, None), device=sae.W_enc.device) as cap:
                    clean = model(tokens, return_type="loss")
                stats.update(sae, cap[point].reshape(-1, cap[point].shape[-1]))
            else:
                clean = model(tokens, return_type="loss")
            with hm.edit(point, spliced) if keep_bos else hm.splice(point, sae):
                with_sae = model(tokens, return_type="loss")
            with hm.ablate(point, "zero", positions=positions):
                ablated = model(tokens, return_type="loss")
            sums["clean"] += float(clean) * n_pred
            sums["spliced"] += float(with_sae) * n_pred
            sums["ablated"] += float(ablated) * n_pred
            count += n_pred
            bar.update(n_pred)
    if count == 0:
        raise InterpError("no tokens to evaluate on: give more text or fewer --skip-tokens")
    clean, with_sae, ablated = (sums[k] / count for k in ("clean", "spliced", "ablated"))
    gap = ablated - clean
    return {
        "lm_tokens": count,
        "ce_loss_clean": clean,
        "ce_loss_spliced": with_sae,
        "ce_loss_ablated": ablated,
        "ce_loss_recovered": (ablated - with_sae) / gap if gap != 0 else float("nan"),
    }


def evaluate_sae(
    sae: SAE,
    model: Any,
    source_or_store: str | ActivationStore,
    n_tokens: int,
    point: str | None = None,
    lm_tokens: int | None = None,
    ctx_len: int | None = None,
    batch_size: int = 8,
    skip_contexts: int = 0,
    keep_bos: bool = True,
    dense_threshold: float = DENSE_THRESHOLD,
    text_field: str = "text",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `sae` at its hook point of `model` on `n_tokens` tokens; returns the metrics dict.

    `source_or_store`: a text source (`builtin`, a file, a hub name; the activations come from the
    same forward passes that measure the loss) or an `ActivationStore` holding the point (its first
    `n_tokens` rows are used, and the loss runs on `lm_tokens` (default `n_tokens`) tokens of the
    store's text source). `skip_contexts` skips that many contexts at
    the start of the text (e.g. those used for training). The SAE is moved to the model's device.
    """
    if n_tokens <= 0:
        raise InterpError(f"token count must be positive, got {n_tokens}: pass --tokens N")
    hm = HookManager(model)
    name = check_sae(sae, hm, point)
    sae = sae.to(model_device(model)).eval()
    stats = _Stats(sae.cfg.d_in, sae.cfg.d_sae)
    if isinstance(source_or_store, ActivationStore):
        store = source_or_store
        check_manifest(store.schema, make_manifest(None, {name: sae.cfg.d_in}), f"the store at {store.path}",
                       "evaluate on a store of the SAE's hook point and width")
        seen = 0
        for batch in store.batches(name, batch_size=4096, shuffle=False):
            batch = batch[: n_tokens - seen]
            stats.update(sae, batch.float() if batch.dtype == torch.bfloat16 else batch)
            seen += batch.shape[0]
            if seen >= n_tokens:
                break
        if seen == 0:
            raise InterpError(f"the store at {store.path} holds no activations: harvest it again")
        source = store.manifest.get("data", "builtin")
        text_field = store.manifest.get("text_field", text_field)
        ctx = ctx_len or int(store.manifest.get("ctx_len", 128))
        # token_batches counts the skipped contexts in its budget.
        budget = (lm_tokens or n_tokens) + skip_contexts * (ctx - 1)
        batches = token_batches(model, source, ctx, batch_size, budget, text_field, skip_contexts)
        lm = lm_losses(sae, model, name, batches, keep_bos, None, progress, lm_tokens or n_tokens)
    else:
        ctx = ctx_len or sae.cfg.context_size or 128
        # One pass gives both: the clean forward's activations feed the reconstruction metrics.
        budget = n_tokens + skip_contexts * (ctx - 1)  # token_batches counts the skipped contexts in its budget
        batches = token_batches(model, source_or_store, ctx, batch_size, budget, text_field, skip_contexts)
        lm = lm_losses(sae, model, name, batches, keep_bos, stats, progress, n_tokens)
    results: dict[str, Any] = {
        "model": model_name(model),
        "hook_name": name,
        "arch": sae.cfg.arch,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "k": sae.cfg.k,
        "data": source_or_store.manifest.get("data") if isinstance(source_or_store, ActivationStore) else source_or_store,
        "dense_threshold": dense_threshold,
        "keep_bos": keep_bos,
        "ctx_len": ctx,
        # The contexts of the text the language-model loss (and, from text, every metric) ran on.
        "eval_contexts": [skip_contexts, skip_contexts + math.ceil(lm["lm_tokens"] / (ctx - 1))],
    }
    metrics = stats.metrics(dense_threshold)
    density = metrics.pop("feature_density")
    results.update(metrics)
    results.update(lm)
    results["feature_density"] = density
    return results


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The scalar metrics as (metric, value) rows for a table."""
    keys = ["n_tokens", "mse", "fve", "fvu", "l0", "dead_fraction_eval_window", "eval_window_tokens",
            "dead_fraction_training", "training_window_tokens", "dense_fraction", "ce_loss_clean",
            "ce_loss_spliced", "ce_loss_ablated", "ce_loss_recovered", "lm_tokens"]
    return [{"metric": k, "value": results[k]} for k in keys if k in results]


def density_figure(densities: Any, dense_threshold: float = DENSE_THRESHOLD, title: str = "Feature density") -> go.Figure:
    """Histogram of log10 firing frequency over latents (`densities` `(d_sae,)` in [0, 1]); dead latents counted in the title."""
    d = np.asarray(densities, dtype=np.float64)
    alive = d[d > 0]
    n_dead = int((d == 0).sum())
    fig = go.Figure(go.Histogram(x=np.log10(alive), nbinsx=60, marker_color="#4c78a8", name="latents"))
    fig.add_vline(x=math.log10(dense_threshold), line_dash="dash", line_color="#e45756",
                  annotation_text=f"dense (> {dense_threshold:g})", annotation_position="top right")
    fig.update_layout(
        title=f"{title}: {len(alive)} alive, {n_dead} dead (not shown) of {len(d)} latents",
        xaxis_title="log10 firing frequency (fraction of tokens)",
        yaxis_title="latents",
        bargap=0.02,
        height=420,
    )
    return fig


def write_eval_report(results: dict[str, Any], path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the HTML report at `path` and `results.json` beside it; returns both paths."""
    path = Path(path)
    json_path = path.with_name("results.json")
    write_json(json_path, results)
    intro = (
        f"{html.escape(str(results.get('arch')))} SAE with {results.get('d_sae')} latents at "
        f"<code>{html.escape(str(results.get('hook_name')))}</code> of {html.escape(str(results.get('model')))}, "
        f"evaluated on {results.get('n_tokens'):,} tokens of {html.escape(str(results.get('data')))}"
        + (" (text after the training tokens)" if results.get("held_out") else "")
        + ". "
        "CE loss recovered = (ablated - spliced) / (ablated - clean)."
    )
    write_report(
        path,
        "SAE evaluation",
        figures=[density_figure(results["feature_density"], results.get("dense_threshold", DENSE_THRESHOLD))],
        sections=["<h2>Metrics</h2>", html_table(summary_rows(results), digits=5)],
        intro=intro,
    )
    return path, json_path

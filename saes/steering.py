"""Steering vectors from SAE latents chosen by how well they separate two text sets (LF-Steering).

Yang et al., "LF-Steering: Latent Feature Activation Steering for Enhancing Semantic Consistency
in Large Language Models": map the hidden states at one layer into an SAE's sparse feature
space, locate the latents whose activations differ between two contrasted sets, and steer by
adding a bias on those latents. Adding `delta_j` to latent `j`'s activation adds
`delta_j * W_dec[j]` to the reconstruction, so the intervention is the vector

    v = sum_{j in S} delta_j * W_dec[j]           delta_j = mean_pos(z_j) - mean_neg(z_j)

where `S` holds the `n_features` latents with the largest `|score_j|`. Scores (`criterion`):

- `effect_size`: Cohen's d, `delta_j / s_j` with the pooled standard deviation
  `s_j^2 = ((n_p - 1) var_p + (n_n - 1) var_n) / (n_p + n_n - 2)`;
- `paired`: the paired d_z, `mean_i(z_pos_i - z_neg_i) / sd_i(z_pos_i - z_neg_i)`, for sets given
  as pairs (line i of one with line i of the other, e.g. paraphrases or minimal pairs);
- `mean_diff`: `delta_j` itself.

A small `eps` under the square root keeps a latent that never varies (`delta_j = 0`) at score
0, so latents that fire alike on both sets are never chosen (`min_score` is a strict lower bound).
Activations `z` are SAE encodings of token activations read through `interp.readout` (BOS never
read), per text (`level="text"`: the `pool` of the text's token encodings) or per token.

`sae` is any object with `encode(x (n, d_in)) -> (n, d_sae)`, `W_dec (d_sae, d_in)` and,
optionally, `cfg.hook_name` (an `saes` SAE, or one from elsewhere). `feature_vector` makes one
latent's decoder row a vector. Both hand the core a plain `SteeringVector`; `saes.cli_steer`
plugs them into `interp steer build --method sae-features` and `interp steer generate --sae`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from interp import readout
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.models import model_name
from interp.readout import text_hash, texts_fingerprint
from interp.steering.build import from_direction
from interp.steering.vector import SteeringVector

CRITERIA = ("effect_size", "paired", "mean_diff")
LEVELS = ("text", "token")
TEXT_POOLS = ("mean", "max", "last")
EPS = 1e-12


@dataclass
class LatentEffects:
    """How each SAE latent separates two sets: `(d_sae,)` tensors over the samples of each side.

    `mean_*` / `var_*` (unbiased) over samples (texts or tokens, by `level`); `paired_diff_*` the
    mean and unbiased variance of per-pair differences (None unless the sets are pairs at text level).
    """

    point: str
    level: str
    n_positive: int
    n_negative: int
    mean_positive: torch.Tensor
    mean_negative: torch.Tensor
    var_positive: torch.Tensor
    var_negative: torch.Tensor
    paired_diff_mean: torch.Tensor | None = None
    paired_diff_var: torch.Tensor | None = None

    @property
    def mean_diff(self) -> torch.Tensor:
        """`mean_pos - mean_neg` `(d_sae,)`."""
        return self.mean_positive - self.mean_negative

    def scores(self, criterion: str = "effect_size") -> torch.Tensor:
        """The separation score of every latent `(d_sae,)` under `criterion` (signed)."""
        if criterion == "mean_diff":
            return self.mean_diff
        if criterion == "effect_size":
            dof = max(self.n_positive + self.n_negative - 2, 1)
            pooled = ((self.n_positive - 1) * self.var_positive + (self.n_negative - 1) * self.var_negative) / dof
            return self.mean_diff / (pooled + EPS).sqrt()
        if criterion == "paired":
            if self.paired_diff_mean is None:
                raise InterpError("the paired criterion needs paired texts (as many positive as negative) read at level='text'")
            return self.paired_diff_mean / (self.paired_diff_var + EPS).sqrt()
        raise InterpError(f"unknown criterion {criterion!r}: use {', '.join(CRITERIA)}")


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over rows of `x (n, d_sae)` (variance 0 for a single row)."""
    x = x.double()
    return x.mean(0), (x.var(0, unbiased=True) if x.shape[0] > 1 else torch.zeros(x.shape[1], dtype=x.dtype))


def _sae_point(hm: HookManager, sae: Any, point: str | None) -> str:
    trained = getattr(getattr(sae, "cfg", None), "hook_name", "") or ""
    if point is None and not trained:
        raise InterpError("the SAE names no hook point: pass point=<hook point it was trained on>, e.g. blocks.6.hook_resid_post")
    name = hm.resolve(point or trained)[0]
    if trained and point is not None and name != trained:
        raise InterpError(f"this SAE was trained on {trained}, not {name}: select latents at {trained}")
    d_in = int(sae.W_dec.shape[1])
    if hm.is_bridge and name.endswith(("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")) and d_in != hm.d_model:
        raise InterpError(f"the SAE reads d_in={d_in} but {name} has width {hm.d_model}: use an SAE trained on this model and point")
    return name


@torch.no_grad()
def _encode(sae: Any, acts: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """SAE activations `(n, d_sae)` (float32, CPU) of activations `acts (n, d_in)`, in chunks."""
    if acts.shape[1] != int(sae.W_dec.shape[1]):
        raise InterpError(f"activations are {acts.shape[1]} wide but the SAE expects d_in={int(sae.W_dec.shape[1])}: "
                          "use an SAE trained on this model and point")
    device = sae.W_dec.device
    return torch.cat([sae.encode(part.to(device)).float().cpu() for part in acts.split(chunk)])


def _per_text(z: torch.Tensor, text_index: torch.Tensor, n_texts: int, pool: str) -> torch.Tensor:
    """Pool token encodings `z (n_tokens, d_sae)` into one row per text `(n_texts, d_sae)`."""
    if pool == "mean":
        counts = torch.bincount(text_index, minlength=n_texts).clamp_min(1).unsqueeze(1)
        return torch.zeros(n_texts, z.shape[1]).index_add_(0, text_index, z) / counts
    if pool == "max":
        return torch.full((n_texts, z.shape[1]), float("-inf")).scatter_reduce_(
            0, text_index.unsqueeze(1).expand_as(z), z, reduce="amax")
    last = torch.cumsum(torch.bincount(text_index, minlength=n_texts), 0) - 1
    return z.index_select(0, last)


def latent_effects(
    model: Any,
    sae: Any,
    positive_texts: Sequence[str] | torch.Tensor,
    negative_texts: Sequence[str] | torch.Tensor,
    point: str | None = None,
    level: str = "text",
    pool: str = "mean",
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[LatentEffects, dict[str, float]]:
    """SAE latent statistics of both sets at `point` (default: the SAE's own hook point).

    Returns `(effects, info)`, `info = {"mean_norm": mean token norm at the point}`. On a plain
    module the inputs are tensors `(n, ...)`, one sample each (`level`/`pool` unused).
    """
    if level not in LEVELS:
        raise InterpError(f"unknown level {level!r}: use text or token")
    if pool not in TEXT_POOLS:
        raise InterpError(f"unknown pool {pool!r}: use {', '.join(TEXT_POOLS)}")
    if len(positive_texts) == 0 or len(negative_texts) == 0:
        side = "positive" if len(positive_texts) == 0 else "negative"
        raise InterpError(f"the {side} set is empty: give at least one text on each side")
    hm = HookManager(model)
    name = _sae_point(hm, sae, point)
    n_pos, n_neg = len(positive_texts), len(negative_texts)
    if hm.is_bridge:
        acts, text_index, _ = readout.read_tokens(hm, list(positive_texts) + list(negative_texts), [name],
                                                  batch_size=batch_size, progress=progress)
        acts = acts[name]
        z = _encode(sae, acts)
        if level == "text":
            rows = _per_text(z, text_index, n_pos + n_neg, pool)
            pos, neg = rows[:n_pos], rows[n_pos:]
        else:
            is_pos = text_index < n_pos
            pos, neg = z[is_pos], z[~is_pos]
    else:
        inputs = torch.cat([readout.tensor_inputs(positive_texts), readout.tensor_inputs(negative_texts)])
        acts = readout.read(hm, inputs, [name], batch_size=batch_size)[name]
        z = _encode(sae, acts)
        pos, neg = z[:n_pos], z[n_pos:]
    (mp, vp), (mn, vn) = _moments(pos), _moments(neg)
    paired = _moments(pos - neg) if (pos.shape[0] == neg.shape[0] and (level == "text" or not hm.is_bridge)) else (None, None)
    effects = LatentEffects(name, level, int(pos.shape[0]), int(neg.shape[0]), mp, mn, vp, vn, *paired)
    return effects, {"mean_norm": float(acts.norm(dim=-1).mean())}


def sae_feature_vector(
    model: Any,
    sae: Any,
    positive_texts: Sequence[str] | torch.Tensor,
    negative_texts: Sequence[str] | torch.Tensor,
    n_features: int = 8,
    criterion: str = "effect_size",
    level: str = "text",
    pool: str = "mean",
    point: str | None = None,
    min_score: float = 0.0,
    batch_size: int = 16,
    progress: bool = False,
) -> SteeringVector:
    """A steering vector `(d_model,)` from the `n_features` SAE latents that best separate the sets.

    The vector is `sum_j delta_j * W_dec[j]` over the chosen latents (`delta_j`: mean activation
    on the positive set minus the negative set; a latent firing more on the negative set enters
    with a negative weight), so at `alpha=1` it adds the chosen latents' average difference.
    Latents with `|score| <= min_score` are never chosen (fewer than `n_features` may remain).
    Returns a `SteeringVector` with method `sae_features` whose `params` list the chosen
    `latents`, their `scores` and `weights` (`delta_j`), in rank order.
    """
    if n_features < 1:
        raise InterpError(f"n_features must be at least 1, got {n_features}")
    if criterion not in CRITERIA:
        raise InterpError(f"unknown criterion {criterion!r}: use {', '.join(CRITERIA)}")
    effects, info = latent_effects(model, sae, positive_texts, negative_texts, point, level, pool, batch_size, progress)
    scores = effects.scores(criterion)
    order = torch.argsort(scores.abs(), descending=True, stable=True)
    chosen = [int(j) for j in order[:n_features] if float(scores[j].abs()) > min_score]
    if not chosen:
        raise InterpError(f"no SAE latent separates the two sets (every |{criterion}| <= {min_score}): "
                          "check the texts, the SAE's hook point, or lower min_score")
    weights = effects.mean_diff[chosen].float()
    W_dec = sae.W_dec.detach().float().cpu()
    direction = (weights.unsqueeze(1) * W_dec.index_select(0, torch.tensor(chosen))).sum(0)
    texts = [t for t in [*positive_texts, *negative_texts] if isinstance(t, str)]
    source = {"fingerprint": texts_fingerprint(texts) if texts else None, "n_positive": len(positive_texts),
              "n_negative": len(negative_texts), "text_hashes": [text_hash(t) for t in texts] if len(texts) <= 20000 else []}
    params = {"latents": chosen, "scores": [float(scores[j]) for j in chosen], "weights": weights.tolist(),
              "criterion": criterion, "level": level, "pool": pool, "n_features": n_features, "min_score": min_score,
              "d_sae": int(W_dec.shape[0]), "sae_point": effects.point,
              "n_samples": [effects.n_positive, effects.n_negative]}
    return SteeringVector({effects.point: direction}, model_name(model), "sae_features",
                          {effects.point: info["mean_norm"]}, source, params)


def feature_vector(sae: Any, feature: int, point: str | None = None) -> SteeringVector:
    """Latent `feature`'s decoder row `W_dec[feature] (d_in,)` as a steering vector at the SAE's hook point
    (or `point`), recorded with method `sae_feature` and the latent's index."""
    n = int(sae.W_dec.shape[0])
    if not 0 <= feature < n:
        raise InterpError(f"latent {feature} is out of range: the SAE has {n} latents (0 to {n - 1})")
    cfg = getattr(sae, "cfg", None)
    where = point or getattr(cfg, "hook_name", "") or ""
    if not where:
        raise InterpError("the SAE names no hook point: pass point=<hook point it was trained on>")
    row = sae.W_dec[feature].detach().float().cpu()
    return from_direction(row, where, str(getattr(cfg, "model_name", "") or ""), method="sae_feature", feature=feature)

"""Measuring what a steering vector does: generate at several alphas with the same seeds, score the
continuations with scorers that are not the vector, and measure fluency (the unsteered model's
loss on each continuation); `layer_sweep` compares points to pick a layer."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.models import model_device
from interp.steering.steer import generate_ids
from interp.steering.scorers import LexiconScorer, Scorer
from interp.steering.texts import BUILTIN_PROMPTS
from interp.steering.vector import SteeringVector


def continuation_loss(model, prompt_ids: torch.Tensor, new_ids: torch.Tensor) -> float:
    """Mean next-token loss (nats) of `new_ids` `(n_new,)` after `prompt_ids` `(n_prompt,)`, unsteered."""
    if new_ids.numel() == 0:
        return float("nan")
    tokens = torch.cat([prompt_ids.reshape(-1).cpu(), new_ids.reshape(-1).cpu()]).unsqueeze(0)
    with torch.no_grad():
        losses = model(tokens.to(model_device(model)), return_type="loss", loss_per_token=True)
    return float(losses[0, -new_ids.numel():].mean())


# ------------------------------------------------------------------- evaluation
def _steered_runs(model, vector, prompts, alphas, seeds, gen_kwargs, progress, desc):
    """Yield (alpha, prompt, seed, prompt_ids, new_ids) for every combination, steering per run."""
    jobs = [(a, p, s) for a in alphas for p in prompts for s in seeds]
    for a, p, s in tqdm(jobs, desc=desc, disable=not progress, leave=False):
        prompt_ids = model.to_tokens(p, prepend_bos=True)[0].cpu()
        new = generate_ids(model, prompt_ids, vector if a != 0 else None, a, seed=s, **gen_kwargs)
        yield a, p, s, prompt_ids, new


def evaluate(
    model,
    vector: SteeringVector,
    prompts: Sequence[str] = BUILTIN_PROMPTS,
    alphas: Sequence[float] = (-8, -4, 0, 4, 8),
    scorers: dict[str, Scorer] | None = None,
    seeds: Sequence[int] = (0,),
    max_new_tokens: int = 30,
    temperature: float = 0.7,
    top_p: float | None = None,
    positions: str = "all",
    norm_preserve: bool = False,
    alpha_unit: str = "vector",
    progress: bool = True,
) -> dict:
    """Generate after each prompt at each alpha (same seeds), score the continuations, measure fluency.

    Returns `{"curve": [{alpha, <scorer>: mean, <scorer>_by_seed: {seed: mean over prompts},
    fluency: mean loss}], "samples": [{prompt, seed,
    texts: {alpha: continuation}}], "settings": {...}}`. alpha 0 is the unsteered baseline.
    """
    scorers = scorers if scorers is not None else {"lexicon": LexiconScorer()}
    gen_kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, positions=positions,
                      norm_preserve=norm_preserve, alpha_unit=alpha_unit)
    texts: dict[float, list[str]] = {a: [] for a in alphas}
    text_seeds: dict[float, list[int]] = {a: [] for a in alphas}
    losses: dict[float, list[float]] = {a: [] for a in alphas}
    samples: dict[tuple[str, int], dict] = {}
    for a, p, s, prompt_ids, new in _steered_runs(model, vector, prompts, alphas, seeds, gen_kwargs, progress, "steer eval"):
        text = model.tokenizer.decode(new.tolist(), skip_special_tokens=True)
        texts[a].append(text)
        text_seeds[a].append(s)
        losses[a].append(continuation_loss(model, prompt_ids, new))
        samples.setdefault((p, s), {"prompt": p, "seed": s, "texts": {}})["texts"][str(a)] = text
    curve = []
    for a in alphas:
        row = {"alpha": float(a)}
        for name, scorer in scorers.items():
            vals = scorer(texts[a])
            row[name] = sum(vals) / len(vals)
            row[f"{name}_by_seed"] = {str(seed): _mean([v for v, t in zip(vals, text_seeds[a]) if t == seed]) for seed in seeds}
        finite = [x for x in losses[a] if x == x]
        row["fluency_loss"] = sum(finite) / len(finite) if finite else float("nan")
        curve.append(row)
    settings = {**gen_kwargs, "seeds": list(seeds), "alphas": [float(a) for a in alphas], "n_prompts": len(prompts)}
    return {"curve": curve, "samples": list(samples.values()), "settings": settings}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def layer_sweep(
    model,
    vectors: dict[str, SteeringVector] | Callable[[str], SteeringVector],
    prompts: Sequence[str],
    scorer: Scorer,
    alphas: Sequence[float] = (-1.0, 0.0, 1.0),
    points: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    max_new_tokens: int = 20,
    temperature: float = 0.7,
    alpha_unit: str = "norm",
    progress: bool = True,
) -> list[dict]:
    """How strongly steering at each point moves `scorer`, to pick a layer.

    `vectors` is `{point: vector}` or a builder `point -> vector` (with `points`). Returns one row
    per point and alpha: `{point, layer, alpha, score, fluency_loss, slope}`, where `slope` is the
    least-squares slope of score against alpha at that point (the same for all its rows).
    """
    if callable(vectors) and not isinstance(vectors, dict):
        if not points:
            raise InterpError("layer_sweep with a vector builder needs points=[...]")
        vectors = {p: vectors(p) for p in points}
    rows = []
    gen_kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, alpha_unit=alpha_unit)
    for point, vec in vectors.items():
        by_alpha: dict[float, tuple[list[str], list[float]]] = {a: ([], []) for a in alphas}
        for a, _, _, prompt_ids, new in _steered_runs(model, vec, prompts, alphas, seeds, gen_kwargs, progress, point):
            by_alpha[a][0].append(model.tokenizer.decode(new.tolist(), skip_special_tokens=True))
            by_alpha[a][1].append(continuation_loss(model, prompt_ids, new))
        point_rows = []
        for a, (txts, loss) in by_alpha.items():
            vals = scorer(txts)
            finite = [x for x in loss if x == x]
            point_rows.append({"point": point, "layer": vec.layers[0], "alpha": float(a), "score": sum(vals) / len(vals),
                               "fluency_loss": sum(finite) / len(finite) if finite else float("nan")})
        xs = torch.tensor([r["alpha"] for r in point_rows], dtype=torch.float64)
        ys = torch.tensor([r["score"] for r in point_rows], dtype=torch.float64)
        slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum().clamp_min(1e-12))
        rows.extend({**r, "slope": slope} for r in point_rows)
    return rows

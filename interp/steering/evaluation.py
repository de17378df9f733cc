"""Measuring what a steering vector does: generate at several alphas with the same seeds, score the
continuations with scorers that are not the vector, and measure fluency (the unsteered model's
loss on each continuation); `layer_sweep` compares points to pick a layer."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.models import model_device
from interp.steering.steer import generate_batch_ids
from interp.steering.scorers import LexiconScorer, Scorer
from interp.steering.texts import BUILTIN_PROMPTS
from interp.steering.vector import SteeringVector


def continuation_loss(model, prompt_ids: torch.Tensor, new_ids: torch.Tensor) -> float:
    """Mean next-token loss (nats) of `new_ids` `(n_new,)` after `prompt_ids` `(n_prompt,)`, unsteered."""
    return continuation_losses(model, [prompt_ids], [new_ids])[0]


def continuation_losses(model, prompt_ids: Sequence[torch.Tensor], new_ids: Sequence[torch.Tensor]) -> list[float]:
    """`continuation_loss` of each (prompt, continuation) pair, all pairs in one unsteered forward.

    The sequences are right-padded: under the causal mask no real token sees a pad, so each row's
    losses are those of its sequence alone. An empty continuation has loss nan.
    """
    rows = [torch.cat([p.reshape(-1).cpu(), n.reshape(-1).cpu()]) for p, n in zip(prompt_ids, new_ids)]
    if not rows:
        return []
    tokens = torch.zeros((len(rows), max(r.numel() for r in rows)), dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        tokens[i, : r.numel()] = r
    with torch.no_grad():
        logits = model(tokens.to(model_device(model)), return_type="logits").float()
    out = []
    for i, (r, n) in enumerate(zip(rows, new_ids)):
        k, end = n.numel(), r.numel()
        if k == 0:
            out.append(float("nan"))
            continue
        logp = torch.log_softmax(logits[i, end - k - 1 : end - 1], dim=-1)
        out.append(float(-logp.gather(1, r[end - k :, None].to(logp.device)).mean()))
    return out


# ------------------------------------------------------------------- evaluation
def _steered_runs(model, vector, prompts, alphas, seeds, gen_kwargs, progress, desc, batch_size):
    """Yield (alpha, prompt, seed, new_ids, loss) for every combination: per alpha and seed,
    the prompts are generated in batches of `batch_size` (the same batches at every alpha, so the same
    random numbers) and their continuations scored by the unsteered model in one forward."""
    prompt_ids = [model.to_tokens(p, prepend_bos=True)[0].cpu() for p in prompts]
    chunks = [range(i, min(i + batch_size, len(prompts))) for i in range(0, len(prompts), batch_size)]
    jobs = [(a, s, c) for a in alphas for s in seeds for c in chunks]
    for a, s, chunk in tqdm(jobs, desc=desc, disable=not progress, leave=False):
        ids = [prompt_ids[i] for i in chunk]
        new = generate_batch_ids(model, ids, vector if a != 0 else None, a, seed=s, **gen_kwargs)
        losses = continuation_losses(model, ids, new)
        for i, n, loss in zip(chunk, new, losses):
            yield a, prompts[i], s, n, loss


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
    batch_size: int = 16,
) -> dict:
    """Generate after each prompt at each alpha (same seeds), score the continuations, measure fluency.

    Returns `{"curve": [{alpha, <scorer>: mean, <scorer>_by_seed: {seed: mean over prompts},
    fluency: mean loss}], "samples": [{prompt, seed,
    texts: {alpha: continuation}}], "settings": {...}}`. alpha 0 is the unsteered baseline.
    Prompts are generated `batch_size` at a time (`generate_batch_ids`).
    """
    if batch_size < 1:
        raise InterpError(f"batch_size must be at least 1, got {batch_size}")
    scorers = scorers if scorers is not None else {"lexicon": LexiconScorer()}
    gen_kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, positions=positions,
                      norm_preserve=norm_preserve, alpha_unit=alpha_unit)
    texts: dict[float, list[str]] = {a: [] for a in alphas}
    text_seeds: dict[float, list[int]] = {a: [] for a in alphas}
    losses: dict[float, list[float]] = {a: [] for a in alphas}
    samples = {(p, s): {"prompt": p, "seed": s, "texts": {}} for p in prompts for s in seeds}  # prompt-major order
    runs = _steered_runs(model, vector, prompts, alphas, seeds, gen_kwargs, progress, "steer eval", batch_size)
    for a, p, s, new, loss in runs:
        text = model.tokenizer.decode(new.tolist(), skip_special_tokens=True)
        texts[a].append(text)
        text_seeds[a].append(s)
        losses[a].append(loss)
        samples[(p, s)]["texts"][str(a)] = text
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
    settings = {**gen_kwargs, "seeds": list(seeds), "alphas": [float(a) for a in alphas], "n_prompts": len(prompts),
                "batch_size": batch_size}
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
    batch_size: int = 16,
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
        for a, _, _, new, loss in _steered_runs(model, vec, prompts, alphas, seeds, gen_kwargs, progress, point, batch_size):
            by_alpha[a][0].append(model.tokenizer.decode(new.tolist(), skip_special_tokens=True))
            by_alpha[a][1].append(loss)
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

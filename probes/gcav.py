"""Global concept activation vectors (GCAV, He et al., 2025): one concept, consistent across layers.

CAVs trained independently at each layer disagree, so their TCAV scores jump from layer to
layer. GCAV puts the CAVs of every layer into one shared space where the same concept's CAVs
agree, fuses them with attention into one global CAV, and maps that back into each layer to
score it there (TGCAV).

Shared space. At layer l the CAVs of all concepts (the concept's runs and the random concepts)
are stacked as `V_l (n_items, d_l)`; `B_l (d_l, r)` holds its top `r` right singular vectors,
with `r` the number of distinct concepts by default (a concept's runs nearly coincide, so that
is the stack's effective rank; what lies beyond it is run-to-run noise). The layer's map into
the shared space is `W_l = Q_l B_l^T (r, d_l)` with `Q_l (r, r)` orthogonal, so `W_l` has
orthonormal rows: it keeps angles (a CAV's TCAV sign means the same after the map) and `W_l^T`
maps the shared space back into the layer, exactly on the span of `B_l`.

Alignment. The paper trains free per-layer encoders with a contrastive loss (pull one concept's
CAVs of different layers together, push other concepts away) plus a reconstruction loss. Here
the maps are isometries instead: with one concept and a few random concepts, free maps fit any
targets exactly (the fused CAV would equal each layer's own CAV), and under an isometry concepts
cannot collapse, so the push term has nothing left to prevent. Worse, its gradient is first-order
at the exact alignment: on CAV sets that are rotated copies of each other, training the
contrastive loss from the exact solution moved it away (same-item cross-layer cosine down to
0.85 at temperature 0.1, 0.45 at 0.05). So the maps maximise the pull term alone, the summed
cosine between each CAV and its counterparts at the other layers (the same run on the same data):
generalised orthogonal Procrustes, solved in closed form by aligning every layer to the running
consensus until it stops changing. The contrastive (supervised InfoNCE) loss over ordered layer
pairs (l, m),

    L = mean_{l != m} mean_i  - mean_{j: y_j = y_i} log softmax_j( <e_i^l, e_j^m> / tau ),

with `e^l = normalize(W_l v^l)`, is reported as the alignment criterion, with the cross-layer
retrieval accuracy (is the nearest CAV at another layer the same concept?).

Fusion. The global CAV of one concept is `g = sum_l a_l e^l` with attention weights
`a = softmax_l(<e^l, mean_m e^m> / tau_a)`: the layers' consensus is the query, so a layer whose
aligned CAV disagrees with the rest weighs less. Decoded at layer l, `normalize(W_l^T g)` is
the global CAV in that layer's activation space.

TGCAV. Each run's concept CAVs (one per layer) give one global CAV; its TCAV score at layer l
is the fraction of class inputs whose target gradient at l has a positive dot product with the
decoded global CAV, and its global score is the mean over layers. The random concepts (random
set i+1 against random set i, as in `probes.tcav`) go through the same maps and fusion, and a
two-sided t-test compares the concept's global scores with theirs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from interp import readout
from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.manifest import make_manifest
from interp.models import model_name
from interp.readout import as_hook_manager
from interp.reports import html_table, write_report
from probes.cav import Target, resolve_target, target_gradients, train_cav
from probes.tcav import builtin_random_texts, two_sided_ttest

Inputs = Sequence[str] | torch.Tensor


def _unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def _procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The orthogonal `Q (r, r)` minimising `||source Q^T - target||` for `(n, r)` coordinates."""
    u, _, vt = torch.linalg.svd(source.T @ target)
    return (u @ vt).T


def contrastive_loss(emb: torch.Tensor, labels: Sequence[Any], temperature: float = 0.1) -> float:
    """Supervised InfoNCE across layers for unit embeddings `emb` `(L, n_items, r)` and `labels` `(n_items,)`.

    For each ordered pair of layers l != m and each anchor i at l, the items at m with i's label
    are positives and the rest negatives; the loss is averaged over anchors and pairs.
    """
    y = np.asarray(labels)
    same = torch.as_tensor(y[:, None] == y[None, :], dtype=emb.dtype)
    logp = torch.log_softmax(torch.einsum("lir,mjr->lmij", emb, emb) / temperature, dim=-1)
    per_anchor = -(logp * same).sum(-1) / same.sum(-1)  # (L, L, n_items)
    return float(per_anchor.mean(-1)[~torch.eye(len(emb), dtype=torch.bool)].mean())


def alignment_scores(emb: torch.Tensor, labels: Sequence[Any], temperature: float = 0.1) -> dict[str, float]:
    """How well unit embeddings `(L, n_items, r)` agree across layers.

    `same_item_cosine`: mean cosine of an item with itself at another layer; `same_concept_cosine`
    and `other_concept_cosine`: of item pairs with the same / a different label; `retrieval`: the
    fraction of (anchor, other layer) pairs whose nearest item there has the anchor's label;
    `contrastive_loss`: `contrastive_loss(emb, labels, temperature)`.
    """
    y = np.asarray(labels)
    same = torch.as_tensor(y[:, None] == y[None, :])
    cos = torch.einsum("lir,mjr->lmij", emb, emb)
    off = ~torch.eye(len(emb), dtype=torch.bool)
    pairs = cos[off]  # (L(L-1), n_items, n_items)
    nearest = pairs.argmax(-1)  # (L(L-1), n_items)
    return {
        "same_item_cosine": float(torch.diagonal(pairs, dim1=-2, dim2=-1).mean()),
        "same_concept_cosine": float(pairs[:, same].mean()),
        "other_concept_cosine": float(pairs[:, ~same].mean()) if bool((~same).any()) else float("nan"),
        "retrieval": float((torch.as_tensor(y)[nearest] == torch.as_tensor(y)[None, :]).double().mean()),
        "contrastive_loss": contrastive_loss(emb, labels, temperature),
    }


class GlobalCAV(BaseEstimator):
    """Align CAVs of several layers in one shared space and fuse them into global CAVs.

    `fit(cavs, labels)`: `cavs` `{point: (n_items, d_point)}` holds the same `n_items` CAVs (one
    per concept run, in the same order) at every point; `labels` `(n_items,)` says which items
    are the same concept. Learned: `points_`, `rank_` (the shared dimension `r`), `bases_`
    `{point: (d_point, r)}`, `rotations_` `{point: (r, r)}`, `n_iter_` and `alignment_`
    (`alignment_scores` of the aligned embeddings; under `raw`, those of the CAVs as they are when
    every point has the same width, e.g. a residual stream, else None).
    """

    def __init__(self, dim: int | None = None, temperature: float = 0.1, attention_temperature: float = 0.1,
                 max_iter: int = 100, tol: float = 1e-9):
        self.dim = dim
        self.temperature = temperature
        self.attention_temperature = attention_temperature
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, cavs: Mapping[str, torch.Tensor | np.ndarray], labels: Sequence[Any]) -> "GlobalCAV":
        """Learn one orthonormal-row map per point from `cavs` `{point: (n_items, d)}` and `labels` `(n_items,)`."""
        points = list(cavs)
        if len(points) < 2:
            raise InterpError(f"GCAV fuses CAVs across layers: give at least 2 points, got {len(points)}")
        mats = {p: _unit(torch.as_tensor(cavs[p]).double()) for p in points}
        n = {m.shape[0] for m in mats.values()}
        if len(n) != 1 or any(m.ndim != 2 for m in mats.values()):
            raise InterpError("every point needs the same number of CAVs, as (n_items, d) arrays in the same order")
        n_items = n.pop()
        y = np.asarray(labels)
        if y.shape != (n_items,):
            raise InterpError(f"got {n_items} CAVs per point but labels of shape {y.shape}: give one label per CAV")
        if len(np.unique(y)) < 2:
            raise InterpError("the alignment needs at least two concepts (e.g. the concept and random concepts)")
        rank = min([self.dim or len(np.unique(y)), n_items, *(m.shape[1] for m in mats.values())])
        self.points_, self.rank_ = points, rank
        self.bases_ = {p: torch.linalg.svd(mats[p], full_matrices=False)[2][:rank].T.contiguous() for p in points}
        coords = {p: mats[p] @ self.bases_[p] for p in points}  # (n_items, r)
        rot = {p: _procrustes(coords[p], coords[points[len(points) // 2]]) for p in points}
        previous = -np.inf
        for self.n_iter_ in range(1, self.max_iter + 1):
            consensus = torch.stack([coords[p] @ rot[p].T for p in points]).mean(0)
            rot = {p: _procrustes(coords[p], consensus) for p in points}
            agreement = float(sum((coords[p] @ rot[p].T * consensus).sum() for p in points))
            if agreement - previous <= self.tol * abs(agreement):
                break
            previous = agreement
        self.rotations_ = rot
        self.alignment_ = alignment_scores(self.embed(mats).transpose(0, 1), y, self.temperature)
        widths = {m.shape[1] for m in mats.values()}
        self.alignment_["raw"] = alignment_scores(torch.stack([mats[p] for p in points]), y, self.temperature) if len(widths) == 1 else None
        return self

    def embed(self, vectors: Mapping[str, torch.Tensor | np.ndarray]) -> torch.Tensor:
        """Unit embeddings `(m, L, r)` of `vectors` `{point: (m, d_point)}` in the shared space.

        Vectors are projected on the span of the point's basis `B_l` first.
        """
        check_is_fitted(self, "rotations_")
        missing = [p for p in self.points_ if p not in vectors]
        if missing:
            raise InterpError(f"vectors lack the fitted points {missing}")
        out = []
        for p in self.points_:
            v = torch.as_tensor(vectors[p]).double().reshape(-1, self.bases_[p].shape[0])
            out.append(_unit((v @ self.bases_[p]) @ self.rotations_[p].T))
        return torch.stack(out, dim=1)

    def fuse(self, vectors: Mapping[str, torch.Tensor | np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Global CAVs `(m, r)` and attention weights `(m, L)` for one vector per point per concept."""
        emb = self.embed(vectors)  # (m, L, r)
        query = emb.mean(1, keepdim=True)
        weights = torch.softmax((emb * query).sum(-1) / self.attention_temperature, dim=1)
        return (weights.unsqueeze(-1) * emb).sum(1), weights

    def decode(self, global_vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{point: (m, d_point)}`: global CAVs `(m, r)` mapped back into each point's space, unit norm."""
        check_is_fitted(self, "rotations_")
        g = torch.as_tensor(global_vectors).double().reshape(-1, self.rank_)
        return {p: _unit(g @ self.rotations_[p] @ self.bases_[p].T).float() for p in self.points_}


# --------------------------------------------------------------------------- TGCAV
def draw_sets(pool: Inputs | str, n_sets: int, set_size: int, seed: int) -> tuple[Inputs, list[np.ndarray]]:
    """A pool (texts or a tensor; `'builtin'`: the shipped random sentences) and `n_sets` index sets of `set_size`.

    The sets are disjoint when the pool is large enough, else each is drawn on its own.
    """
    if isinstance(pool, str):
        if pool != "builtin":
            raise InterpError(f"random inputs {pool!r}: pass 'builtin' or a pool of examples (texts or a tensor)")
        pool = builtin_random_texts()
    if len(pool) < set_size:
        raise InterpError(f"the random pool has {len(pool)} examples but each random set needs {set_size}: give a larger pool")
    rng = np.random.default_rng(seed)
    if len(pool) >= n_sets * set_size:
        perm = rng.permutation(len(pool))
        return pool, [perm[i * set_size : (i + 1) * set_size] for i in range(n_sets)]
    return pool, [rng.choice(len(pool), set_size, replace=False) for _ in range(n_sets)]


def _tcav_score(vector: torch.Tensor, grad: torch.Tensor) -> float:
    """Fraction of rows of `grad` `(n, d)` with a positive dot product with `vector` `(d,)`."""
    return float(((grad @ vector.float()) > 0).float().mean())


def _summary(scores: Sequence[float]) -> dict[str, float]:
    a = np.asarray(scores, dtype=np.float64)
    return {"mean": float(a.mean()), "var": float(a.var(ddof=1)) if len(a) > 1 else 0.0}


def gcav(
    model: Any,
    concept_inputs: Inputs,
    random_inputs: Inputs | str,
    class_inputs: Inputs,
    target: Target,
    points: str | Sequence[str],
    n_runs: int = 10,
    set_size: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    C: float = 1.0,
    dim: int | None = None,
    attention_temperature: float = 0.1,
    alpha: float = 0.05,
    concept: str = "concept",
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """TCAV with a global CAV fused across `points` (GCAV/TGCAV), against random concepts.

    `model`: a transformer bridge (inputs are texts; activations and target gradients at each
    text's last real token, `interp.readout`) or any `nn.Module` (inputs are tensors `(n, ...)`,
    points are module paths). `random_inputs`: `'builtin'` or a pool from which `n_runs + 1` sets
    of `set_size` (default: as many as concept examples) are drawn. Per run i and point: a CAV of
    the concept against random set i and a random CAV (set i+1 against set i), as `probes.tcav`.
    All of them fit one `GlobalCAV`; each run's CAVs are fused and decoded back into every point.

    Returns a JSON-ready dict: `per_point` (TCAV scores per run before = the layer's own CAV and
    after = the decoded global CAV, their means and variances over runs, attention weights,
    cosine of the decoded global CAV with the layer's CAV), `cross_layer_variance` before/after
    (variance over points of a run's scores, averaged over runs), `global` (the concept's global
    scores vs the random concepts', two-sided t-test), `alignment`, `directions` (the run-averaged
    decoded global CAV per point, unit) and `manifest`. With `out_dir`, writes `results.json`,
    `directions.safetensors` and `report.html` there (`write_gcav`).
    """
    if n_runs < 2:
        raise InterpError(f"n_runs={n_runs}: the t-test needs at least 2 runs (10 or more is usual)")
    if len(concept_inputs) < 4:
        raise InterpError(f"{len(concept_inputs)} concept examples are too few to train and test a CAV: give at least 4 (20+ is better)")
    if len(class_inputs) == 0:
        raise InterpError("the class inputs are empty: give the inputs whose target the concept should move")
    hm = as_hook_manager(model)
    names = hm.resolve(points)
    if len(names) < 2:
        raise InterpError(f"GCAV fuses CAVs across layers: give at least 2 points, got {names}")
    resolve_target(hm.model, target, hm.is_bridge)  # a bad target fails before any forward
    pool, sets = draw_sets(random_inputs, n_runs + 1, set_size or len(concept_inputs), seed)
    used = np.unique(np.concatenate(sets))  # each pool example is read once, however many sets hold it
    where = np.searchsorted(used, np.arange(len(pool)))
    subset = pool[torch.as_tensor(used)] if isinstance(pool, torch.Tensor) else [pool[int(i)] for i in used]
    concept_acts = readout.read(hm, concept_inputs, names, batch_size=batch_size, progress=progress, desc="concept acts")
    pool_acts = readout.read(hm, subset, names, batch_size=batch_size, progress=progress, desc="random acts")
    random_acts = [{name: pool_acts[name][torch.as_tensor(where[s])] for name in names} for s in sets]
    grads = target_gradients(hm, class_inputs, names, target, batch_size=batch_size, progress=progress)

    cavs: dict[str, torch.Tensor] = {}
    accuracy: dict[str, list[float]] = {}
    for name in names:
        runs = [train_cav(concept_acts[name], random_acts[i][name], C=C, seed=seed + i, point=name) for i in range(n_runs)]
        rand = [train_cav(random_acts[i + 1][name], random_acts[i][name], C=C, seed=seed + i, point=name) for i in range(n_runs)]
        cavs[name] = torch.stack([c.vector for c in runs + rand])  # (2 * n_runs, d)
        accuracy[name] = [c.accuracy for c in runs]
    labels = [0] * n_runs + list(range(1, n_runs + 1))  # the concept's runs are one concept; each random CAV its own
    fuser = GlobalCAV(dim, attention_temperature=attention_temperature).fit(cavs, labels)
    global_vectors, weights = fuser.fuse(cavs)
    decoded = fuser.decode(global_vectors)  # {point: (2 * n_runs, d)}

    per_point: dict[str, dict[str, Any]] = {}
    before = np.zeros((len(names), 2 * n_runs))
    after = np.zeros_like(before)
    for k, name in enumerate(names):
        before[k] = [_tcav_score(v, grads[name]) for v in cavs[name]]
        after[k] = [_tcav_score(v, grads[name]) for v in decoded[name]]
        cos = (decoded[name][:n_runs] * cavs[name][:n_runs]).sum(1)
        per_point[name] = {
            "layer": hm.layer_of(name) if hm.is_bridge else None,
            "scores_before": before[k, :n_runs].tolist(), "scores_after": after[k, :n_runs].tolist(),
            "random_scores_before": before[k, n_runs:].tolist(), "random_scores_after": after[k, n_runs:].tolist(),
            **{f"{key}_before": v for key, v in _summary(before[k, :n_runs]).items()},
            **{f"{key}_after": v for key, v in _summary(after[k, :n_runs]).items()},
            "attention_weight": float(weights[:n_runs, k].mean()),
            "cosine_with_layer_cav": float(cos.mean()),
            "cav_accuracy_mean": float(np.mean(accuracy[name])),
        }
    concept_global = after[:, :n_runs].mean(0)
    random_global = after[:, n_runs:].mean(0)
    p = two_sided_ttest(concept_global, random_global)
    mean_direction = {name: torch.nn.functional.normalize(decoded[name][:n_runs].mean(0), dim=0) for name in names}
    result = {
        "method": "GCAV (He et al., 2025): CAVs of every point aligned by orthogonal maps, fused by attention; TGCAV scores",
        "model": model_name(hm.model), "concept": concept,
        "target": target if isinstance(target, (str, int)) else getattr(target, "__name__", "callable"),
        "points": names, "n_runs": n_runs, "n_class_inputs": len(class_inputs),
        "per_point": per_point,
        "cross_layer_variance_before": float(before[:, :n_runs].var(0, ddof=1).mean()),
        "cross_layer_variance_after": float(after[:, :n_runs].var(0, ddof=1).mean()),
        "run_variance_before": float(np.mean([per_point[n]["var_before"] for n in names])),
        "run_variance_after": float(np.mean([per_point[n]["var_after"] for n in names])),
        "global": {
            "scores": concept_global.tolist(), "random_scores": random_global.tolist(),
            "mean": float(concept_global.mean()), "std": float(concept_global.std(ddof=1)),
            "random_mean": float(random_global.mean()), "random_std": float(random_global.std(ddof=1)),
            "p_value": p, "alpha": alpha, "significant": bool(p < alpha),
            "test": "two-sided t-test (scipy.stats.ttest_ind): the concept's global scores vs random concepts' global scores",
        },
        "alignment": {**fuser.alignment_, "shared_dim": fuser.rank_, "iterations": fuser.n_iter_},
        "directions": {name: v.tolist() for name, v in mean_direction.items()},
        "manifest": make_manifest(model_name(hm.model), {name: cavs[name].shape[1] for name in names},
                                  readout.texts_fingerprint(list(concept_inputs)) if not isinstance(concept_inputs, torch.Tensor) else None),
    }
    if out_dir is not None:
        write_gcav(result, out_dir)
    return result


def gcav_figure(result: Mapping[str, Any]) -> go.Figure:
    """Per-point TCAV score (mean over runs, std bars) of the layer CAVs and of the decoded global CAV."""
    pts = result["points"]
    s = [result["per_point"][p] for p in pts]
    fig = go.Figure()
    for when, color in (("before", "#a6c4de"), ("after", "#1f77b4")):
        fig.add_trace(go.Bar(name="layer CAV" if when == "before" else "global CAV (decoded)", x=pts,
                             y=[v[f"mean_{when}"] for v in s], marker_color=color,
                             error_y=dict(type="data", array=[v[f"var_{when}"] ** 0.5 for v in s])))
    g = result["global"]
    fig.add_hline(y=g["mean"], line_color="#1f77b4", annotation_text=f"global {g['mean']:.2f} (p={g['p_value']:.2g})")
    fig.add_hline(y=g["random_mean"], line_dash="dot", line_color="gray", annotation_text="random global")
    fig.update_layout(barmode="group", yaxis=dict(range=[0, 1.1], title="TCAV score"), xaxis_title="hook point",
                      title=f"GCAV of '{result['concept']}' for target {result['target']} ({result['n_runs']} runs)")
    return fig


def write_gcav(result: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write `results.json` (all but the directions), `directions.safetensors` (the decoded global CAV
    per point, `(d_point,)`) and `report.html`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {key: v for key, v in result.items() if key != "directions"})
    write_safetensors(out / "directions.safetensors",
                      {p: torch.tensor(v, dtype=torch.float32) for p, v in result["directions"].items()},
                      metadata={"format": "interp.gcav_directions", "model": str(result["model"]), "concept": result["concept"]})
    rows = [{"point": p, "TCAV before": v["mean_before"], "var before": v["var_before"], "TCAV after": v["mean_after"],
             "var after": v["var_after"], "attention": v["attention_weight"], "cos(global, layer CAV)": v["cosine_with_layer_cav"],
             "CAV accuracy": v["cav_accuracy_mean"]} for p, v in result["per_point"].items()]
    g = result["global"]
    intro = (
        f"Concept '{result['concept']}', target {result['target']}, {result['n_class_inputs']} class inputs, {result['n_runs']} runs. "
        f"Cross-layer variance of TCAV scores: {result['cross_layer_variance_before']:.4g} with each layer's own CAV, "
        f"{result['cross_layer_variance_after']:.4g} with the global CAV. Global TCAV score {g['mean']:.3f} "
        f"(random concepts {g['random_mean']:.3f}), two-sided t-test p = {g['p_value']:.3g}."
    )
    write_report(out / "report.html", f"GCAV: {result['concept']}", figures=[gcav_figure(result)],
                 sections=[html_table(rows)], intro=intro)
    return out

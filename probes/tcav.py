"""TCAV (Kim et al., 2018): does a concept raise a target, tested against random concepts.

For each point, `n_runs` CAVs are trained (the concept against a different random set each run)
and `n_runs` random-vs-random CAVs (random set i+1 against random set i, so the baseline varies the
positive set as well and spans many random concepts). The TCAV score of a
CAV is the fraction of class inputs whose directional derivative of the target along it is
positive. A two-sided t-test compares the concept's scores with the random ones; p-values are
corrected across points (Bonferroni by default, or Holm).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from scipy import stats

from interp import readout
from interp.atomic import write_json
from interp.data import builtin_dataset_path
from interp.errors import InterpError
from interp.reports import html_table, write_report
from interp.models import model_name
from interp.readout import as_hook_manager
from probes.cav import Target, resolve_target, target_gradients, train_cav

Inputs = Sequence[str] | torch.Tensor
CORRECTIONS = ("bonferroni", "holm")


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-blank lines of a text file, one example each."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def builtin_random_texts() -> list[str]:
    """The shipped pool of ~500 varied neutral sentences used as random counterexamples."""
    return read_lines(builtin_dataset_path("concepts/random.txt"))


def correct_pvalues(p_values: Sequence[float], method: str = "bonferroni") -> list[float]:
    """Family-wise error correction across tests: `bonferroni` (p * m) or `holm` (step-down)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if method == "bonferroni":
        return np.minimum(1.0, p * m).tolist()
    if method != "holm":
        raise InterpError(f"unknown correction {method!r}: use {' or '.join(CORRECTIONS)}")
    order = np.argsort(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(1.0, adjusted)
    return out.tolist()


def two_sided_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """p-value of scipy's two-sample t-test; equal constant samples give 1, different ones 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    with warnings.catch_warnings():  # nearly constant samples warn about precision; the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b).pvalue)


def _subset(inputs: Inputs, idx: Sequence[int]) -> Inputs:
    return inputs[torch.as_tensor(list(idx))] if isinstance(inputs, torch.Tensor) else [inputs[i] for i in idx]


def _random_sets(random_inputs: Any, n_sets: int, set_size: int, seed: int) -> tuple[Inputs, list[list[int]]]:
    """(pool, index sets): `n_sets` random sets of `set_size` drawn from a pool, or the sets given."""
    if isinstance(random_inputs, str):
        if random_inputs != "builtin":
            raise InterpError(f"random inputs {random_inputs!r}: pass 'builtin', a pool of examples, or a list of sets")
        random_inputs = builtin_random_texts()
    is_pool = isinstance(random_inputs, torch.Tensor) or (len(random_inputs) > 0 and isinstance(random_inputs[0], str))
    if is_pool:
        pool = random_inputs
        if len(pool) < set_size:
            raise InterpError(f"the random pool has {len(pool)} examples but each random set needs {set_size}: give a larger pool")
        rng = np.random.default_rng(seed)
        if len(pool) >= n_sets * set_size:  # disjoint sets when the pool allows
            perm = rng.permutation(len(pool))
            return pool, [perm[i * set_size : (i + 1) * set_size].tolist() for i in range(n_sets)]
        return pool, [rng.choice(len(pool), set_size, replace=False).tolist() for _ in range(n_sets)]
    sets = list(random_inputs)
    if len(sets) < n_sets:
        raise InterpError(f"{len(sets)} random sets given but n_runs={n_sets - 1} needs {n_sets}: give more sets or lower n_runs")
    sets = sets[:n_sets]
    if all(isinstance(s, torch.Tensor) for s in sets):
        pool = torch.cat([torch.as_tensor(s) for s in sets])
    else:
        pool = [x for s in sets for x in s]
    bounds = np.cumsum([0] + [len(s) for s in sets])
    return pool, [list(range(bounds[i], bounds[i + 1])) for i in range(n_sets)]


@dataclass
class TCAVResult:
    """TCAV scores per point: `stats[point]` holds `scores` (one per concept CAV), `random_scores`
    (one per random-vs-random CAV), `mean`, `std`, `random_mean`, `random_std`, `p_value`,
    `p_value_corrected`, `significant` and the CAVs' held-out accuracies."""

    model: str
    concept: str
    target: str | int
    points: list[str]
    n_runs: int
    correction: str
    alpha: float
    n_class_inputs: int
    stats: dict[str, dict[str, Any]]

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per point, for tables."""
        return [{
            "point": p, "TCAV mean": s["mean"], "std": s["std"], "random mean": s["random_mean"],
            "p": s["p_value"], f"p ({self.correction})": s["p_value_corrected"],
            "significant": "yes" if s["significant"] else "no", "CAV accuracy": s["cav_accuracy_mean"],
        } for p, s in self.stats.items()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "concept": self.concept, "target": self.target, "n_runs": self.n_runs,
            "n_class_inputs": self.n_class_inputs, "test": "two-sided t-test (scipy.stats.ttest_ind), concept vs random-vs-random scores",
            "correction": self.correction, "alpha": self.alpha, "points": self.stats,
        }

    def figure(self) -> go.Figure:
        """Mean TCAV score per point (bars, std error bars), the random baseline beside it, * where significant."""
        fig = go.Figure()
        s = [self.stats[p] for p in self.points]
        fig.add_trace(go.Bar(name=self.concept, x=self.points, y=[v["mean"] for v in s],
                             error_y=dict(type="data", array=[v["std"] for v in s]),
                             marker_color=["#1f77b4" if v["significant"] else "#a6c4de" for v in s]))
        fig.add_trace(go.Bar(name="random", x=self.points, y=[v["random_mean"] for v in s],
                             error_y=dict(type="data", array=[v["random_std"] for v in s]), marker_color="#999999"))
        for p, v in zip(self.points, s):
            if v["significant"]:
                fig.add_annotation(x=p, y=min(1.1, v["mean"] + v["std"] + 0.05), text="*", showarrow=False, font=dict(size=20))
        fig.add_hline(y=0.5, line_dash="dot", line_color="gray")
        fig.update_layout(
            barmode="group", yaxis=dict(range=[0, 1.15], title="TCAV score"), xaxis_title="hook point",
            title=f"TCAV of '{self.concept}' for target {self.target} ({self.n_runs} runs; * = significant at "
                  f"{self.alpha} after {self.correction} correction)",
        )
        return fig

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write `results.json` and `report.html` into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", self.to_dict())
        intro = (
            f"Concept '{self.concept}', target {self.target}, {self.n_class_inputs} class inputs, {self.n_runs} CAVs per point "
            "against different random sets, compared with as many random-vs-random CAVs by a two-sided t-test; "
            f"p-values are {self.correction}-corrected across {len(self.points)} points. Error bars: one standard deviation over runs."
        )
        write_report(out / "report.html", f"TCAV: {self.concept}", figures=[self.figure()],
                     sections=[html_table(self.rows())], intro=intro)
        return out


def tcav(
    model: Any,
    concept_inputs: Inputs,
    random_inputs: Any,
    class_inputs: Inputs,
    target: Target,
    points: str | Sequence[str],
    n_runs: int = 10,
    set_size: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    C: float = 1.0,
    correction: str = "bonferroni",
    alpha: float = 0.05,
    concept: str = "concept",
    progress: bool = True,
) -> TCAVResult:
    """TCAV of one concept for one target at each point.

    `model`: a transformer bridge (inputs are texts, points are hook names; activations and
    gradients at each text's last real token) or any `nn.Module` (inputs are tensors `(n, ...)`,
    points are module paths, activations flattened). `random_inputs`: `'builtin'` (the shipped
    neutral sentences), a pool of examples (texts or a tensor) from which `n_runs + 1` random sets
    of `set_size` (default: as many as concept examples) are drawn, or a list of at least
    `n_runs + 1` sets. `target`: a single-token string, an output index, or `f(output) -> (n,)`.
    """
    if correction not in CORRECTIONS:
        raise InterpError(f"unknown correction {correction!r}: use {' or '.join(CORRECTIONS)}")
    if n_runs < 2:
        raise InterpError(f"n_runs={n_runs}: the t-test needs at least 2 runs (10 or more is usual)")
    for label, group in (("concept", concept_inputs), ("class", class_inputs)):
        if len(group) == 0:
            raise InterpError(f"the {label} inputs are empty: give at least a few examples")
    if len(concept_inputs) < 4:
        raise InterpError(f"{len(concept_inputs)} concept examples are too few to train and test a CAV: give at least 4 (20+ is better)")
    hm = as_hook_manager(model)
    names = hm.resolve(points)
    resolve_target(hm.model, target, hm.is_bridge)  # a multi-token target fails here, before any forward
    size = set_size or len(concept_inputs)
    pool, sets = _random_sets(random_inputs, n_runs + 1, size, seed)
    used = sorted({i for s in sets for i in s})
    where = {i: k for k, i in enumerate(used)}
    concept_acts = readout.read(hm, concept_inputs, names, batch_size=batch_size, progress=progress, desc="concept acts")
    random_acts = readout.read(hm, _subset(pool, used), names, batch_size=batch_size, progress=progress, desc="random acts")
    grads = target_gradients(hm, class_inputs, names, target, batch_size=batch_size, progress=progress)

    def score(cav_vector: torch.Tensor, grad: torch.Tensor) -> float:
        return float(((grad @ cav_vector) > 0).float().mean())

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        acts = random_acts[name]
        rand = [acts[[where[i] for i in s]] for s in sets]
        cavs = [train_cav(concept_acts[name], rand[i], C=C, seed=seed + i, point=name, concept=concept) for i in range(n_runs)]
        # The positive set changes every run too, so the baseline spans random concepts, not one random set's quirks.
        rcavs = [train_cav(rand[i + 1], rand[i], C=C, seed=seed + i, point=name, concept=f"random{i + 1}") for i in range(n_runs)]
        scores = [score(c.vector, grads[name]) for c in cavs]
        rscores = [score(c.vector, grads[name]) for c in rcavs]
        results[name] = {
            "layer": hm.layer_of(name) if hm.is_bridge else None,
            "scores": scores, "random_scores": rscores,
            "mean": float(np.mean(scores)), "std": float(np.std(scores, ddof=1)),
            "random_mean": float(np.mean(rscores)), "random_std": float(np.std(rscores, ddof=1)),
            "p_value": two_sided_ttest(scores, rscores),
            "cav_accuracy": [c.accuracy for c in cavs], "cav_accuracy_mean": float(np.mean([c.accuracy for c in cavs])),
            "random_cav_accuracy_mean": float(np.mean([c.accuracy for c in rcavs])),
        }
    corrected = correct_pvalues([results[n]["p_value"] for n in names], correction)
    for name, p in zip(names, corrected):
        results[name]["p_value_corrected"] = p
        results[name]["significant"] = bool(p < alpha)
    return TCAVResult(
        model=model_name(hm.model), concept=concept, target=target if isinstance(target, (str, int)) else getattr(target, "__name__", "callable"),
        points=names, n_runs=n_runs, correction=correction, alpha=alpha, n_class_inputs=len(class_inputs), stats=results,
    )

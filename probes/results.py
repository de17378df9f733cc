"""A probe sweep's results: numbers per point, the report, and the files they are saved to.

A sweep folder holds `results.json` (every number, the split, the control task, the manifest),
`directions.safetensors` (one unit direction per point; metadata: format, model, pool, task,
points, classes, the chosen regularisation and the manifest) and `report.html`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from safetensors import SafetensorError, safe_open

from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.manifest import check_manifest, make_manifest
from interp.reports import html_table, write_report
from probes.regularization import strength_name

DIRECTIONS_FORMAT = "interp.probe_directions"
CONTROL = "control task: one random label per input type, drawn from the label distribution (Hewitt & Liang, 2019)"
SHUFFLED = "shuffled-label baseline: labels permuted within the train and within the test split (chance by construction)"


def bootstrap(values: np.ndarray, idx: np.ndarray, metric: str, y: np.ndarray | None = None) -> np.ndarray:
    """The metric on each bootstrap resample `idx` `(B, n_test)` of the test set, `(B,)`.

    Accuracy: `values` are 0/1 correctness `(n_test,)`. R²: `values` are predictions and `y` targets.
    """
    if metric == "accuracy":
        return values[idx].mean(1)
    yb, pb = y[idx], values[idx]
    ss_res = ((yb - pb) ** 2).sum(1)
    ss_tot = ((yb - yb.mean(1, keepdims=True)) ** 2).sum(1)
    return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)


def interval(samples: np.ndarray) -> list[float]:
    """The 95% percentile interval `[lo, hi]` of bootstrap samples."""
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


@dataclass
class SweepResult:
    """Per-point probe results of a layer sweep.

    `metrics[point]` holds `accuracy` (held-out), `control_accuracy` (the control task),
    `selectivity` (accuracy minus control accuracy), `shuffled_accuracy` (shuffled-label baseline),
    each with a 95% bootstrap interval `*_ci` (`[lo, hi]`, paired resamples of the test set), plus
    `train_accuracy`, `layer`, the regularisation strength (`C`, or `alpha` for regression) chosen
    by cross-validation on the training split, `cv_scores` (mean fold score per grid value) and
    `cv_accuracy` (that of the chosen value). For regression the accuracy keys hold R².
    `directions[point]` is the probe's unit direction in activation space, `(d,)` (or
    `(n_classes, d)` for multiclass). `split` holds the train/test indices; `control` the control
    task's types and labels per example.
    """

    model: str
    points: list[str]
    pool: str | int
    task: str
    metric: str
    classes: list[Any] | None
    n_train: int
    n_test: int
    n_bootstrap: int
    seed: int
    metrics: dict[str, dict[str, Any]]
    directions: dict[str, torch.Tensor] = field(repr=False)
    split: dict[str, list[int]] = field(default_factory=dict, repr=False)
    control: dict[str, Any] = field(default_factory=dict, repr=False)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def strength(self) -> str:
        """The name of the regularisation parameter: `C` or `alpha`."""
        return strength_name(self.task)

    @property
    def best_point(self) -> str:
        """The point with the highest held-out accuracy (R²)."""
        return max(self.points, key=lambda p: self.metrics[p]["accuracy"])

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per point, for tables."""
        out = []
        for p in self.points:
            m = self.metrics[p]
            out.append({
                "point": p,
                self.metric: m["accuracy"],
                "95% CI": f"{m['accuracy_ci'][0]:.3f}-{m['accuracy_ci'][1]:.3f}",
                self.strength: m[self.strength],
                "control task": m["control_accuracy"],
                "selectivity": m["selectivity"],
                "selectivity 95% CI": f"{m['selectivity_ci'][0]:.3f}-{m['selectivity_ci'][1]:.3f}",
                "shuffled-label baseline": m["shuffled_accuracy"],
                "train": m["train_accuracy"],
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything but the directions, JSON-ready."""
        return {
            "model": self.model, "pool": self.pool, "task": self.task, "metric": self.metric,
            "classes": self.classes, "n_train": self.n_train, "n_test": self.n_test,
            "n_bootstrap": self.n_bootstrap, "seed": self.seed, "control": CONTROL, "shuffled_baseline": SHUFFLED,
            "regularisation": f"{self.strength} chosen per point by cross-validation on the training split",
            "best_point": self.best_point, "points": {p: self.metrics[p] for p in self.points},
            "control_task": self.control, "split": self.split, "manifest": self.manifest,
        }

    def figure(self) -> go.Figure:
        """Held-out score, control-task score and the shuffled-label baseline per point, with 95% bands,
        and selectivity (score minus control)."""
        layers = [self.metrics[p]["layer"] for p in self.points]
        by_layer = None not in layers and len(set(layers)) == len(layers)
        x = layers if by_layer else self.points
        fig = go.Figure()
        traces = (("accuracy", "probe", "31,119,180", "solid"), ("control_accuracy", "control task", "214,39,40", "solid"),
                  ("selectivity", "selectivity", "44,160,44", "dot"), ("shuffled_accuracy", "shuffled-label baseline", "127,127,127", "dash"))
        for key, name, color, dash in traces:
            lo = [self.metrics[p][f"{key}_ci"][0] for p in self.points]
            hi = [self.metrics[p][f"{key}_ci"][1] for p in self.points]
            fig.add_trace(go.Scatter(
                x=list(x) + list(x)[::-1], y=hi + lo[::-1], fill="toself", fillcolor=f"rgba({color},0.15)",
                line=dict(width=0), hoverinfo="skip", showlegend=False,
            ))
            fig.add_trace(go.Scatter(
                x=x, y=[self.metrics[p][key] for p in self.points], mode="lines+markers", name=name,
                line=dict(color=f"rgb({color})", dash=dash),
                customdata=[[p, self.metrics[p][self.strength]] for p in self.points],
                hovertemplate=f"%{{customdata[0]}} ({self.strength}=%{{customdata[1]:g}}): %{{y:.3f}}<extra>{name}</extra>",
            ))
        label = "held-out accuracy" if self.metric == "accuracy" else "held-out R²"
        fig.update_layout(
            title=f"Linear probe sweep ({self.model}, pool={self.pool}), 95% bootstrap bands",
            xaxis_title="layer" if by_layer else "hook point", yaxis_title=label, hovermode="x unified",
        )
        return fig

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write `results.json`, `directions.safetensors` and `report.html` into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", self.to_dict())
        write_safetensors(
            out / "directions.safetensors",
            {p: self.directions[p].float() for p in self.points},
            metadata={
                "format": DIRECTIONS_FORMAT, "model": self.model, "pool": json.dumps(self.pool),
                "task": self.task, "points": json.dumps(self.points), "classes": json.dumps(self.classes),
                "space": "original activation space, unit norm, pointing toward the positive class",
                "strengths": json.dumps({p: self.metrics[p][self.strength] for p in self.points}),
                "manifest": json.dumps(self.manifest),
            },
        )
        best = self.metrics[self.best_point]
        intro = (
            f"{len(self.points)} hook points, {self.n_train} train / {self.n_test} test examples, pool={self.pool}. "
            f"Best: {self.best_point} with {self.metric} {best['accuracy']:.3f} (control task {best['control_accuracy']:.3f}, "
            f"selectivity {best['selectivity']:.3f}, shuffled-label baseline {best['shuffled_accuracy']:.3f}). "
            f"The control task gives each input type ({self.control.get('kind', 'types')}: {self.control.get('n_types', '?')} types, "
            f"{self.control.get('n_types_both_sides', '?')} with members in both splits) one random label drawn from the label "
            "distribution; a probe can only score above chance on it by memorising types, so selectivity = probe minus control "
            f"is what the representation adds. {self.strength} is chosen per point by cross-validation on the training split. "
            f"Intervals are 95% percentile bootstrap intervals over {self.n_bootstrap} resamples of the test set."
        )
        write_report(out / "report.html", "Linear probe sweep", figures=[self.figure()],
                     sections=[html_table(self.rows())], intro=intro)
        return out


def load_directions(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read `directions.safetensors`: `({point: (d,)}, metadata with JSON fields decoded)`.

    `meta["manifest"]` is always present; for files written before manifests were recorded it is
    rebuilt from the model name and the tensors' widths (data fingerprint unknown).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "directions.safetensors"
    if not path.is_file():
        raise InterpError(f"{path} does not exist: give the folder or directions.safetensors a probe sweep wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise InterpError(f"{path} is corrupt ({type(exc).__name__}): rerun `interp probe`") from exc
    if raw.get("format") != DIRECTIONS_FORMAT:
        raise InterpError(f"{path} is not a probe directions file (no format={DIRECTIONS_FORMAT} in its metadata)")
    try:
        meta = {k: (json.loads(v) if k in ("pool", "points", "classes", "strengths", "manifest") else v) for k, v in raw.items()}
    except json.JSONDecodeError:
        raise InterpError(f"{path} has unreadable metadata: rerun `interp probe`") from None
    if not isinstance(meta.get("manifest"), dict):
        points = meta.get("points") or list(tensors)
        meta["manifest"] = make_manifest(meta.get("model"), {p: int(tensors[p].shape[-1]) for p in points if p in tensors})
    return tensors, meta


def probe_direction(path: str | os.PathLike, point: str, model: str, width: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The unit direction `(width,)` at `point` of a saved probe, checked against `model`.

    The file's manifest goes through `interp.manifest.check_manifest`: the model must match
    (unless either is unknown), `point` must be one of its points, with width `width`.
    Returns `(direction, metadata)`.
    """
    tensors, meta = load_directions(path)
    want = make_manifest(model, {point: width})
    check_manifest(meta["manifest"], want, f"the probe in {path}", "rerun `interp probe` on this model, or give one of its points")
    direction = tensors[point]
    if direction.ndim != 1:
        raise InterpError(f"the probe in {path} is multiclass ({direction.shape[0]} directions at {point}): steer with a binary probe")
    return direction.float(), meta

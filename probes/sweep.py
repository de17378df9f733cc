"""Layer sweeps: harvest every hook point in one pass, probe each, and compare with a control task.

Selectivity (Hewitt & Liang, 2019) is the probe's held-out accuracy minus the accuracy of the
same probe trained on a control task, here the same examples with their labels shuffled. A
point whose probe beats its control by a wide margin holds the property; a probe that scores
well on both is fitting noise.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from safetensors import safe_open
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.models import model_device, model_name
from interp.reports import html_table, write_report
from probes.linear import LinearProbe, Pool, pool_activations

DIRECTIONS_FORMAT = "interp.probe_directions"


# ---------------------------------------------------------------------------- harvesting
def as_hook_manager(model_or_hm: Any) -> HookManager:
    """A `HookManager` for a model (bridge or plain module), or the manager itself."""
    return model_or_hm if isinstance(model_or_hm, HookManager) else HookManager(model_or_hm)


def tokenize_texts(model: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize each text (with the model's BOS convention) and right-pad.

    Returns `tokens` `(n, max_len)` and `lengths` `(n,)` (real tokens per text). Right padding
    leaves the real positions of a causal model untouched, so no attention mask is needed.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InterpError("texts must be a list of strings")
    if not texts:
        raise InterpError("no texts given: pass at least one example")
    rows = [model.to_tokens(t)[0].cpu() for t in texts]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens, lengths


def tensor_inputs(inputs: Any) -> torch.Tensor:
    """Inputs of a plain module as a tensor `(n, ...)`; texts are refused (no tokenizer)."""
    if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
        raise InterpError("texts need a transformer with a tokenizer; for a plain torch module pass a tensor (n, ...)")
    return torch.as_tensor(inputs)


def bos_offset(model: Any) -> int:
    """1 when the model prepends a BOS token to every text (pooling leaves it out), else 0."""
    return int(bool(getattr(model.cfg, "default_prepend_bos", True)))


def harvest(
    model_or_hm: Any,
    inputs: Sequence[str] | torch.Tensor,
    points: str | Sequence[str],
    pool: Pool = "last",
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "harvest",
) -> dict[str, torch.Tensor]:
    """One forward per batch capturing every point; returns `{point: (n, d)}` float32 on CPU.

    On a transformer bridge, `inputs` are texts: right-padded, batched by length, and each
    point's `(batch, pos, d)` activation is pooled per text by `pool` over its real tokens
    (`mean`/`max` leave the BOS token out). On a plain module, `inputs` is a tensor `(n, ...)`
    and each point's output is flattened to `(n, d)`.
    """
    hm = as_hook_manager(model_or_hm)
    names = hm.resolve(points)
    device = model_device(hm.model)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    if hm.is_bridge:
        tokens, lengths = tokenize_texts(hm.model, inputs)
        order = torch.argsort(lengths, stable=True)  # similar lengths together: less padding
        start = bos_offset(hm.model)
        for lo in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[lo : lo + batch_size]
            lens = lengths[idx]
            cap = hm.collect(tokens[idx, : int(lens.max())].to(device), names)
            for name in names:
                out[name].append(pool_activations(cap[name].float(), lens, pool, start))
        inverse = torch.argsort(order)
        return {name: torch.cat(parts)[inverse] for name, parts in out.items()}
    inputs = tensor_inputs(inputs)
    for lo in tqdm(range(0, len(inputs), batch_size), desc=desc, disable=not progress, leave=False):
        batch = inputs[lo : lo + batch_size].to(device)
        cap = hm.collect(batch, names)
        for name in names:
            out[name].append(cap[name].float().reshape(len(batch), -1))
    return {name: torch.cat(parts) for name, parts in out.items()}


# ------------------------------------------------------------------------------- checks
def infer_task(labels: Sequence[Any]) -> str:
    """`regression` when any label is a non-integer number, else `classification`."""
    arr = np.asarray(labels)
    if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
        return "regression"
    return "classification"


def check_split(labels: Sequence[Any], n_examples: int, task: str, test_size: float) -> None:
    """Raise InterpError unless `labels` can be split into train/test sets for `task`."""
    if task not in ("classification", "regression"):
        raise InterpError(f"unknown task {task!r}: use classification or regression")
    if len(labels) != n_examples:
        raise InterpError(f"got {n_examples} examples but {len(labels)} labels: give exactly one label per example")
    if not 0.0 < test_size < 1.0:
        raise InterpError(f"test size {test_size} must lie strictly between 0 and 1, e.g. 0.25")
    n_test = math.ceil(test_size * n_examples)
    n_train = n_examples - n_test
    if task == "regression":
        if n_test < 2 or n_train < 2:
            raise InterpError(f"{n_examples} examples leave {n_train} to train and {n_test} to test: give at least 2 of each (more examples)")
        return
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    if len(classes) < 2:
        raise InterpError(f"every label is {classes[0]!r}: a probe needs at least two classes in the label column")
    if counts.min() < 2:
        raise InterpError(f"class {classes[counts.argmin()]!r} has only {counts.min()} example: give at least 2 examples of every class")
    if n_test < len(classes) or n_train < len(classes):
        raise InterpError(
            f"{n_examples} examples split into {n_train} train / {n_test} test cannot hold all {len(classes)} classes in both: "
            "give more examples or change --test-size"
        )


# ---------------------------------------------------------------------------- the sweep
def _bootstrap(values: np.ndarray, idx: np.ndarray, metric: str, y: np.ndarray | None = None) -> np.ndarray:
    """The metric on each bootstrap resample `idx` `(B, n_test)`.

    Accuracy: `values` are 0/1 correctness `(n_test,)`. R^2: `values` are predictions and `y` targets.
    """
    if metric == "accuracy":
        return values[idx].mean(1)
    yb, pb = y[idx], values[idx]
    ss_res = ((yb - pb) ** 2).sum(1)
    ss_tot = ((yb - yb.mean(1, keepdims=True)) ** 2).sum(1)
    return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)


def _ci(samples: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


@dataclass
class SweepResult:
    """Per-point probe results of a layer sweep.

    `metrics[point]` holds `accuracy`, `control_accuracy`, `selectivity` (accuracy minus control)
    and their 95% bootstrap intervals `*_ci` (`[lo, hi]`), plus `train_accuracy` and `layer`.
    For regression the same keys hold R^2. `directions[point]` is the probe's unit direction in
    activation space, `(d,)` (or `(n_classes, d)` for multiclass).
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

    @property
    def best_point(self) -> str:
        """The point with the highest held-out accuracy (R^2)."""
        return max(self.points, key=lambda p: self.metrics[p]["accuracy"])

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per point, for tables."""
        out = []
        for p in self.points:
            m = self.metrics[p]
            out.append({
                "point": p,
                "accuracy": m["accuracy"],
                "accuracy 95% CI": f"{m['accuracy_ci'][0]:.3f}-{m['accuracy_ci'][1]:.3f}",
                "control": m["control_accuracy"],
                "selectivity": m["selectivity"],
                "selectivity 95% CI": f"{m['selectivity_ci'][0]:.3f}-{m['selectivity_ci'][1]:.3f}",
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything but the directions, JSON-ready."""
        return {
            "model": self.model, "pool": self.pool, "task": self.task, "metric": self.metric,
            "classes": self.classes, "n_train": self.n_train, "n_test": self.n_test,
            "n_bootstrap": self.n_bootstrap, "seed": self.seed, "control": "same probe trained on shuffled labels",
            "best_point": self.best_point, "points": {p: self.metrics[p] for p in self.points},
        }

    def figure(self) -> go.Figure:
        """Held-out score and control score per point, with 95% bootstrap bands."""
        layers = [self.metrics[p]["layer"] for p in self.points]
        by_layer = None not in layers and len(set(layers)) == len(layers)
        x = layers if by_layer else self.points
        fig = go.Figure()
        for key, name, color in (("accuracy", "probe", "31,119,180"), ("control_accuracy", "control (shuffled labels)", "214,39,40")):
            lo = [self.metrics[p][f"{key}_ci"][0] for p in self.points]
            hi = [self.metrics[p][f"{key}_ci"][1] for p in self.points]
            fig.add_trace(go.Scatter(
                x=list(x) + list(x)[::-1], y=hi + lo[::-1], fill="toself", fillcolor=f"rgba({color},0.18)",
                line=dict(width=0), hoverinfo="skip", showlegend=False,
            ))
            fig.add_trace(go.Scatter(
                x=x, y=[self.metrics[p][key] for p in self.points], mode="lines+markers", name=name,
                line=dict(color=f"rgb({color})"), customdata=self.points, hovertemplate="%{customdata}: %{y:.3f}<extra></extra>",
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
            },
        )
        best = self.metrics[self.best_point]
        intro = (
            f"{len(self.points)} hook points, {self.n_train} train / {self.n_test} test examples, pool={self.pool}. "
            f"Best: {self.best_point} with {self.metric} {best['accuracy']:.3f} against {best['control_accuracy']:.3f} "
            "for the control task (the same probe trained on shuffled labels). Selectivity = probe minus control; "
            f"intervals are 95% percentile bootstrap intervals over {self.n_bootstrap} resamples of the test set."
        )
        write_report(out / "report.html", "Linear probe sweep", figures=[self.figure()],
                     sections=[html_table(self.rows())], intro=intro)
        return out


def load_directions(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read `directions.safetensors`: `({point: (d,)}, metadata with JSON fields decoded)`."""
    path = Path(path)
    if not path.exists():
        raise InterpError(f"{path} does not exist: give the directions.safetensors a probe sweep wrote")
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if raw.get("format") != DIRECTIONS_FORMAT:
        raise InterpError(f"{path} is not a probe directions file (no format={DIRECTIONS_FORMAT} in its metadata)")
    meta = {k: (json.loads(v) if k in ("pool", "points", "classes") else v) for k, v in raw.items()}
    return tensors, meta


def probe_activations(
    features: dict[str, torch.Tensor | np.ndarray],
    labels: Sequence[Any],
    task: str | None = None,
    test_size: float = 0.25,
    n_bootstrap: int = 1000,
    seed: int = 0,
    C: float = 1.0,
    alpha: float = 1.0,
    pool: Pool = "last",
    model: str = "unknown",
    layers: dict[str, int | None] | None = None,
) -> SweepResult:
    """Probe each point's pooled features `{point: (n, d)}` against `labels` `(n,)`.

    One stratified train/test split shared by every point; the control task shuffles the labels
    once, within the train and within the test side, and trains the same probe on them; bootstrap intervals resample the test
    examples, paired across probe and control so the selectivity interval is honest.
    """
    if not features:
        raise InterpError("no hook points to probe")
    points = list(features)
    n = len(next(iter(features.values())))
    task = task or infer_task(labels)
    check_split(labels, n, task, test_size)
    y = np.asarray(labels) if task == "classification" else np.asarray(labels, dtype=np.float64)
    rng = np.random.default_rng(seed)
    train, test = train_test_split(
        np.arange(n), test_size=test_size, random_state=seed, stratify=y if task == "classification" else None
    )
    # Shuffle within each side of the split: the control keeps the task's class balance (so the
    # same chance level) and its training side always holds every class.
    y_control = y.copy()
    y_control[train] = rng.permutation(y[train])
    y_control[test] = rng.permutation(y[test])
    boot = rng.integers(0, len(test), size=(n_bootstrap, len(test)))
    metric = "accuracy" if task == "classification" else "r2"

    def evaluate(X: np.ndarray, targets: np.ndarray) -> tuple[LinearProbe, float, np.ndarray, float]:
        """(probe, test score, per-example values for the bootstrap, train score)."""
        probe = LinearProbe(task=task, C=C, alpha=alpha, random_state=seed).fit(X[train], targets[train])
        pred = probe.predict(X[test])
        if metric == "accuracy":
            values = (pred == targets[test]).astype(np.float64)
            score = float(values.mean())
        else:
            values, score = pred, float(r2_score(targets[test], pred))
        return probe, score, values, probe.score(X[train], targets[train])

    metrics: dict[str, dict[str, Any]] = {}
    directions: dict[str, torch.Tensor] = {}
    for p in points:
        X = np.asarray(torch.as_tensor(features[p]).float().numpy(), dtype=np.float64)
        probe, acc, vals, train_acc = evaluate(X, y)
        _, control, control_vals, _ = evaluate(X, y_control)
        acc_b = _bootstrap(vals, boot, metric, y[test] if metric == "r2" else None)
        control_b = _bootstrap(control_vals, boot, metric, y_control[test] if metric == "r2" else None)
        metrics[p] = {
            "layer": (layers or {}).get(p),
            "accuracy": acc, "control_accuracy": control, "selectivity": acc - control,
            "accuracy_ci": _ci(acc_b), "control_accuracy_ci": _ci(control_b), "selectivity_ci": _ci(acc_b - control_b),
            "train_accuracy": train_acc,
        }
        directions[p] = torch.as_tensor(probe.direction_, dtype=torch.float32)
    classes = np.unique(y).tolist() if task == "classification" else None
    return SweepResult(
        model=model, points=points, pool=pool, task=task, metric=metric, classes=classes,
        n_train=len(train), n_test=len(test), n_bootstrap=n_bootstrap, seed=seed, metrics=metrics, directions=directions,
    )


def probe_layers(
    model: Any,
    texts: Sequence[str],
    labels: Sequence[Any],
    points: str | Sequence[str] = "resid_post:all",
    pool: Pool = "last",
    test_size: float = 0.25,
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    task: str | None = None,
    C: float = 1.0,
    alpha: float = 1.0,
    progress: bool = True,
) -> SweepResult:
    """Sweep linear probes over hook points of a transformer bridge in ONE harvest pass.

    `texts` `(n,)` and `labels` `(n,)`; every batch runs one forward that captures all `points`
    (stopping after the deepest), pooled per text by `pool` (`last` real token, masked `mean`/`max`,
    or an int position). Then `probe_activations` on the pooled features. Raises InterpError for
    mismatched lengths, a single class, or too few examples for the split before any forward runs.
    """
    task = task or infer_task(labels)
    check_split(labels, len(texts), task, test_size)
    hm = as_hook_manager(model)
    names = hm.resolve(points)
    feats = harvest(hm, list(texts), names, pool=pool, batch_size=batch_size, progress=progress, desc="probe harvest")
    return probe_activations(
        feats, labels, task=task, test_size=test_size, n_bootstrap=n_bootstrap, seed=seed, C=C, alpha=alpha,
        pool=pool, model=model_name(hm.model), layers={p: hm.layer_of(p) for p in names},
    )

"""Layer sweeps: read every hook point in one pass, probe each, and compare with a control task.

For each point a linear probe is trained on the training split (its regularisation strength
chosen by cross-validation inside that split, `probes.regularization`) and scored on the test
split. The same probe (same strength) is trained on the control task (`probes.control`: one
random label per input type, Hewitt & Liang 2019) and on the shuffled-label baseline.
Selectivity is held-out accuracy minus control-task accuracy: what the representation offers
beyond what a probe of this capacity could memorise.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import r2_score

from interp import readout
from interp.errors import InterpError
from interp.manifest import make_manifest
from interp.models import model_name
from interp.readout import as_hook_manager
from probes.control import (
    CLUSTER_SIZE,
    control_labels,
    lexical_types,
    shuffled_labels,
    type_split,
    types_on_both_sides,
)
from probes.linear import LinearProbe, Pool
from probes.regularization import DEFAULT_FOLDS, choose_strength, strength_name
from probes.results import SweepResult, bootstrap, interval

__all__ = ["check_split", "infer_task", "probe_activations", "probe_layers"]


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
def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy scalars unwrapped, anything but str/int/float/bool as its str()."""
    value = value.item() if isinstance(value, np.generic) else value
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _fit_score(X: np.ndarray, targets: np.ndarray, train: np.ndarray, test: np.ndarray, task: str, strength: float,
               seed: int) -> tuple[LinearProbe | None, float, np.ndarray, float]:
    """(probe, test score, per-example values for the bootstrap, train score) of one probe.

    A classification target with one class on the training side (a control task can draw that)
    is predicted as that class: no probe is fitted.
    """
    name = strength_name(task)
    if task == "classification" and len(np.unique(targets[train])) < 2:
        probe, pred, train_score = None, np.full(len(test), targets[train][0]), 1.0
    else:
        probe = LinearProbe(task=task, random_state=seed, **{name: strength}).fit(X[train], targets[train])
        pred, train_score = probe.predict(X[test]), probe.score(X[train], targets[train])
    if task == "classification":
        values = (pred == targets[test]).astype(np.float64)
        return probe, float(values.mean()), values, train_score
    return probe, float(r2_score(targets[test], pred)), pred, train_score


def probe_activations(
    features: dict[str, torch.Tensor | np.ndarray],
    labels: Sequence[Any],
    task: str | None = None,
    test_size: float = 0.25,
    n_bootstrap: int = 1000,
    seed: int = 0,
    C: float | None = None,
    alpha: float | None = None,
    grid: Sequence[float] | None = None,
    cv_folds: int = DEFAULT_FOLDS,
    types: Sequence[Any] | None = None,
    type_kind: str = "given",
    pool: Pool = "last",
    model: str = "unknown",
    layers: dict[str, int | None] | None = None,
    data_fingerprint: str | None = None,
) -> SweepResult:
    """Probe each point's features `{point: (n, d)}` against `labels` `(n,)`.

    `types` `(n,)` are the control task's input types (word types for token-level probes,
    `probes.control.lexical_types` for texts; None: every example its own type, which leaves the
    control at chance). One split shared by every point (`probes.control.type_split`: repeated
    types on both sides, stratified by label). Per point: the strength (`C`, or `alpha` for
    regression) is chosen by `cv_folds`-fold CV on the training split over `grid` unless given;
    the probe, the control-task probe and the shuffled-label probe share it. Bootstrap intervals
    resample the test examples, paired across the three so the selectivity interval is honest.
    """
    if not features:
        raise InterpError("no hook points to probe")
    points = list(features)
    n = len(next(iter(features.values())))
    task = task or infer_task(labels)
    check_split(labels, n, task, test_size)
    y = np.asarray(labels) if task == "classification" else np.asarray(labels, dtype=np.float64)
    types = list(range(n)) if types is None else list(types)
    if len(types) != n:
        raise InterpError(f"got {len(types)} control types for {n} examples: give one type per example")
    train, test = type_split(y, types, test_size, seed, stratify=task == "classification")
    if task == "classification" and not (set(y[train].tolist()) == set(y[test].tolist()) == set(y.tolist())):
        raise InterpError("the type-aware split could not put every class on both sides: give more examples per class")
    y_control = control_labels(types, y, task, seed)
    y_shuffled = shuffled_labels(y, train, test, seed)
    boot = np.random.default_rng(seed).integers(0, len(test), size=(n_bootstrap, len(test)))
    metric = "accuracy" if task == "classification" else "r2"
    name = strength_name(task)
    fixed = alpha if task == "regression" else C

    metrics: dict[str, dict[str, Any]] = {}
    directions: dict[str, torch.Tensor] = {}
    for p in points:
        X = np.asarray(torch.as_tensor(features[p]).float().numpy(), dtype=np.float64)
        if fixed is None:
            strength, cv_scores = choose_strength(X[train], y[train], task, grid, cv_folds, seed)
        else:
            strength, cv_scores = float(fixed), {}
        probe, acc, vals, train_acc = _fit_score(X, y, train, test, task, strength, seed)
        _, control, control_vals, _ = _fit_score(X, y_control, train, test, task, strength, seed)
        _, shuffled, shuffled_vals, _ = _fit_score(X, y_shuffled, train, test, task, strength, seed)
        acc_b, control_b, shuffled_b = (bootstrap(v, boot, metric, t[test] if metric == "r2" else None)
                                        for v, t in ((vals, y), (control_vals, y_control), (shuffled_vals, y_shuffled)))
        metrics[p] = {
            "layer": (layers or {}).get(p), name: strength, "cv_scores": cv_scores,
            "cv_accuracy": cv_scores.get(f"{strength:g}"),
            "accuracy": acc, "control_accuracy": control, "selectivity": acc - control, "shuffled_accuracy": shuffled,
            "accuracy_ci": interval(acc_b), "control_accuracy_ci": interval(control_b),
            "selectivity_ci": interval(acc_b - control_b), "shuffled_accuracy_ci": interval(shuffled_b),
            "train_accuracy": train_acc,
        }
        directions[p] = torch.as_tensor(probe.direction_, dtype=torch.float32)
    classes = np.unique(y).tolist() if task == "classification" else None
    control = {
        "kind": type_kind, "n_types": len(set(types)), "n_types_both_sides": types_on_both_sides(types, train, test),
        "types": [_plain(t) for t in types], "labels": [_plain(v) for v in y_control],
    }
    widths = {p: int(torch.as_tensor(features[p]).shape[-1]) for p in points}
    return SweepResult(
        model=model, points=points, pool=pool, task=task, metric=metric, classes=classes,
        n_train=len(train), n_test=len(test), n_bootstrap=n_bootstrap, seed=seed, metrics=metrics, directions=directions,
        split={"train": train.tolist(), "test": test.tolist()}, control=control,
        manifest=make_manifest(model, widths, data_fingerprint),
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
    C: float | None = None,
    alpha: float | None = None,
    grid: Sequence[float] | None = None,
    cv_folds: int = DEFAULT_FOLDS,
    types: Sequence[Any] | None = None,
    cluster_size: int = CLUSTER_SIZE,
    progress: bool = True,
) -> SweepResult:
    """Sweep linear probes over hook points of a transformer bridge in ONE readout pass.

    `texts` `(n,)` and `labels` `(n,)`; every batch runs one forward that captures all `points`
    (stopping after the deepest), pooled per text by `pool` (`last` token, `mean`/`max` over the
    text's tokens, or an int position; BOS never read, `interp.readout`). The control task's
    types are `types` if given, else lexical clusters of the texts (`probes.control.lexical_types`
    with `cluster_size`). Then `probe_activations`. Raises InterpError for mismatched lengths, a
    single class, or too few examples for the split before any forward runs.
    """
    task = task or infer_task(labels)
    check_split(labels, len(texts), task, test_size)
    hm = as_hook_manager(model)
    names = hm.resolve(points)
    kind = "given"
    if types is None:
        types, kind = lexical_types(texts, cluster_size, seed), f"lexical clusters of about {cluster_size} texts"
    feats = readout.read(hm, list(texts), names, pool=pool, batch_size=batch_size, progress=progress, desc="probe readout")
    return probe_activations(
        feats, labels, task=task, test_size=test_size, n_bootstrap=n_bootstrap, seed=seed, C=C, alpha=alpha, grid=grid,
        cv_folds=cv_folds, types=types, type_kind=kind, pool=pool, model=model_name(hm.model),
        layers={p: hm.layer_of(p) for p in names}, data_fingerprint=readout.texts_fingerprint(list(texts)),
    )

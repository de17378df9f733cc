"""Choosing a probe's regularisation strength by cross-validation inside the training split.

The test split is never looked at: `choose_strength` runs k-fold cross-validation on the
training examples only, over a log-spaced grid of `C` (logistic regression, smaller is stronger)
or `alpha` (ridge, larger is stronger), and returns the value with the best mean fold score
(accuracy or R²). Ties go to the stronger regularisation.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

from probes.linear import LinearProbe

DEFAULT_CS = tuple(float(10.0**k) for k in range(-4, 3))        # 1e-4 ... 1e2, strongest first
DEFAULT_ALPHAS = tuple(float(10.0**k) for k in range(4, -3, -1))  # 1e4 ... 1e-2, strongest first
DEFAULT_FOLDS = 5
FALLBACK = 1.0


def strength_name(task: str) -> str:
    """`C` for classification probes, `alpha` for regression probes."""
    return "alpha" if task == "regression" else "C"


def choose_strength(
    X: np.ndarray,
    y: np.ndarray,
    task: str = "classification",
    grid: Sequence[float] | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> tuple[float, dict[str, float]]:
    """The regularisation strength for `X` `(n_train, d)`, `y` `(n_train,)`, and the CV score of each value.

    Folds: `StratifiedKFold(folds, shuffle=True, random_state=seed)` for classification (fewer
    folds when the rarest class has fewer than `folds` examples), `KFold` likewise for
    regression; the estimator is `LinearProbe` (standardise, then logistic or ridge regression).
    Grid order decides ties (`sklearn.model_selection.GridSearchCV` keeps the first best), so
    the default grids run from strongest to weakest. With fewer than 2 examples per class for
    two folds, no CV is possible: returns `FALLBACK` (1.0) and an empty score table.
    """
    name = strength_name(task)
    grid = list(grid if grid is not None else (DEFAULT_ALPHAS if task == "regression" else DEFAULT_CS))
    if not grid:
        raise ValueError("the regularisation grid is empty")
    if task == "regression":
        n_splits = min(folds, len(y))
        cv = KFold(n_splits, shuffle=True, random_state=seed) if n_splits >= 2 else None
    else:
        n_splits = min(folds, int(np.unique(y, return_counts=True)[1].min()))
        cv = StratifiedKFold(n_splits, shuffle=True, random_state=seed) if n_splits >= 2 else None
    if cv is None:
        return FALLBACK, {}
    search = GridSearchCV(LinearProbe(task=task, random_state=seed), {name: grid}, cv=cv, refit=False, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # weak regularisation on separable folds; the fold score decides
        search.fit(X, y)
    scores = {f"{v:g}": float(s) for v, s in zip(grid, search.cv_results_["mean_test_score"])}
    return float(search.best_params_[name]), scores

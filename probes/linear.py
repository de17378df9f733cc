"""`LinearProbe`: logistic or ridge regression on (pooled) activations, as a scikit-learn estimator."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import StandardScaler
from sklearn.utils import ClassifierTags, RegressorTags
from sklearn.utils.validation import check_is_fitted

from interp.errors import InterpError
from interp.readout import Pool, pool_tokens
from probes.blas import one_blas_thread

TASKS = ("classification", "regression")


def pool_activations(
    acts: torch.Tensor | np.ndarray,
    lengths: torch.Tensor | np.ndarray | None = None,
    pool: Pool = "last",
    start: int = 0,
) -> torch.Tensor:
    """Reduce token activations `(n, pos, d)` to one vector per example `(n, d)`.

    `interp.readout.pool_tokens` with `start=0` by default: arrays handed to a probe are taken as
    they are (activations from `interp.readout` never hold BOS). `lengths` `(n,)` counts each
    example's real positions in a right-padded batch (None: all); `pool` is `last`, `mean`,
    `max`, or an int position (`start + p`, or counted back from the last real position when
    negative); positions before `start` are never read.
    """
    return pool_tokens(acts, lengths, pool, start)


class LinearProbe(BaseEstimator):
    """A linear probe: standardise, then logistic regression (classification) or ridge (regression).

    `X` is `(n, d)` pooled features or `(n, pos, d)` token activations, pooled by `pool` (see
    `pool_activations`; pass `lengths=(n,)` to `fit`/`predict`/`score` for right-padded batches).

    Learned state, all in the ORIGINAL activation space (standardisation undone):
    `coef_` `(1, d)` for binary or regression, `(n_classes, d)` for multiclass; `intercept_`;
    `classes_` (classification); `direction_`: `coef_` rows at unit norm, `(d,)` for binary
    (pointing toward `classes_[1]`) or regression (toward larger targets), `(n_classes, d)` otherwise.
    """

    def __init__(
        self,
        task: str = "classification",
        pool: Pool = "last",
        C: float = 1.0,
        alpha: float = 1.0,
        max_iter: int = 1000,
        standardize: bool = True,
        class_weight: str | dict | None = None,
        random_state: int | None = None,
    ):
        self.task = task
        self.pool = pool
        self.C = C
        self.alpha = alpha
        self.max_iter = max_iter
        self.standardize = standardize
        self.class_weight = class_weight
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if self.task == "regression":
            tags.estimator_type = "regressor"
            tags.regressor_tags = RegressorTags()
        else:
            tags.estimator_type = "classifier"
            tags.classifier_tags = ClassifierTags()
        tags.target_tags.required = True
        tags.input_tags.three_d_array = True
        return tags

    # ---------------------------------------------------------------- helpers
    def _features(self, X: Any, lengths: Any = None) -> np.ndarray:
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().float()
        arr = np.asarray(X)
        if arr.ndim == 3:
            arr = pool_activations(torch.as_tensor(arr), lengths, self.pool).numpy()
        elif arr.ndim != 2:
            raise InterpError(f"probe input must be (n, d) or (n, pos, d); got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise InterpError("probe input holds NaN or infinite values: check the activations (dtype overflow?)")
        return arr.astype(np.float64, copy=False)

    # ------------------------------------------------------------------- API
    def fit(self, X: Any, y: Any, lengths: Any = None) -> "LinearProbe":
        """Fit on `X` `(n, d)` or `(n, pos, d)` and targets `y` `(n,)`; returns self."""
        if self.task not in TASKS:
            raise InterpError(f"unknown probe task {self.task!r}: use classification or regression")
        feats = self._features(X, lengths)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(feats):
            raise InterpError(f"probe got {len(feats)} examples but labels of shape {y.shape}: give one label per example")
        self.scaler_ = StandardScaler(with_mean=self.standardize, with_std=self.standardize).fit(feats)
        Z = self.scaler_.transform(feats)
        if self.task == "classification":
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise InterpError(f"the labels hold a single class ({self.classes_[0]!r}): a classifier needs at least two")
            model = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight, random_state=self.random_state)
        else:
            model = Ridge(alpha=self.alpha, random_state=self.random_state)
            y = y.astype(np.float64)
        # Probe-sized solves run many small BLAS calls: extra threads only wait on each other (often 10x slower).
        with one_blas_thread():
            self.model_ = model.fit(Z, y)
        coef_std = np.atleast_2d(self.model_.coef_)
        scale = self.scaler_.scale_ if self.standardize else np.ones(feats.shape[1])
        mean = self.scaler_.mean_ if self.standardize else np.zeros(feats.shape[1])
        # Undo the standardisation: w_std . (x - mean) / scale + b == (w_std / scale) . x + b'.
        self.coef_ = coef_std / scale
        self.intercept_ = np.atleast_1d(self.model_.intercept_) - self.coef_ @ mean
        norms = np.linalg.norm(self.coef_, axis=1, keepdims=True)
        unit = self.coef_ / np.where(norms > 0, norms, 1.0)
        self.direction_ = unit[0] if unit.shape[0] == 1 else unit
        self.n_features_in_ = feats.shape[1]
        return self

    def decision_function(self, X: Any, lengths: Any = None) -> np.ndarray:
        """Signed distances `(n,)` (binary, regression) or `(n, n_classes)` scores."""
        check_is_fitted(self, "coef_")
        scores = self._features(X, lengths) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Any, lengths: Any = None) -> np.ndarray:
        """Class labels (classification) or values (regression), `(n,)`."""
        check_is_fitted(self, "coef_")
        return self.model_.predict(self.scaler_.transform(self._features(X, lengths)))

    def predict_proba(self, X: Any, lengths: Any = None) -> np.ndarray:
        """Class probabilities `(n, n_classes)` (classification only)."""
        check_is_fitted(self, "coef_")
        if self.task != "classification":
            raise InterpError("predict_proba needs a classification probe")
        return self.model_.predict_proba(self.scaler_.transform(self._features(X, lengths)))

    def score(self, X: Any, y: Any, lengths: Any = None, sample_weight: Any = None) -> float:
        """Accuracy (classification) or R^2 (regression) on `X`, `y`."""
        pred = self.predict(X, lengths)
        if self.task == "classification":
            return float(accuracy_score(y, pred, sample_weight=sample_weight))
        return float(r2_score(y, pred, sample_weight=sample_weight))

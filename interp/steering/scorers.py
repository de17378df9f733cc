"""Scorers that are not the steering vector: each maps a list of texts to one number per text.

`LexiconScorer` averages word scores from `interp/datasets/sentiment_lexicon.txt`; `ProbeScorer`
is a scikit-learn logistic regression on the unsteered model's mean-pooled activations (read
through `interp.readout`, like every other consumer), trained on labelled sentences the vector
was not built from.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable, Sequence

import torch

from interp import readout
from interp.errors import InterpError
from interp.readout import text_hash
from interp.steering.texts import DATA_DIR, load_labelled_texts
from interp.steering.vector import SteeringVector

Scorer = Callable[[Sequence[str]], list[float]]


class LexiconScorer:
    """Mean lexicon score of the words of a text that are in the lexicon (0 when none are).

    The shipped lexicon scores words from -4 (very negative) to +4 (very positive).
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else DATA_DIR / "sentiment_lexicon.txt"
        self.scores: dict[str, float] = {}
        for ln in self.path.read_text().splitlines():
            if ln.strip() and not ln.startswith("#"):
                word, score = ln.split("\t")
                self.scores[word.lower()] = float(score)

    def score(self, text: str) -> float:
        hits = [self.scores[w] for w in re.findall(r"[a-z']+", text.lower()) if w in self.scores]
        return sum(hits) / len(hits) if hits else 0.0

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return [self.score(t) for t in texts]


class ProbeScorer:
    """P(positive) from a logistic-regression probe on the unsteered model's pooled activations.

    `fit(texts, labels)` trains on 1 - `test_size` of the data and records `test_accuracy_` on the
    rest; calling the scorer reads `(n, d_model)` mean-pooled activations at `point` (no steering
    active; empty texts read as ".") and returns the probe's probabilities.
    """

    def __init__(self, model, point: str, C: float = 1.0, test_size: float = 0.25, seed: int = 0):
        self.model, self.point, self.C, self.test_size, self.seed = model, point, C, test_size, seed

    def _features(self, texts: Sequence[str]) -> torch.Tensor:
        return readout.read(self.model, list(texts), [self.point], pool="mean")[self.point]

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> "ProbeScorer":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        order = list(range(len(texts)))
        random.Random(self.seed).shuffle(order)
        n_test = max(1, int(len(order) * self.test_size))
        test, train = order[:n_test], order[n_test:]
        x = self._features(texts).numpy()
        y = [int(label) for label in labels]
        self.pipeline_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=2000))
        self.pipeline_.fit(x[train], [y[i] for i in train])
        self.test_accuracy_ = float(self.pipeline_.score(x[test], [y[i] for i in test]))
        self.n_train_, self.n_test_ = len(train), len(test)
        return self

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return self.pipeline_.predict_proba(self._features([t if t.strip() else "." for t in texts]).numpy())[:, 1].tolist()


def fit_sentiment_probe(model, point: str, vector: SteeringVector | None = None,
                        labelled: str | Path | None = None, seed: int = 0) -> ProbeScorer:
    """A `ProbeScorer` trained on `interp/datasets/sentiment.jsonl` (or `labelled`), leaving out every
    text the vector was built from (matched by the text hashes in its metadata)."""
    texts, labels = load_labelled_texts(labelled or "builtin:sentiment")
    used = set(vector.source.get("text_hashes", [])) if vector is not None else set()
    keep = [i for i, t in enumerate(texts) if text_hash(t) not in used]
    if len(keep) < 8:
        raise InterpError("fewer than 8 labelled texts are left once the vector's build texts are removed: give more labelled data")
    return ProbeScorer(model, point, seed=seed).fit([texts[i] for i in keep], [labels[i] for i in keep])

"""Control tasks (Hewitt & Liang, 2019, "Designing and Interpreting Probes with Control Tasks").

A control task gives every input *type* one fixed random label, drawn from the empirical label
distribution of the real task. The labels carry no property of the representation, only the
identity of the type, so a probe can score above chance on held-out examples of the control task
only by memorising which type has which label, and only for types it has seen in training. A
probe's selectivity is its accuracy on the real task minus its accuracy on the control task: a
high-capacity probe that memorises scores well on both and has low selectivity.

Types:
- token-level probes: the word (or token) type of each example; pass it as `types`.
- sentence-level probes (`lexical_types`): texts are normalised (lower case, words of letters,
  digits and apostrophes); texts with the same normalised form are one type. Otherwise texts
  are grouped by their content words (English stop words removed): TF-IDF vectors of the
  content words, clustered by k-means (seeded) into `max(2, round(n_distinct / cluster_size))` clusters,
  so that lexically similar texts (the same topic, the same nouns) share a type.

The split (`type_split`) puts at least one member of every type with two or more members on each
side, so memorised types are met again in the test set; the remaining examples are split
stratified by label. The "shuffled-label baseline" (`shuffled_labels`) is the older, weaker
control: labels permuted within each side of the split, which no probe can carry to the test set,
so its held-out accuracy is chance by construction.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from interp.errors import InterpError

CLUSTER_SIZE = 4
_WORD = re.compile(r"[a-z0-9']+")


def normalise(text: str) -> str:
    """Lower-case words of `text` (letters, digits, apostrophes) joined by single spaces."""
    return " ".join(_WORD.findall(text.lower()))


def content_words(text: str) -> list[str]:
    """The words of `normalise(text)` that are not English stop words (scikit-learn's list)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [w for w in normalise(text).split() if w not in ENGLISH_STOP_WORDS]


def _first_appearance(keys: Sequence[Any]) -> np.ndarray:
    """Integer ids `(n,)` numbering `keys` in order of first appearance."""
    ids: dict[Any, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def lexical_types(texts: Sequence[str], cluster_size: int = CLUSTER_SIZE, seed: int = 0) -> np.ndarray:
    """One type id per text `(n,)`, numbered by first appearance (see the module docstring)."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    if cluster_size < 1:
        raise InterpError(f"cluster size must be at least 1, got {cluster_size}")
    forms = [normalise(t) for t in texts]
    distinct = _first_appearance(forms)
    n_distinct = int(distinct.max()) + 1 if len(forms) else 0
    k = max(2, round(n_distinct / cluster_size))
    if k >= n_distinct:
        return distinct
    firsts = list(dict.fromkeys(forms))
    try:
        tfidf = TfidfVectorizer(analyzer=content_words).fit_transform(firsts)
    except ValueError:  # no content word in any text: only exact repeats share a type
        return distinct
    cluster = KMeans(n_clusters=k, random_state=seed, n_init=4).fit_predict(tfidf)
    return _first_appearance(cluster[distinct].tolist())


def control_labels(types: Sequence[Any], labels: Sequence[Any], task: str = "classification", seed: int = 0) -> np.ndarray:
    """The control task's label for every example `(n,)`: one draw per type.

    Types are taken in order of first appearance and draw `u = numpy.random.default_rng(seed).random(n_types)`.
    Classification: with the classes sorted and `F` the cumulative empirical class frequencies,
    a type's label is the first class whose `F` exceeds its `u`. Regression: the value at index
    `floor(u * n)` of the sorted targets (a draw from their empirical distribution).
    """
    type_ids = _first_appearance(list(types))
    y = np.asarray(labels)
    if len(type_ids) != len(y):
        raise InterpError(f"got {len(type_ids)} types for {len(y)} labels: give one type per example")
    u = np.random.default_rng(seed).random(int(type_ids.max()) + 1)
    if task == "regression":
        values = np.sort(y.astype(np.float64))
        return values[np.minimum((u * len(values)).astype(np.int64), len(values) - 1)][type_ids]
    classes, counts = np.unique(y, return_counts=True)
    cumulative = np.cumsum(counts) / counts.sum()
    drawn = np.minimum(np.searchsorted(cumulative, u, side="right"), len(classes) - 1)
    return classes[drawn][type_ids]


def _budgets(strata: np.ndarray, n_test: int) -> dict[Any, int]:
    """Test examples per stratum: proportional, largest remainder, each in 1..size-1 where possible."""
    names, sizes = np.unique(strata, return_counts=True)
    exact = sizes * n_test / len(strata)
    base = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - base), kind="stable")[: n_test - base.sum()]:
        base[i] += 1
    return {name: int(min(max(b, 1), size - 1)) if size > 1 else int(b) for name, b, size in zip(names, base, sizes)}


def type_split(labels: Sequence[Any], types: Sequence[Any], test_size: float = 0.25, seed: int = 0,
               stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices (sorted) with every repeated type on both sides.

    `ceil(test_size * n)` examples are aimed for the test side, divided among the classes in
    proportion (`stratify`, classification). Each type with two or more members first sends one
    member to the test side (from the class with the most test places left) and one to the
    training side; the remaining test places of each class are filled at random.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    type_ids = _first_appearance(list(types))
    n = len(y)
    strata = y if stratify else np.zeros(n, dtype=np.int64)
    budget = _budgets(strata, math.ceil(test_size * n))
    in_test = np.zeros(n, dtype=bool)
    placed = np.zeros(n, dtype=bool)
    members = [np.flatnonzero(type_ids == t) for t in range(int(type_ids.max()) + 1)] if n else []
    for t in rng.permutation(len(members)):
        group = rng.permutation(members[t])
        if len(group) < 2:
            continue
        pick = max(group, key=lambda i: budget[strata[i]])  # ties: the first in the shuffled group
        in_test[pick] = placed[pick] = True
        budget[strata[pick]] -= 1
        placed[next(i for i in group if i != pick)] = True
    for stratum, left in budget.items():
        free = rng.permutation(np.flatnonzero(~placed & (strata == stratum)))
        in_test[free[: max(left, 0)]] = True
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def shuffled_labels(y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int = 0) -> np.ndarray:
    """The shuffled-label baseline's labels: `y` permuted within the training and within the test side."""
    rng = np.random.default_rng(seed)
    out = np.array(y, copy=True)
    out[train] = rng.permutation(y[train])
    out[test] = rng.permutation(y[test])
    return out


def types_on_both_sides(types: Sequence[Any], train: np.ndarray, test: np.ndarray) -> int:
    """How many types have members in both the training and the test split."""
    ids = _first_appearance(list(types))
    return len(set(ids[train].tolist()) & set(ids[test].tolist()))

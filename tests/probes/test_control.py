"""Control tasks (Hewitt & Liang, 2019): fixed random labels per input type, a split that meets
every repeated type again at test time, and probes that can memorise them."""

import numpy as np
import pytest

from probes import control_labels, lexical_types, probe_activations, shuffled_labels, type_split
from probes.control import normalise, types_on_both_sides


def test_control_labels_match_a_hand_computed_assignment():
    types = ["the", "cat", "the", "sat", "cat", "on", "the", "mat"]
    labels = [0, 1, 0, 1, 1, 0, 0, 1]  # 4 of class 0, 4 of class 1: cumulative frequencies [0.5, 1.0]
    # types in order of first appearance: the, cat, sat, on, mat; one uniform draw each
    u = np.random.default_rng(7).random(5)
    # u = [0.625, 0.897, 0.776, 0.225, 0.300]: class 0 where u < 0.5, else class 1
    np.testing.assert_allclose(u, [0.62509547, 0.8972138, 0.77568569, 0.22520719, 0.30016628], atol=1e-8)
    by_type = {"the": 1, "cat": 1, "sat": 1, "on": 0, "mat": 0}
    assert control_labels(types, labels, seed=7).tolist() == [by_type[t] for t in types]
    # three classes with frequencies 1/4, 1/4, 1/2 (sorted: "a", "b", "c"): cumulative [0.25, 0.5, 1.0]
    got = control_labels(types, ["c", "a", "c", "b", "c", "a", "b", "c"], seed=7)
    by_type = {"the": "c", "cat": "c", "sat": "c", "on": "a", "mat": "b"}
    assert got.tolist() == [by_type[t] for t in types]


def test_regression_control_draws_observed_values_per_type():
    types = ["a", "b", "a", "c"]
    y = [3.0, 1.0, 2.0, 5.0]
    u = np.random.default_rng(1).random(3)
    values = np.sort(y)[(u * 4).astype(int)]
    got = control_labels(types, y, task="regression", seed=1)
    np.testing.assert_allclose(got, [values[0], values[1], values[0], values[2]])


def test_control_labels_follow_the_label_distribution():
    rng = np.random.default_rng(0)
    labels = (rng.random(20000) < 0.3).astype(int)
    got = control_labels(np.arange(20000), labels, seed=3)  # every example its own type
    assert got.mean() == pytest.approx(labels.mean(), abs=0.02)


def test_lexical_types_group_repeats_and_lexical_neighbours():
    texts = [
        "The pizza at Luigi's was delicious.", "the pizza at luigi's was DELICIOUS",  # same normalised text
        "Luigi's pizza was cold and soggy.", "The train to Boston was late again.",
        "Our train to Boston arrived late.", "The lake was calm at sunrise.", "Sunrise over the calm lake.",
        "The museum tour was dull.",
    ]
    assert normalise(texts[0]) == normalise(texts[1]) == "the pizza at luigi's was delicious"
    types = lexical_types(texts, cluster_size=2, seed=0)
    assert types[0] == types[1] == types[2]
    assert types[3] == types[4] and types[5] == types[6]
    assert len(set(types[[0, 3, 5]])) == 3
    assert types[0] == 0 and set(types) == set(range(types.max() + 1))  # numbered by first appearance
    only_stop_words = lexical_types(["the of and", "The of and!", "a an the"], cluster_size=2)
    assert only_stop_words.tolist() == [0, 0, 1]


def test_type_split_puts_every_repeated_type_on_both_sides():
    rng = np.random.default_rng(0)
    types = np.repeat(np.arange(30), rng.integers(1, 6, 30))
    labels = rng.integers(0, 2, len(types))
    for seed in range(5):
        train, test = type_split(labels, types, test_size=0.25, seed=seed)
        assert sorted(train.tolist() + test.tolist()) == list(range(len(types)))
        repeated = {t for t in set(types.tolist()) if (types == t).sum() >= 2}
        assert repeated <= set(types[train].tolist()) & set(types[test].tolist())
        assert types_on_both_sides(types, train, test) >= len(repeated)
        assert set(labels[train].tolist()) == set(labels[test].tolist()) == {0, 1}
        assert abs(len(test) - np.ceil(0.25 * len(types))) <= 2


def test_shuffled_baseline_permutes_within_each_side():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    train, test = np.array([0, 1, 3, 4, 6]), np.array([2, 5, 7])
    got = shuffled_labels(y, train, test, seed=2)
    assert sorted(got[train]) == sorted(y[train]) and sorted(got[test]) == sorted(y[test])


def memorisable(seed=0, n_types=40, members=6, d=64):
    """Types with their own centre in activation space: a flexible probe can tell all 40 apart."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((n_types, d))
    types = np.repeat(np.arange(n_types), members)
    X = centres[types] + 0.3 * rng.standard_normal((len(types), d))
    u = rng.standard_normal(d)
    y = (X @ u > 0).astype(int)
    return X, y, types


def test_a_high_capacity_probe_scores_well_above_chance_on_the_control_task():
    X, y, types = memorisable()
    weak = probe_activations({"p": X}, y.tolist(), types=types.tolist(), C=1e4, n_bootstrap=200).metrics["p"]
    strong = probe_activations({"p": X}, y.tolist(), types=types.tolist(), C=1e-3, n_bootstrap=200).metrics["p"]
    # the weakly regularised probe memorises the types: the control task is far above chance ...
    assert weak["control_accuracy"] >= 0.9 and weak["control_accuracy_ci"][0] >= 0.8
    # ... while the shuffled-label baseline, which cannot be memorised, stays at chance
    assert abs(weak["shuffled_accuracy"] - 0.5) <= 0.15
    assert weak["selectivity"] == pytest.approx(weak["accuracy"] - weak["control_accuracy"])
    # so its selectivity falls below the accuracy-minus-chance figure, and below a more constrained probe's
    assert weak["selectivity"] < weak["accuracy"] - 0.5 - 0.3
    assert strong["control_accuracy"] < weak["control_accuracy"] - 0.2
    assert strong["selectivity"] > weak["selectivity"] + 0.2


def test_sweep_records_types_and_control_labels():
    X, y, types = memorisable(n_types=10, members=4, d=16)
    res = probe_activations({"p": X}, y.tolist(), types=[f"t{t}" for t in types], C=1.0, n_bootstrap=50, seed=4)
    assert res.control["n_types"] == 10 and res.control["n_types_both_sides"] == 10
    assert res.control["labels"] == control_labels(types, y, seed=4).tolist()
    assert res.control["types"][:4] == ["t0"] * 4
    assert sorted(res.split["train"] + res.split["test"]) == list(range(40))

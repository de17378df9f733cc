"""probe_layers on the tiny transformer: one harvest pass, padding-exact features, consistent numbers."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from interp import HookManager, readout
from interp.errors import InterpError
from interp.readout import texts_fingerprint
from probes import load_directions, probe_activations, probe_direction, probe_layers
from probes.regularization import DEFAULT_CS

ANIMALS = ["cat", "dog"]
PLACES = ["mat", "park", "tree", "sun", "snow", "film"]


def dataset(n=32):
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        extra = " very" * (i % 5)  # different lengths, so batches are padded
        texts.append(f"The {ANIMALS[label]} sat on the{extra} {PLACES[i % len(PLACES)]}")
        labels.append(label)
    return texts, labels


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1


def test_one_forward_per_batch_for_all_points(tiny_model):
    texts, labels = dataset(32)
    counter = ForwardCounter(tiny_model)
    try:
        result = probe_layers(tiny_model, texts, labels, points="resid_post:all", batch_size=8, n_bootstrap=50, progress=False)
    finally:
        counter.handle.remove()
    assert counter.calls == 4  # 32 texts / batch 8, whatever the number of points
    assert result.points == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert HookManager(tiny_model).n_active == 0


def test_harvest_matches_unpadded_single_text_forwards(tiny_model):
    texts, _ = dataset(10)
    hm = HookManager(tiny_model)
    points = hm.resolve("resid_post:all")
    last = readout.read(tiny_model, texts, points, pool="last", batch_size=4, progress=False)
    mean = readout.read(tiny_model, texts, points, pool="mean", batch_size=4, progress=False)
    for i, text in enumerate(texts):
        cap = hm.collect(tiny_model.to_tokens(text), points)
        for p in points:
            torch.testing.assert_close(last[p][i], cap[p][0, -1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(mean[p][i], cap[p][0, 1:].mean(0), atol=1e-4, rtol=1e-4)  # BOS left out


def test_sweep_numbers_match_an_independent_sklearn_run(tiny_model):
    texts, labels = dataset(40)
    result = probe_layers(tiny_model, texts, labels, test_size=0.25, n_bootstrap=200, seed=3, progress=False)
    feats = readout.read(tiny_model, texts, result.points, progress=False)
    y = np.array(labels)
    train, test = np.array(result.split["train"]), np.array(result.split["test"])
    assert len(test) == 10 and len(train) == 30 and result.n_test == 10
    assert y[test].sum() == 5  # stratified
    for p in result.points:
        m = result.metrics[p]
        X = feats[p].double().numpy()
        search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                              {"logisticregression__C": list(DEFAULT_CS)}, cv=StratifiedKFold(5, shuffle=True, random_state=3))
        search.fit(X[train], y[train])
        assert m["C"] == search.best_params_["logisticregression__C"]
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=m["C"], max_iter=1000)).fit(X[train], y[train])
        assert m["accuracy"] == pytest.approx(ref.score(X[test], y[test]))
        assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])
        for key in ("accuracy", "control_accuracy", "selectivity", "shuffled_accuracy"):
            lo, hi = m[f"{key}_ci"]
            assert lo <= hi
        assert 0.0 <= m["accuracy_ci"][0] <= m["accuracy_ci"][1] <= 1.0
        assert m["layer"] == int(p.split(".")[1])
        assert torch.linalg.norm(result.directions[p]).item() == pytest.approx(1.0, abs=1e-5)


def noisy_planted(seed=10, n=200, d=100):
    """A weak planted signal in many dimensions: the regularisation strength matters."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    u = rng.standard_normal(d)
    y = ((X @ u) / np.linalg.norm(u) + rng.standard_normal(n) > 0).astype(int)
    return X, y


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_chosen_C_equals_gridsearchcv_and_accuracy_equals_a_plain_fit(seed):
    X, y = noisy_planted(seed)
    res = probe_activations({"p": X}, y.tolist(), n_bootstrap=200, seed=seed)
    m = res.metrics["p"]
    train, test = np.array(res.split["train"]), np.array(res.split["test"])
    assert not set(train) & set(test)  # the test split never enters the CV
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                          {"logisticregression__C": list(DEFAULT_CS)}, cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    search.fit(X[train], y[train])
    assert m["C"] == search.best_params_["logisticregression__C"]
    assert m["cv_accuracy"] == pytest.approx(search.best_score_)
    for C, score in zip(DEFAULT_CS, search.cv_results_["mean_test_score"]):
        assert m["cv_scores"][f"{C:g}"] == pytest.approx(score)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=m["C"], max_iter=1000)).fit(X[train], y[train])
    assert m["accuracy"] == pytest.approx(ref.score(X[test], y[test]))
    correct = (ref.predict(X[test]) == y[test]).astype(float)
    boot = np.random.default_rng(seed).integers(0, len(test), size=(200, len(test)))
    assert m["accuracy_ci"] == pytest.approx(list(np.percentile(correct[boot].mean(1), [2.5, 97.5])))


def test_cv_picks_an_interior_C_that_beats_the_weakest(tmp_path):
    X, y = noisy_planted(10)
    res = probe_activations({"p": X}, y.tolist(), n_bootstrap=50, seed=10)
    m = res.metrics["p"]
    assert DEFAULT_CS[0] < m["C"] < DEFAULT_CS[-1]
    assert m["cv_scores"][f"{m['C']:g}"] > m["cv_scores"][f"{DEFAULT_CS[-1]:g}"]
    fixed = probe_activations({"p": X}, y.tolist(), n_bootstrap=50, seed=10, C=100.0).metrics["p"]
    assert fixed["C"] == 100.0 and fixed["cv_scores"] == {}


def test_save_writes_results_directions_and_report(tiny_model, tmp_path):
    texts, labels = dataset(24)
    result = probe_layers(tiny_model, texts, labels, points="resid_post:0,2", n_bootstrap=50, progress=False)
    result.save(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["points"]) == {"blocks.0.hook_resid_post", "blocks.2.hook_resid_post"}
    for p, m in data["points"].items():
        for key in ("accuracy", "control_accuracy", "selectivity", "shuffled_accuracy", "C", "cv_scores", "accuracy_ci",
                    "control_accuracy_ci", "selectivity_ci", "shuffled_accuracy_ci"):
            assert key in m
        assert m["accuracy"] == result.metrics[p]["accuracy"] and m["C"] == result.metrics[p]["C"]
    assert "Hewitt" in data["control"] and "shuffled-label baseline" in data["shuffled_baseline"]
    assert len(data["control_task"]["types"]) == 24 and data["control_task"]["kind"].startswith("lexical clusters")
    manifest = {"model": tiny_model.interp_name, "points": result.points, "widths": {p: 64 for p in result.points},
                "data_fingerprint": texts_fingerprint(texts), "ctx_len": None}
    assert data["manifest"] == manifest
    tensors, meta = load_directions(tmp_path / "directions.safetensors")
    assert meta["model"] == tiny_model.interp_name and meta["pool"] == "last" and meta["points"] == result.points
    assert meta["manifest"] == manifest and meta["strengths"] == {p: result.metrics[p]["C"] for p in result.points}
    for p in result.points:
        torch.testing.assert_close(tensors[p], result.directions[p])
        assert tensors[p].shape == (tiny_model.cfg.d_model,)
    html = (tmp_path / "report.html").read_text()
    assert "plotly" in html and "blocks.2.hook_resid_post" in html and "shuffled-label baseline" in html
    # reuse goes through the manifest check
    direction, _ = probe_direction(tmp_path, "blocks.2.hook_resid_post", tiny_model.interp_name, 64)
    torch.testing.assert_close(direction, result.directions["blocks.2.hook_resid_post"])
    with pytest.raises(InterpError, match="model 'tiny.*' vs 'other-model'"):
        probe_direction(tmp_path, "blocks.2.hook_resid_post", "other-model", 64)
    with pytest.raises(InterpError, match=r"lack \['blocks.1.hook_resid_post'\]"):
        probe_direction(tmp_path, "blocks.1.hook_resid_post", tiny_model.interp_name, 64)
    with pytest.raises(InterpError, match="width blocks.2.hook_resid_post 64 vs 576"):
        probe_direction(tmp_path, "blocks.2.hook_resid_post", tiny_model.interp_name, 576)


def test_bad_input_fails_before_any_forward(tiny_model):
    texts, labels = dataset(12)
    counter = ForwardCounter(tiny_model)
    try:
        with pytest.raises(InterpError, match="at least two classes"):
            probe_layers(tiny_model, texts, [1] * 12, progress=False)
        with pytest.raises(InterpError, match="one label per example"):
            probe_layers(tiny_model, texts, labels[:10], progress=False)
        with pytest.raises(InterpError, match="cannot hold all 2 classes"):
            probe_layers(tiny_model, texts[:4], labels[:4], test_size=0.2, progress=False)
        with pytest.raises(InterpError, match="only 1 example"):
            probe_layers(tiny_model, texts[:5], [0, 0, 0, 0, 1], progress=False)
        with pytest.raises(InterpError, match="unknown hook point"):
            probe_layers(tiny_model, texts, labels, points="blocks.0.hook_nothing", progress=False)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


def test_probe_activations_regression_and_multiclass(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 300, 16
    u = rng.standard_normal(d)
    carrier = rng.standard_normal((n, d))
    y = carrier @ u + 0.05 * rng.standard_normal(n)
    feats = {"carrier": torch.tensor(carrier, dtype=torch.float32), "noise": torch.randn(n, d)}
    res = probe_activations(feats, y.tolist(), n_bootstrap=200)
    assert res.task == "regression" and res.metric == "r2"
    assert res.metrics["carrier"]["accuracy"] >= 0.95 and res.metrics["noise"]["accuracy"] < 0.2
    assert res.metrics["carrier"]["control_accuracy"] < 0.2
    assert res.best_point == "carrier"
    m = res.metrics["carrier"]
    assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])

    classes = np.array(["red", "green", "blue"])
    centers = 3 * rng.standard_normal((3, d))
    lab = rng.integers(0, 3, n)
    X = centers[lab] + rng.standard_normal((n, d))
    res = probe_activations({"p": X}, classes[lab].tolist(), n_bootstrap=100)
    assert res.classes == ["blue", "green", "red"] and res.directions["p"].shape == (3, d)
    assert res.metrics["p"]["accuracy"] >= 0.9 and abs(res.metrics["p"]["control_accuracy"] - 1 / 3) <= 0.15
    res.save(tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["classes"] == ["blue", "green", "red"]


def test_tiny_sets_work_without_cv_and_with_one_class_control_sides():
    rng = np.random.default_rng(0)
    labels = [1, 1, 1, 1, 1, 1, 0, 0]  # one class-0 example in training: no CV possible, C falls back to 1
    feats = {"p": torch.tensor(rng.standard_normal((8, 4)), dtype=torch.float32)}
    for seed in range(20):
        res = probe_activations(feats, labels, test_size=0.25, n_bootstrap=20, seed=seed, types=[0, 0, 0, 0, 1, 1, 2, 2])
        m = res.metrics["p"]
        assert m["C"] == 1.0 and m["cv_scores"] == {}
        assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])
        control = np.array(res.control["labels"])
        train, test = res.split["train"], res.split["test"]
        if len(set(control[train])) == 1:  # the control's training side drew one class: it predicts that class
            assert m["control_accuracy"] == pytest.approx(float(np.mean(control[test] == control[train][0])))

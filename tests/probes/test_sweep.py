"""probe_layers on the tiny transformer: one harvest pass, padding-exact features, consistent numbers."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from interp import HookManager
from interp.errors import InterpError
from probes import harvest, load_directions, probe_layers

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
    last = harvest(tiny_model, texts, points, pool="last", batch_size=4, progress=False)
    mean = harvest(tiny_model, texts, points, pool="mean", batch_size=4, progress=False)
    for i, text in enumerate(texts):
        cap = hm.collect(tiny_model.to_tokens(text), points)
        for p in points:
            torch.testing.assert_close(last[p][i], cap[p][0, -1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(mean[p][i], cap[p][0, 1:].mean(0), atol=1e-4, rtol=1e-4)  # BOS left out


def test_sweep_numbers_match_an_independent_sklearn_run(tiny_model):
    texts, labels = dataset(40)
    result = probe_layers(tiny_model, texts, labels, test_size=0.25, n_bootstrap=200, seed=3, progress=False)
    feats = harvest(tiny_model, texts, result.points, progress=False)
    y = np.array(labels)
    train, test = train_test_split(np.arange(40), test_size=0.25, random_state=3, stratify=y)
    for p in result.points:
        m = result.metrics[p]
        X = feats[p].double().numpy()
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(X[train], y[train])
        assert m["accuracy"] == pytest.approx(ref.score(X[test], y[test]))
        assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])
        for key in ("accuracy", "control_accuracy", "selectivity"):
            lo, hi = m[f"{key}_ci"]
            assert lo <= hi
        assert 0.0 <= m["accuracy_ci"][0] <= m["accuracy_ci"][1] <= 1.0
        assert m["layer"] == int(p.split(".")[1])
        assert torch.linalg.norm(result.directions[p]).item() == pytest.approx(1.0, abs=1e-5)
    assert result.n_test == 10 and result.n_train == 30


def test_save_writes_results_directions_and_report(tiny_model, tmp_path):
    texts, labels = dataset(24)
    result = probe_layers(tiny_model, texts, labels, points="resid_post:0,2", n_bootstrap=50, progress=False)
    result.save(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["points"]) == {"blocks.0.hook_resid_post", "blocks.2.hook_resid_post"}
    for p, m in data["points"].items():
        for key in ("accuracy", "control_accuracy", "selectivity", "accuracy_ci", "control_accuracy_ci", "selectivity_ci"):
            assert key in m
        assert m["accuracy"] == result.metrics[p]["accuracy"]
    tensors, meta = load_directions(tmp_path / "directions.safetensors")
    assert meta["model"] == tiny_model.interp_name and meta["pool"] == "last" and meta["points"] == result.points
    for p in result.points:
        torch.testing.assert_close(tensors[p], result.directions[p])
        assert tensors[p].shape == (tiny_model.cfg.d_model,)
    html = (tmp_path / "report.html").read_text()
    assert "plotly" in html and "blocks.2.hook_resid_post" in html


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
    from probes import probe_activations

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


def test_control_labels_are_a_shuffle_within_each_side_and_tiny_sets_work():
    from probes import probe_activations

    rng = np.random.default_rng(0)
    labels = [1, 1, 1, 1, 1, 1, 0, 0]  # a naive global shuffle can leave the control's train side one class
    feats = {"p": torch.tensor(rng.standard_normal((8, 4)), dtype=torch.float32)}
    for seed in range(20):
        res = probe_activations(feats, labels, test_size=0.25, n_bootstrap=20, seed=seed)
        m = res.metrics["p"]
        assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])

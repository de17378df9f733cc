"""Integrated gradients (completeness, shrinking with steps) and GrAInS vectors on a tiny model,
against independent computations: the objective evaluated directly, scikit-learn's PCA, and
ablations done with TransformerLens hooks."""

from __future__ import annotations

import pytest
import torch
from sklearn.decomposition import PCA

from interp.errors import InterpError
from interp.hooks import HookManager
from interp.integrated_gradients import integrated_gradients, logit_difference
from interp.steering import SteeringVector
from interp.steering.grains import _ablated_last, aggregate, grains_vector


def test_integrated_gradients_are_complete_within_a_tolerance_that_shrinks_with_steps(tiny_model):
    hm = HookManager(tiny_model)
    tokens = tiny_model.to_tokens("I love this film, it is wonderful.")
    objective = logit_difference(5, 9)
    errors = {}
    for steps in (8, 64, 512):
        attr = integrated_gradients(hm, tokens, objective, steps=steps, batch_steps=128)
        errors[steps] = attr.completeness_error
    with torch.no_grad():
        direct = tiny_model(tokens)
    # f(x) is the objective of the unchanged model; f(baseline) zeroes every embedding after BOS
    assert attr.f_input == pytest.approx(float(objective(direct)[0]), abs=1e-4)
    gap = abs(attr.f_input - attr.f_baseline)
    assert gap > 1e-2
    # midpoint rule: the error falls with the steps, though not monotonically at small counts (with a
    # zero baseline, RMS norms make f change fastest near alpha = 0)
    assert errors[512] < 0.05 * errors[8]
    assert errors[512] < 0.002 * gap
    assert float(attr.scores[0]) == 0.0 and hm.n_active == 0


def test_pca_aggregate_matches_scikit_learn():
    torch.manual_seed(0)
    deltas = torch.randn(30, 8) * torch.linspace(3, 0.5, 8) + torch.linspace(1, 2, 8)
    ours = aggregate(deltas, "pca")
    ref = torch.tensor(PCA(n_components=1).fit(deltas.numpy()).components_[0], dtype=torch.float32)
    cos = float(torch.nn.functional.cosine_similarity(ours, ref, dim=0))
    assert abs(cos) == pytest.approx(1.0, abs=1e-5)
    assert float(ours @ deltas.mean(0)) > 0  # signed along the mean
    assert float(ours.norm()) == pytest.approx(float((deltas @ (ours / ours.norm())).mean()), rel=1e-5)
    torch.testing.assert_close(aggregate(deltas, "mean"), deltas.mean(0))


def test_ablated_activations_equal_zeroed_embeddings_through_transformerlens_hooks(tiny_model):
    hm = HookManager(tiny_model)
    tokens = tiny_model.to_tokens("The dog ran in the park.")
    acts = _ablated_last(hm, tokens, [[2, 4], []], ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]

    def zero(act, hook):
        act = act.clone()
        act[0, [2, 4]] = 0.0
        return act

    _, plain = tiny_model.run_with_cache(tokens)
    store = {}

    def keep(act, hook):
        store["h"] = act[0, -1].clone()

    with torch.no_grad():
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", zero), ("blocks.1.hook_resid_post", keep)])
    torch.testing.assert_close(acts[0], plain["blocks.1.hook_resid_post"][0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts[1], store["h"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts[2], acts[0])  # nothing ablated: the input itself
    assert not torch.allclose(acts[0], acts[1])


def test_grains_vector_is_a_steering_vector_folder(tiny_model, tmp_path):
    pos = ["I love this film, it is wonderful.", "The sun is hot and the day is lovely."]
    neg = ["I hate this film, it is terrible.", "The snow is cold and the day is awful."]
    vec = grains_vector(tiny_model, pos, neg, "resid_post:1-2", top_k=2, steps=8, targets=("a", "b"), progress=False)
    assert vec.method == "grains" and vec.points == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert all(torch.isfinite(v).all() and float(v.norm()) > 0 for v in vec.directions.values())
    assert vec.params["mean_completeness_error"] < 0.1 and len(vec.params["examples"]) == 4
    assert all(len(e["plus"]) <= 2 and len(e["minus"]) <= 2 for e in vec.params["examples"])
    vec.save(tmp_path)
    back = SteeringVector.load(tmp_path)
    assert back.method == "grains" and torch.equal(back.directions[back.points[0]], vec.directions[vec.points[0]])
    with pytest.raises(InterpError, match="one token"):
        grains_vector(tiny_model, pos, neg, "resid_post:1", targets=(" wonderfully lovely", "b"), progress=False)

"""CAVs and TCAV on small torch networks whose output provably depends on a planted concept direction."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from interp import HookManager
from interp.errors import InterpError
from probes import directional_derivatives, target_gradients, tcav, train_cav
from probes.tcav import correct_pvalues

D_IN, HIDDEN = 10, 24


def planted_net(seed=0):
    """logit[1] = c . relu(W1 x) with c = W1 u: moving the hidden pre-activation along c raises logit 1
    wherever the units of c are active, so dd along c is >= 0 for every input."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(D_IN, HIDDEN))
    net.add_module("act", nn.ReLU())
    net.add_module("fc2", nn.Linear(HIDDEN, 2))
    with torch.no_grad():
        net.fc1.weight.copy_(torch.randn(HIDDEN, D_IN, generator=g) / D_IN**0.5)
        net.fc1.bias.zero_()
        u = torch.randn(D_IN, generator=g)
        u /= u.norm()
        c = net.fc1.weight @ u
        net.fc2.weight.copy_(torch.stack([-c, c]))
        net.fc2.bias.zero_()
    return net.eval(), u, c / c.norm()


def test_train_cav_points_toward_the_concept():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(32)
    v /= np.linalg.norm(v)
    random_acts = rng.standard_normal((1000, 32))
    concept_acts = rng.standard_normal((1000, 32)) + 3.0 * v
    cav = train_cav(concept_acts, random_acts)
    assert cav.vector.shape == (32,)
    assert cav.vector.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert cav.vector.double().numpy() @ v >= 0.9
    assert cav.accuracy >= 0.9
    flipped = train_cav(random_acts, concept_acts)
    assert flipped.vector.double().numpy() @ v <= -0.9


def test_directional_derivative_matches_finite_difference():
    net, _, _ = planted_net()
    net = net.double()
    x = torch.randn(16, D_IN, dtype=torch.float64)
    v = torch.randn(HIDDEN, dtype=torch.float64)
    v /= v.norm()
    hm = HookManager(net)
    dd = directional_derivatives(hm, x, "fc1", v, target=1)
    eps = 1e-4

    def f(shift):
        with torch.no_grad(), hm.edit("fc1", lambda a: a + shift * v):
            return net(x)[:, 1]

    fd = (f(eps) - f(-eps)) / (2 * eps)
    torch.testing.assert_close(dd.double(), fd, atol=1e-4, rtol=1e-4)
    # the same through a callable target
    dd_fn = directional_derivatives(net, x, "fc1", v, target=lambda out: out[:, 1] - out[:, 0])
    torch.testing.assert_close(dd_fn.double(), 2 * fd, atol=1e-4, rtol=1e-4)


def test_directional_derivative_on_a_cnn_matches_finite_difference():
    torch.manual_seed(1)
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(1, 3, 3))
    net.add_module("relu", nn.ReLU(inplace=True))  # in-place after the point must not disturb the gradient
    net.add_module("flat", nn.Flatten())
    net.add_module("head", nn.Linear(3 * 6 * 6, 4))
    net = net.double().eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    v = torch.randn(3 * 6 * 6, dtype=torch.float64)
    v /= v.norm()
    dd = directional_derivatives(net, x, "conv", v, target=2)
    hm = HookManager(net)
    eps = 1e-5

    def f(shift):
        with torch.no_grad(), hm.edit("conv", lambda a: a + shift * v.reshape(3, 6, 6)):
            return net(x)[:, 2]

    torch.testing.assert_close(dd.double(), (f(eps) - f(-eps)) / (2 * eps), atol=1e-4, rtol=1e-4)


def test_gradients_for_several_points_in_one_pass_match_single_point_runs():
    net, _, _ = planted_net()
    x = torch.randn(20, D_IN)
    both = target_gradients(net, x, ["fc1", "act"], target=1)
    for point in ("fc1", "act"):
        torch.testing.assert_close(both[point], target_gradients(net, x, point, target=1)[point])


def irrelevant_direction(net, c, seed=3):
    """An input direction whose hidden image is orthogonal to c: the target does not depend on it."""
    a = net.fc1.weight.detach().T @ c
    r = torch.randn(D_IN, generator=torch.Generator().manual_seed(seed))
    u2 = r - (r @ a) / (a @ a) * a
    return u2 / u2.norm()


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_tcav_finds_the_planted_concept_and_not_an_irrelevant_one():
    net, u, c = planted_net()
    g = torch.Generator().manual_seed(5)
    concept = torch.randn(60, D_IN, generator=g) + 3.0 * u
    u2 = irrelevant_direction(net, c)
    assert abs((net.fc1.weight @ u2) @ c) < 1e-5
    fake_concept = torch.randn(60, D_IN, generator=g) + 3.0 * u2
    random_pool = torch.randn(600, D_IN, generator=g)
    class_inputs = torch.randn(100, D_IN, generator=g)
    res = tcav(net, concept, random_pool, class_inputs, target=1, points=["fc1", "act"], n_runs=10, seed=0, progress=False)
    s = res.stats["fc1"]
    assert s["mean"] >= 0.9 and s["p_value_corrected"] < 0.05 and s["significant"]
    assert len(s["scores"]) == 10 and len(s["random_scores"]) == 10
    assert 0.2 <= s["random_mean"] <= 0.8
    for point in ("fc1", "act"):  # Bonferroni over the two points
        assert res.stats[point]["p_value_corrected"] == pytest.approx(min(1.0, 2 * res.stats[point]["p_value"]))
    # scores are the fraction of positive directional derivatives, recomputed independently
    from scipy import stats as sps
    assert s["p_value"] == pytest.approx(sps.ttest_ind(s["scores"], s["random_scores"]).pvalue)
    null = tcav(net, fake_concept, random_pool, class_inputs, target=1, points="fc1", n_runs=10, seed=0, progress=False)
    assert not null.stats["fc1"]["significant"] and null.stats["fc1"]["p_value"] > 0.05
    assert abs(null.stats["fc1"]["mean"] - 0.5) < 0.25
    assert null.stats["fc1"]["cav_accuracy_mean"] >= 0.9  # the concept is learnable, just irrelevant to the target


def test_tcav_score_is_fraction_of_positive_derivatives():
    net, u, _ = planted_net()
    g = torch.Generator().manual_seed(7)
    concept = torch.randn(40, D_IN, generator=g) + 3.0 * u
    sets = [torch.randn(40, D_IN, generator=g) for _ in range(4)]
    class_inputs = torch.randn(50, D_IN, generator=g)
    res = tcav(net, concept, sets, class_inputs, target=1, points="fc1", n_runs=3, seed=2, progress=False)
    hm = HookManager(net)
    acts_c = hm.collect(concept, "fc1")["fc1"]
    for i in range(3):
        acts_r = hm.collect(sets[i], "fc1")["fc1"]
        cav = train_cav(acts_c, acts_r, seed=2 + i)
        dd = directional_derivatives(net, class_inputs, "fc1", cav, target=1)
        assert res.stats["fc1"]["scores"][i] == pytest.approx((dd > 0).float().mean().item())


def test_save_writes_results_and_report(tmp_path):
    net, u, _ = planted_net()
    concept = torch.randn(30, D_IN) + 3.0 * u
    res = tcav(net, concept, torch.randn(200, D_IN), torch.randn(30, D_IN), target=1, points=["fc1", "act"], n_runs=4,
               correction="holm", progress=False)
    res.save(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["correction"] == "holm"
    for point in ("fc1", "act"):
        for key in ("scores", "random_scores", "mean", "p_value", "p_value_corrected", "significant"):
            assert key in data["points"][point]
    assert "plotly" in (tmp_path / "report.html").read_text()


def test_holm_and_bonferroni():
    p = [0.01, 0.04, 0.03, 0.005]
    assert correct_pvalues(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert correct_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_bad_targets_and_inputs(tiny_model):
    with pytest.raises(InterpError, match="splits into"):
        directional_derivatives(tiny_model, ["The cat sat"], "blocks.0.hook_resid_post", torch.ones(64), "xylophonic")
    net, u, _ = planted_net()
    with pytest.raises(InterpError, match="no tokenizer"):
        directional_derivatives(net, torch.randn(3, D_IN), "fc1", torch.ones(HIDDEN), "cat")
    with pytest.raises(InterpError, match="plain torch module"):
        directional_derivatives(net, ["some text"], "fc1", torch.ones(HIDDEN), 1)
    with pytest.raises(InterpError, match="out of range"):
        directional_derivatives(net, torch.randn(3, D_IN), "fc1", torch.ones(HIDDEN), 7)
    with pytest.raises(InterpError, match="concept inputs are empty"):
        tcav(net, torch.zeros(0, D_IN), torch.randn(100, D_IN), torch.randn(5, D_IN), 1, "fc1", progress=False)
    with pytest.raises(InterpError, match="random sets given"):
        tcav(net, torch.randn(10, D_IN), [torch.randn(10, D_IN)] * 3, torch.randn(5, D_IN), 1, "fc1", n_runs=5, progress=False)


def test_tcav_on_a_transformer_uses_last_token_gradients(tiny_model):
    texts = ["The cat sat on the mat", "The dog ran in the park", "A bird sang"]
    v = torch.randn(64)
    dd = directional_derivatives(tiny_model, texts, "blocks.1.hook_resid_post", v, " the")
    hm = HookManager(tiny_model)
    tid = tiny_model.to_tokens(" the", prepend_bos=False)[0, 0]
    eps = 1e-3
    for i, text in enumerate(texts):
        tokens = tiny_model.to_tokens(text)

        def f(shift):
            def fn(a):
                a = a.clone()
                a[:, -1] += shift * v
                return a
            with torch.no_grad(), hm.edit("blocks.1.hook_resid_post", fn):
                return tiny_model(tokens)[0, -1, tid]

        assert dd[i].item() == pytest.approx(((f(eps) - f(-eps)) / (2 * eps)).item(), rel=2e-2, abs=2e-3)

"""LinEAS: transport on planted Gaussians, exact identity where nothing needs moving, hooks on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance
from torch import nn

from interp import HookManager, InterpError, readout
from interp.steering.lineas import LinEASMaps, apply_lineas, fit_lineas, is_lineas_folder, wasserstein_1d

D = 6
N = 1000


class Chain(nn.Module):
    """`first` (identity on the input) feeds `second` (a fixed random linear map)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Identity()
        self.second = nn.Linear(D, D)
        with torch.no_grad():
            g = torch.Generator().manual_seed(3)
            self.second.weight.copy_(torch.randn(D, D, generator=g) / D ** 0.5 + torch.eye(D))
            self.second.bias.zero_()

    def forward(self, x):
        return self.second(self.first(x))


class TwoBranch(nn.Module):
    """Two independent halves of the input, each through its own identity point (`a`, `b`)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Identity(), nn.Identity()

    def forward(self, x):
        return torch.cat([self.a(x[:, :D]), self.b(x[:, D:])], 1)


MU = torch.tensor([3.0, -2.0, 0.5, 1.5, -1.0, 2.0])
SIGMA = torch.tensor([2.0, 0.5, 1.5, 0.7, 1.2, 0.8])


def _gauss(n, mu, sigma, seed):
    return mu + sigma * torch.randn(n, len(mu), generator=torch.Generator().manual_seed(seed))


def _w1(model, x, y, point, maps=None):
    """Sum over dimensions of scipy's 1-D Wasserstein-1 distance between the (steered) activations of
    `x` and the unsteered activations of `y` at `point`."""
    tgt = readout.read(model, y, [point])[point].numpy()
    if maps is None:
        src = readout.read(model, x, [point])[point].numpy()
    else:
        with apply_lineas(model, maps):
            src = readout.read(model, x, [point])[point].numpy()
    return sum(wasserstein_distance(src[:, k], tgt[:, k]) for k in range(src.shape[1]))


def test_wasserstein_1d_matches_sorted_samples_and_scipy_quantiles():
    x, y = torch.randn(50, 3), torch.randn(50, 3) * 2 + 1
    expected = ((x.sort(0).values - y.sort(0).values) ** 2).mean(0)
    assert torch.allclose(wasserstein_1d(x, y.sort(0).values), expected)
    # unequal sizes: a target of each value repeated 3 times has the same quantile function
    rep = y.repeat_interleave(3, 0)
    assert torch.allclose(wasserstein_1d(x, rep.sort(0).values), expected, atol=0.05 * float(expected.max()))


def test_learned_map_transports_gaussians():
    model = Chain()
    src, tgt = _gauss(N, torch.zeros(D), torch.ones(D), 0), _gauss(N, MU, SIGMA, 1)
    maps = fit_lineas(model, src, tgt, ["first", "second"], steps=300, lr=0.05, lambda_group=0.0, progress=False)
    for point in ("first", "second"):
        before, after = _w1(model, src, tgt, point), _w1(model, src, tgt, point, maps)
        assert after <= 0.1 * before, (point, before, after)
    # the Gaussian ground truth: omega = sigma_t / sigma_s, beta = mu_t - omega * mu_s (sampling error ~ 1/sqrt(N))
    np.testing.assert_allclose(maps.omega["first"].numpy(), SIGMA.numpy(), rtol=0.12)
    np.testing.assert_allclose(maps.beta["first"].numpy(), MU.numpy(), atol=0.25)
    assert maps.params["loss_after"] < 0.05 * maps.params["loss_before"]


def test_end_to_end_fit_leaves_a_downstream_layer_at_identity():
    """Once `first` is transported, `second` already matches: with the group penalty its map is the
    identity exactly (the proximal step sets it to 0), yet `second` is transported too."""
    model = Chain()
    src, tgt = _gauss(N, torch.zeros(D), torch.ones(D), 0), _gauss(N, MU, SIGMA, 1)
    maps = fit_lineas(model, src, tgt, ["first", "second"], steps=300, lr=0.05, lambda_group=0.25, progress=False)
    assert torch.equal(maps.omega["second"], torch.ones(D)) and torch.equal(maps.beta["second"], torch.zeros(D))
    assert maps.active_dims() == {"first": D, "second": 0}
    for point in ("first", "second"):
        assert _w1(model, src, tgt, point, maps) <= 0.1 * _w1(model, src, tgt, point)


def test_group_penalty_keeps_a_matching_layer_at_identity():
    """Branch `b` has the same distribution on both sides (other samples). Its finite-sample mismatch
    is O(1/sqrt(N)) in standard deviations, well below lambda_group / 2 = 0.125, so it stays at the
    identity exactly; without the penalty the same noise moves it."""
    model = TwoBranch()
    src = torch.cat([_gauss(N, torch.zeros(D), torch.ones(D), 0), _gauss(N, torch.zeros(D), torch.ones(D), 2)], 1)
    tgt = torch.cat([_gauss(N, MU, SIGMA, 1), _gauss(N, torch.zeros(D), torch.ones(D), 3)], 1)
    sparse = fit_lineas(model, src, tgt, ["a", "b"], steps=300, lr=0.05, lambda_group=0.25, progress=False)
    assert torch.equal(sparse.omega["b"], torch.ones(D)) and torch.equal(sparse.beta["b"], torch.zeros(D))
    assert _w1(model, src, tgt, "a", sparse) <= 0.1 * _w1(model, src, tgt, "a")
    dense = fit_lineas(model, src, tgt, ["a", "b"], steps=300, lr=0.05, lambda_group=0.0, progress=False)
    assert float((dense.omega["b"] - 1).abs().max()) > 1e-3


def test_l1_penalty_keeps_matching_dimensions_at_identity():
    """Dimensions 3..5 of branch `a` already match (mean 0, sd 1 on both sides): with the per-dimension
    L1 term they stay at identity exactly while dimensions 0..2 are transported."""
    model = TwoBranch()
    mu, sigma = MU.clone(), SIGMA.clone()
    mu[3:], sigma[3:] = 0.0, 1.0
    src = torch.cat([_gauss(N, torch.zeros(D), torch.ones(D), 0), _gauss(N, torch.zeros(D), torch.ones(D), 2)], 1)
    tgt = torch.cat([_gauss(N, mu, sigma, 1), _gauss(N, torch.zeros(D), torch.ones(D), 3)], 1)
    maps = fit_lineas(model, src, tgt, ["a"], steps=300, lr=0.05, lambda_group=0.0, lambda_l1=0.2, progress=False)
    assert torch.equal(maps.omega["a"][3:], torch.ones(3)) and torch.equal(maps.beta["a"][3:], torch.zeros(3))
    np.testing.assert_allclose(maps.beta["a"][:3].numpy(), mu[:3].numpy(), atol=0.35)


# ------------------------------------------------------------------------- tiny transformer
P0, P1, P2 = (f"blocks.{i}.hook_resid_post" for i in range(3))
POS = ["I love this film, it is wonderful.", "The sun is hot", "A bird sang in the tree.", "Paris is the capital"]
NEG = ["I hate this film, it is terrible.", "The snow is cold", "The dog ran.", "Rome is the capital of Italy."]


def _planted(tiny_model, d=64):
    g = torch.Generator().manual_seed(5)
    omega, beta = 1 + 0.3 * torch.randn(d, generator=g), 0.5 * torch.randn(d, generator=g)
    return LinEASMaps({P1: omega}, {P1: beta}, tiny_model.interp_name)


def test_apply_changes_exactly_the_edited_point(tiny_model, tmp_path):
    maps = _planted(tiny_model)
    maps.save(tmp_path / "m")
    assert is_lineas_folder(tmp_path / "m") and not is_lineas_folder(tmp_path)
    back = LinEASMaps.load(tmp_path / "m")
    assert torch.equal(back.omega[P1], maps.omega[P1]) and torch.equal(back.beta[P1], maps.beta[P1])

    hm = HookManager(tiny_model)
    tokens = tiny_model.to_tokens("The cat sat on the mat")
    points = [P0, "blocks.1.hook_resid_mid", P1, P2]
    clean = hm.collect(tokens, points)
    clean_logits = tiny_model(tokens)
    for strength in (1.0, 0.5):
        with apply_lineas(tiny_model, tmp_path / "m", strength=strength):
            steered = hm.collect(tokens, points)
        assert torch.equal(steered[P0], clean[P0]) and torch.equal(steered["blocks.1.hook_resid_mid"], clean["blocks.1.hook_resid_mid"])
        expected = clean[P1] + strength * ((maps.omega[P1] - 1) * clean[P1] + maps.beta[P1])
        torch.testing.assert_close(steered[P1], expected, rtol=1e-5, atol=1e-5)
        assert float((steered[P2] - clean[P2]).abs().max()) > 1e-3
    with apply_lineas(tiny_model, maps, strength=0.0):
        assert torch.equal(tiny_model(tokens), clean_logits)
    assert hm.n_active == 0 and torch.equal(tiny_model(tokens), clean_logits)


def test_fit_on_tiny_model_lowers_the_transport_loss(tiny_model, tmp_path):
    maps = fit_lineas(tiny_model, NEG, POS, "resid_post:0-1", steps=60, lr=0.05, lambda_group=0.0, progress=False)
    assert maps.points == [P0, P1] and maps.method == "lineas"
    assert maps.params["loss_after"] < 0.5 * maps.params["loss_before"]
    assert len(maps.source["text_hashes"]) == len(POS) + len(NEG)
    # the recorded loss is the loss of the pooled steered activations, read independently here
    tgt = readout.read(tiny_model, POS, maps.points, pool="mean")
    with apply_lineas(tiny_model, maps):
        src = readout.read(tiny_model, NEG, maps.points, pool="mean")
    recomputed = sum(float(wasserstein_1d(src[p], tgt[p].sort(0).values).mean() / tgt[p].var(0, unbiased=False).mean())
                     for p in maps.points)
    assert recomputed == pytest.approx(maps.params["loss_after"], rel=1e-3)
    maps.save(tmp_path / "fit")
    assert LinEASMaps.load(tmp_path / "fit").manifest == maps.manifest


def test_mismatched_maps_are_refused(tiny_model, tmp_path):
    narrow = LinEASMaps({P1: torch.ones(32)}, {P1: torch.zeros(32)}, tiny_model.interp_name)
    with pytest.raises(InterpError, match="width"):
        with apply_lineas(tiny_model, narrow):
            pass
    with pytest.raises(InterpError, match="missing"):
        LinEASMaps.load(tmp_path)
    with pytest.raises(InterpError, match="unknown pool"):
        fit_lineas(tiny_model, NEG, POS, P1, pool="max", progress=False)

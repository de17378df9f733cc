"""GCAV on a residual stack whose concept is a known direction at every layer, and on rotated CAV sets."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats
from torch import nn

from interp.errors import InterpError
from probes.gcav import GlobalCAV, draw_sets, gcav

D, SIGMAS = 24, (0.5, 2.0, 0.5, 2.0)
POINTS = [f"blocks.{i}" for i in range(len(SIGMAS))]


class Block(nn.Module):
    """h -> R (h + sigma P tanh(G P h)) with P the projection off the planted direction u_in.

    u's coefficient passes unchanged and nothing else depends on it, so the planted direction
    after this block is exactly R u_in; the tanh part adds layer-specific nuisance variance.
    """

    def __init__(self, u_in: torch.Tensor, sigma: float, g: torch.Generator):
        super().__init__()
        self.register_buffer("P", torch.eye(D) - torch.outer(u_in, u_in))
        self.register_buffer("G", 2 * torch.randn(D, D, generator=g) / D**0.5)
        self.register_buffer("R", torch.linalg.qr(torch.randn(D, D, generator=g))[0])
        self.sigma = sigma

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h + self.sigma * torch.tanh(h @ self.P @ self.G.T) @ self.P) @ self.R.T


class PlantedStack(nn.Module):
    """Four blocks, each rotating the space; the planted direction at block l is `dirs[l]`.

    Output 1 is a sum of ReLU units whose weights are `0.3 u + c` and `0.3 u - c` (c orthogonal
    to u): the target's gradient along u is positive wherever a unit fires, and its component
    off u is symmetric, so a fixed direction other than u moves the target as often up as down.
    """

    def __init__(self, seed: int = 0, n_head: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(D, generator=g)
        self.u_in = u / u.norm()
        u, blocks, self.dirs = self.u_in, [], []
        for s in SIGMAS:
            blocks.append(Block(u, s, g))
            u = blocks[-1].R @ u
            self.dirs.append(u.clone())
        self.blocks = nn.ModuleList(blocks)
        c = torch.randn(n_head, D, generator=g)
        c = c - (c @ u)[:, None] * u
        self.register_buffer("B", torch.cat([c, -c]) + 0.3 * u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        s = torch.relu(x @ self.B.T).sum(1)
        return torch.stack([-s, s], 1)


@pytest.fixture(scope="module")
def planted():
    net = PlantedStack(seed=0).eval()
    g = torch.Generator().manual_seed(100)
    concept = torch.randn(60, D, generator=g) + 3.0 * net.u_in
    pool = torch.randn(1000, D, generator=g)
    class_inputs = torch.randn(200, D, generator=g)
    fake = torch.randn(60, D, generator=g)  # drawn like the random pool: no concept at all
    return net, concept, pool, class_inputs, fake


@pytest.fixture(scope="module")
def planted_result(planted):
    net, concept, pool, class_inputs, _ = planted
    return gcav(net, concept, pool, class_inputs, target=1, points=POINTS, n_runs=10, seed=0)


def test_global_cav_recovers_the_planted_direction_at_every_layer(planted, planted_result):
    net, *_ = planted
    r = planted_result
    for i, p in enumerate(POINTS):
        decoded = torch.tensor(r["directions"][p])
        assert decoded.norm().item() == pytest.approx(1.0, abs=1e-5)
        assert float(decoded @ net.dirs[i]) >= 0.9, p


def test_global_cav_steadies_tcav_scores_across_layers(planted_result):
    r = planted_result
    assert r["cross_layer_variance_after"] < r["cross_layer_variance_before"]
    # recomputed from the per-point scores: the variance over points of each run's scores, averaged
    after = np.array([r["per_point"][p]["scores_after"] for p in POINTS])
    before = np.array([r["per_point"][p]["scores_before"] for p in POINTS])
    assert r["cross_layer_variance_after"] == pytest.approx(after.var(0, ddof=1).mean())
    assert r["cross_layer_variance_before"] == pytest.approx(before.var(0, ddof=1).mean())
    g = r["global"]
    np.testing.assert_allclose(g["scores"], after.mean(0))
    assert g["mean"] >= 0.75 and g["significant"] and g["p_value"] < 1e-3
    assert g["p_value"] == pytest.approx(stats.ttest_ind(g["scores"], g["random_scores"]).pvalue)
    assert abs(g["random_mean"] - 0.5) < 0.1
    weights = [r["per_point"][p]["attention_weight"] for p in POINTS]
    assert sum(weights) == pytest.approx(1.0, abs=1e-6)


def test_a_random_concept_stays_insignificant(planted):
    net, _, pool, class_inputs, fake = planted
    r = gcav(net, fake, pool, class_inputs, target=1, points=POINTS, n_runs=10, seed=0)
    g = r["global"]
    assert not g["significant"] and g["p_value"] > 0.05
    assert abs(g["mean"] - 0.5) < 0.1


def test_alignment_undoes_per_layer_rotations():
    """Concept vectors seen through a different isometry at each layer: the maps must find them again."""
    rng = np.random.default_rng(0)
    k, r, labels = 6, 6, [0, 0, 0, 1, 2, 3, 4, 5]  # concept 0 has three runs
    base = rng.standard_normal((k, r))
    items = base[labels] + 0.05 * rng.standard_normal((len(labels), r))
    cavs, maps = {}, {}
    for name, d in (("a", 20), ("b", 32), ("c", 16)):
        maps[name] = np.linalg.qr(rng.standard_normal((d, r)))[0]  # (d, r) orthonormal columns
        cavs[name] = torch.tensor(items @ maps[name].T)
    fuser = GlobalCAV().fit(cavs, labels)
    assert fuser.rank_ == 6
    emb = fuser.embed(cavs)  # (n_items, L, r)
    cross = torch.einsum("ilr,imr->ilm", emb, emb)  # same item, two layers
    assert cross.min().item() >= 0.99
    assert fuser.alignment_["same_item_cosine"] >= 0.999 and fuser.alignment_["retrieval"] == 1.0
    assert fuser.alignment_["raw"] is None  # widths differ: raw CAVs are not comparable
    g, w = fuser.fuse(cavs)
    assert torch.allclose(w.sum(1), torch.ones(len(labels), dtype=w.dtype))
    decoded = fuser.decode(g)
    for name in cavs:
        truth = torch.nn.functional.normalize(cavs[name].float(), dim=1)
        assert (decoded[name] * truth).sum(1).min().item() >= 0.99


def test_save_writes_results_directions_and_report(planted, tmp_path):
    net, concept, pool, class_inputs, _ = planted
    r = gcav(net, concept[:20], pool, class_inputs[:50], target=1, points=POINTS[:2], n_runs=3, out_dir=tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["global"]["scores"] == pytest.approx(r["global"]["scores"])
    assert set(data["per_point"]) == set(POINTS[:2])
    assert data["manifest"]["widths"] == {POINTS[0]: D, POINTS[1]: D} and "directions" not in data
    vectors = load_file(tmp_path / "directions.safetensors")
    assert torch.allclose(vectors[POINTS[1]], torch.tensor(r["directions"][POINTS[1]]))
    assert "plotly" in (tmp_path / "report.html").read_text()


def test_on_a_transformer(tiny_model):
    texts = [f"The team won game number {i} at the stadium" for i in range(8)]
    pool = [f"The office on floor {i} has a new printer" for i in range(40)]
    prompts = ["The match ended and", "Yesterday the crowd"]
    r = gcav(tiny_model, texts, pool, prompts, target=" the", points="resid_post:0-2", n_runs=3)
    assert r["points"] == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    for s in r["per_point"].values():
        assert all(v in (0.0, 0.5, 1.0) for v in s["scores_after"])  # two class inputs
        assert len(s["random_scores_after"]) == 3


def test_bad_inputs(planted):
    net, concept, pool, class_inputs, _ = planted
    with pytest.raises(InterpError, match="at least 2 points"):
        gcav(net, concept, pool, class_inputs, target=1, points="blocks.0")
    with pytest.raises(InterpError, match="n_runs"):
        gcav(net, concept, pool, class_inputs, target=1, points=POINTS, n_runs=1)
    with pytest.raises(InterpError, match="larger pool"):
        draw_sets(pool[:10], 3, 20, 0)
    _, sets = draw_sets(pool, 4, 100, 0)
    assert len(np.unique(np.concatenate(sets))) == 400  # disjoint when the pool allows
    with pytest.raises(InterpError, match="two concepts"):
        GlobalCAV().fit({"a": torch.randn(3, 4), "b": torch.randn(3, 4)}, [0, 0, 0])

"""NMF concepts: planted non-negative parts are found again, and a concept's importance is its derivative."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.optimize import linear_sum_assignment
from torch import nn

from interp.errors import InterpError
from probes import directional_derivatives
from probes.nmf_concepts import NMFConcepts, fraction_of_variance_explained, fve_by_k, nmf_concepts

K, D = 5, 40


def planted_parts(seed=0, n=400):
    """Activations `W @ H` `(n, D)`: K parts (rows of H) with their own support, sparse non-negative W."""
    rng = np.random.default_rng(seed)
    H = 0.1 * rng.random((K, D))
    for j in range(K):
        H[j, j * 8 : (j + 1) * 8] += 1.0 + rng.random(8)
    W = rng.exponential(1.0, (n, K)) * (rng.random((n, K)) < 0.5)
    return W, H


def matched_cosines(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Cosines of the Hungarian-matched pairs of rows (maximising total cosine)."""
    a = found / np.linalg.norm(found, axis=1, keepdims=True)
    b = truth / np.linalg.norm(truth, axis=1, keepdims=True)
    cos = a @ b.T
    rows, cols = linear_sum_assignment(-cos)
    return cos[rows, cols], cols


def test_nmf_finds_planted_parts():
    W, H = planted_parts()
    X = W @ H
    est = NMFConcepts(k=K, nonneg="none").fit(X)
    assert est.fve_ >= 0.95 and est.fve_activation_ == pytest.approx(est.fve_)
    # the same number, computed independently from the factors
    S = est.transform(X)
    resid = ((X - S @ est.components_) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()
    assert est.fve(X) == pytest.approx(1 - resid, abs=1e-6)
    cos, _ = matched_cosines(est.components_, H)
    assert cos.min() >= 0.9
    cos_dir, _ = matched_cosines(est.directions_, H)  # the unit directions are the same vectors
    assert cos_dir.min() >= 0.9


def test_signed_activations_split_into_halves_lose_nothing():
    """Signed parts (D columns with either sign): `split` recovers them; `clip` loses the negative half."""
    W, H = planted_parts(seed=1)
    signs = np.where(np.random.default_rng(2).random(D) < 0.5, -1.0, 1.0)
    Hs = H * signs  # each part has positive and negative entries
    X = W @ Hs
    split = NMFConcepts(k=K, nonneg="split").fit(X)
    assert split.components_.shape == (K, 2 * D) and (split.components_ >= 0).all()
    assert split.fve_activation_ >= 0.95
    cos, _ = matched_cosines(split.directions_, Hs)
    assert cos.min() >= 0.9
    np.testing.assert_allclose(split.inverse_transform(split.scores_),
                               split.scores_ @ (split.components_[:, :D] - split.components_[:, D:]))
    clip = NMFConcepts(k=K, nonneg="clip").fit(X)
    assert clip.fve_activation_ < 0.8  # the negative entries are gone
    shift = NMFConcepts(k=K, nonneg="shift").fit(X)
    np.testing.assert_allclose(shift.shift_, X.min(0))
    assert shift.fve_activation_ == pytest.approx(
        fraction_of_variance_explained(X, shift.scores_ @ shift.components_ + X.min(0)))
    with pytest.raises(InterpError, match="non-negative"):
        NMFConcepts(k=K, nonneg="none").fit(X)


def test_fve_grows_with_k():
    W, H = planted_parts(seed=3)
    X = W @ H + 0.05 * np.random.default_rng(4).random((400, D))
    curve = fve_by_k(X, [1, 3, 5], nonneg="none")
    assert curve[1]["fve"] < curve[3]["fve"] < curve[5]["fve"]
    assert curve[5]["fve"] >= 0.95


class PartsNet(nn.Module):
    """hidden = relu(w @ H) = w @ H for non-negative w; output 1 = c . hidden with c = H[0] - H[2]."""

    def __init__(self, H: np.ndarray):
        super().__init__()
        self.enc = nn.Linear(K, D, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(D, 2, bias=False)
        with torch.no_grad():
            self.enc.weight.copy_(torch.tensor(H.T, dtype=torch.float32))
            c = torch.tensor(H[0] - H[2], dtype=torch.float32)
            self.head.weight.copy_(torch.stack([-c, c]))

    def forward(self, w):
        return self.head(self.act(self.enc(w)))


def test_on_a_plain_module_importance_and_top_inputs(tmp_path):
    W, H = planted_parts(seed=5, n=300)
    net = PartsNet(H).eval()
    inputs = torch.tensor(W, dtype=torch.float32)
    r = nmf_concepts(net, inputs, "act", k=K, target=1, nonneg="none", top_n=10, out_dir=tmp_path)
    assert r["n_rows"] == 300 and r["width"] == D and r["fve"] >= 0.95
    directions = np.array(r["directions"])
    cos, part_of = matched_cosines(directions, H)
    assert cos.min() >= 0.9
    c = H[0] - H[2]
    for concept, part in zip(r["concepts"], part_of):
        # the gradient of output 1 at the hidden layer is c everywhere
        expected = float(directions[concept["index"]] @ c)
        assert concept["mean_derivative"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert concept["tcav_score"] == (1.0 if expected > 0 else 0.0)
        # its top inputs are those with the most of its part
        top = {t["input"] for t in concept["top"]}
        assert len(top & set(np.argsort(-W[:, part])[:10].tolist())) >= 7
    raised = {part for concept, part in zip(r["concepts"], part_of) if concept["tcav_score"] == 1.0}
    assert 0 in raised and 2 not in raised
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["fve"] == pytest.approx(r["fve"]) and "directions" not in data
    assert load_file(tmp_path / "directions.safetensors")["directions"].shape == (K, D)
    assert "plotly" in (tmp_path / "report.html").read_text()


def test_on_a_transformer_mlp(tiny_model):
    texts = ["The cat sat on the mat.", "A dog ran in the park.", "Rain fell on the town all day.",
             "She scored a goal in the match.", "The soup was hot and salty.", "He read a long book."]
    point = "blocks.1.mlp.hook_post"
    r = nmf_concepts(tiny_model, texts, point, k=4, target=" the", top_n=3)
    n_tokens = sum(len(tiny_model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert r["n_rows"] == n_tokens and r["width"] == tiny_model.cfg.d_mlp
    assert 0.0 < r["fve_activation"] <= 1.0
    for concept in r["concepts"]:
        assert "[[" in concept["top"][0]["context"]
        assert [t["score"] for t in concept["top"]] == sorted((t["score"] for t in concept["top"]), reverse=True)
    # importance equals the directional derivative computed by probes.cav
    d0 = torch.tensor(r["directions"][0], dtype=torch.float32)
    dd = directional_derivatives(tiny_model, texts, point, d0, " the")
    assert r["concepts"][0]["mean_derivative"] == pytest.approx(dd.mean().item(), rel=1e-4, abs=1e-6)
    assert r["concepts"][0]["tcav_score"] == pytest.approx((dd > 0).float().mean().item())
    text_level = nmf_concepts(tiny_model, texts, point, k=2, level="text")
    assert text_level["n_rows"] == len(texts) and text_level["concepts"][0]["top"][0]["text"] in texts


def test_bad_inputs(tiny_model):
    with pytest.raises(InterpError, match="k=50"):
        NMFConcepts(k=50).fit(np.random.rand(10, 8))
    with pytest.raises(InterpError, match="unknown nonneg"):
        NMFConcepts(nonneg="abs").fit(np.random.rand(10, 8))
    with pytest.raises(InterpError, match="one point at a time"):
        nmf_concepts(tiny_model, ["a b c"], "mlp_out:0-1")
    with pytest.raises(InterpError, match="unknown level"):
        nmf_concepts(tiny_model, ["a b c"], "blocks.0.mlp.hook_post", level="sentence")


@pytest.mark.slow
def test_gated_mlp_of_smollm2_needs_the_sign_split(smol):
    """SmolLM2's hook_post is silu(gate) * up: clipping it at zero throws most of it away; the split keeps it."""
    from interp import readout
    from interp.data import builtin_dataset_path
    from probes.tcav import read_lines

    texts = read_lines(builtin_dataset_path("concepts/sports.txt"))[:10] + read_lines(builtin_dataset_path("concepts/food.txt"))[:10]
    point = "blocks.12.mlp.hook_post"
    acts = readout.read_tokens(smol, texts, point)[0][point].double().numpy()
    assert 0.3 < (acts < 0).mean() < 0.7
    split = NMFConcepts(k=10, nonneg="split").fit(acts)
    clip = NMFConcepts(k=10, nonneg="clip").fit(acts)
    print(f"\nFVE in activation space, k=10: split {split.fve_activation_:.3f}, clip {clip.fve_activation_:.3f}")
    assert split.fve_activation_ > clip.fve_activation_ + 0.1

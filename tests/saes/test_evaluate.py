"""SAE evaluation on the tiny model: numbers checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp import HookManager
from interp.store import build_store
from interp.data import token_batches
from interp.errors import InterpError
from saes.architectures import SAEConfig, make_sae
from saes.evaluate import density_figure, evaluate_sae, write_eval_report

POINT = "blocks.1.hook_resid_post"
CTX = 24
TOKENS = 600

TEXT = "\n\n".join(
    f"Document {i}. The cat sat on the mat while the dog ran in the park number {i}. "
    f"Paris is the capital of France and Rome is the capital of Italy; the sun is hot, snow is cold {i * 7}."
    for i in range(40)
)


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def identity_sae(d: int):
    """ReLU SAE with d_sae = 2d that reconstructs exactly: relu(x) - relu(-x) = x."""
    sae = make_sae(SAEConfig(d_in=d, d_sae=2 * d, arch="relu", hook_name=POINT, context_size=CTX))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def random_relu_sae(d: int, d_sae: int = 96, seed: int = 0):
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(d_in=d, d_sae=d_sae, arch="relu", hook_name=POINT, context_size=CTX))
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae) * 0.5)
        sae.b_dec.copy_(torch.randn(d) * 0.1)
    return sae


def harvest_by_hand(model, data):
    """Non-BOS activations at POINT for the same contexts evaluate_sae reads: `(n, d)`."""
    hm = HookManager(model)
    rows = []
    for tokens in token_batches(model, data, CTX, 8, TOKENS):
        rows.append(hm.collect(tokens, POINT)[POINT][:, 1:].reshape(-1, 64))
    return torch.cat(rows).double().numpy()


def test_identity_splice_leaves_loss_unchanged(tiny_model, data):
    tokens = next(token_batches(tiny_model, data, CTX, 4, 4 * (CTX - 1)))
    hm = HookManager(tiny_model)
    with torch.no_grad():
        base = tiny_model(tokens, return_type="loss")
        with hm.splice(POINT, lambda x: x):
            same = tiny_model(tokens, return_type="loss")
    assert float(same) == float(base)
    res = evaluate_sae(identity_sae(64), tiny_model, data, TOKENS, progress=False)
    assert res["n_tokens"] == TOKENS and res["lm_tokens"] == TOKENS
    assert abs(res["ce_loss_spliced"] - res["ce_loss_clean"]) < 1e-6
    assert abs(res["ce_loss_ablated"] - res["ce_loss_clean"]) > 1e-3  # the point matters, so the ratio is defined
    assert res["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert res["mse"] < 1e-12 and res["fve"] == pytest.approx(1.0, abs=1e-9)
    # Each dimension is carried by exactly one of its two latents (or none when it is exactly 0).
    assert res["l0"] == pytest.approx(64, abs=0.5)


def test_zero_sae_recovers_nothing(tiny_model, data):
    sae = make_sae(SAEConfig(d_in=64, d_sae=32, arch="relu", hook_name=POINT, context_size=CTX))
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    res = evaluate_sae(sae, tiny_model, data, TOKENS, progress=False)
    assert res["ce_loss_spliced"] == pytest.approx(res["ce_loss_ablated"], abs=1e-6)
    assert res["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert res["fve"] == pytest.approx(1 - harvest_fvu_of_zero(tiny_model, data), abs=1e-9)


def harvest_fvu_of_zero(model, data):
    x = harvest_by_hand(model, data)
    return (x**2).sum() / ((x - x.mean(0)) ** 2).sum()


def test_metrics_match_numpy(tiny_model, data):
    sae = random_relu_sae(64)
    with torch.no_grad():
        sae.b_enc[:5] = -1e6  # never fire
        sae.b_enc[5:9] = 1e6  # always fire
    res = evaluate_sae(sae, tiny_model, data, TOKENS, progress=False)
    x = harvest_by_hand(tiny_model, data)
    W_enc, b_enc = sae.W_enc.detach().double().numpy(), sae.b_enc.detach().double().numpy()
    W_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    z = np.maximum((x - b_dec) @ W_enc + b_enc, 0)
    x_hat = z @ W_dec + b_dec
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    density = (z > 0).mean(0)
    assert res["n_tokens"] == x.shape[0] == TOKENS
    assert res["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert res["fve"] == pytest.approx(1 - fvu, rel=1e-4)
    assert res["mse"] == pytest.approx(((x - x_hat) ** 2).mean(), rel=1e-4)
    assert res["l0"] == pytest.approx((z > 0).sum(1).mean(), rel=1e-6)
    np.testing.assert_allclose(res["feature_density"], density, atol=1e-9)
    assert res["dead_fraction_eval_window"] == pytest.approx((density == 0).mean()) and res["eval_window_tokens"] == res["n_tokens"]
    assert res["dense_fraction"] == pytest.approx((density > 0.1).mean())
    assert res["n_dead_eval_window"] >= 5 and res["n_dense"] >= 4
    assert 0 < res["dead_fraction_eval_window"] < 1 and 0 < res["dense_fraction"] < 1


def test_skip_contexts_evaluates_the_following_text(tiny_model, data):
    sae = random_relu_sae(64, seed=5)
    res = evaluate_sae(sae, tiny_model, data, 200, skip_contexts=5, progress=False)
    hm = HookManager(tiny_model)
    rows = [hm.collect(t, POINT)[POINT][:, 1:].reshape(-1, 64) for t in token_batches(tiny_model, data, CTX, 8, None)]
    x = torch.cat(rows)[5 * (CTX - 1): 5 * (CTX - 1) + 200]
    with torch.no_grad():
        l0 = (sae.encode(x) > 0).sum(-1).double().mean()
    assert res["n_tokens"] == 200 and res["l0"] == pytest.approx(float(l0), rel=1e-9)


def test_store_and_text_paths_agree(tiny_model, data, tmp_path):
    sae = random_relu_sae(64, seed=3)
    store = build_store(tiny_model, POINT, data, TOKENS, tmp_path / "store", ctx_len=CTX, progress=False)
    from_store = evaluate_sae(sae, tiny_model, store, TOKENS, progress=False)
    from_text = evaluate_sae(sae, tiny_model, data, TOKENS, progress=False)
    for key in ("n_tokens", "mse", "fve", "l0", "dead_fraction_eval_window", "dense_fraction", "ce_loss_clean", "ce_loss_spliced", "ce_loss_recovered"):
        assert from_store[key] == pytest.approx(from_text[key], rel=1e-5), key


def test_report_and_figure(tiny_model, data, tmp_path):
    res = evaluate_sae(random_relu_sae(64), tiny_model, data, 200, progress=False)
    html_path, json_path = write_eval_report(res, tmp_path / "out" / "report.html")
    saved = json.loads(json_path.read_text())
    assert saved["fve"] == res["fve"] and len(saved["feature_density"]) == 96
    page = html_path.read_text()
    assert "CE loss recovered" in page and "ce_loss_recovered" in page
    assert '<script src="https://' not in page and "plotly" in page.lower()
    fig = density_figure([0.0, 0.0, 0.001, 0.01, 0.5])
    np.testing.assert_allclose(fig.data[0].x, np.log10([0.001, 0.01, 0.5]))
    assert "2 dead" in fig.layout.title.text


def test_bad_inputs_raise(tiny_model, data):
    sae = random_relu_sae(64)
    with pytest.raises(InterpError, match="trained on blocks.1.hook_resid_post"):
        evaluate_sae(sae, tiny_model, data, 100, point="blocks.2.hook_resid_post", progress=False)
    with pytest.raises(InterpError, match="positive"):
        evaluate_sae(sae, tiny_model, data, 0, progress=False)
    narrow = make_sae(SAEConfig(d_in=32, d_sae=64, arch="relu", hook_name=POINT))
    with pytest.raises(InterpError, match="width blocks.1.hook_resid_post 32 vs 64"):
        evaluate_sae(narrow, tiny_model, data, 100, progress=False)


@pytest.mark.slow
def test_identity_splice_on_smollm2(smol):
    """On the real model: an exact SAE changes nothing, and zeroing layer 6's residual costs a lot."""
    point = "blocks.6.hook_resid_post"
    sae = identity_sae(576)
    sae.cfg.hook_name = point
    res = evaluate_sae(sae, smol, "builtin", 254, ctx_len=128, batch_size=2, progress=False)
    assert res["n_tokens"] == 254 and res["fve"] == pytest.approx(1.0, abs=1e-9)
    assert abs(res["ce_loss_spliced"] - res["ce_loss_clean"]) < 1e-5
    assert res["ce_loss_ablated"] > res["ce_loss_clean"] + 1.0
    assert res["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5)

"""Feature analysis on the tiny model: top contexts against a brute-force pass, logit effects by hand."""

from __future__ import annotations

import json
import re

import pytest
import torch

from interp import HookManager
from interp.data import token_batches
from interp.errors import InterpError
from saes.architectures import SAEConfig, make_sae
from saes.features import analyze_features, logit_weights, top_activations, write_dashboard

POINT = "blocks.2.hook_resid_post"
CTX = 20
TOKENS = 500
TEXT = "\n\n".join(
    f"Note {i}: the bird sang in the tree, I love this film {i}, it is wonderful; "
    f"the dog ran in the park and {i * 3} cats sat on the mat. I hate this film, it is terrible."
    for i in range(30)
)


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


@pytest.fixture()
def sae():
    torch.manual_seed(0)
    s = make_sae(SAEConfig(d_in=64, d_sae=40, arch="topk", k=4, hook_name=POINT, context_size=CTX))
    with torch.no_grad():
        s.b_enc.copy_(torch.randn(40) * 0.3)
        s.W_dec.mul_(torch.rand(40, 1) + 0.5)
        s.b_enc[7] = -1e6  # latent 7 never fires
    return s


def brute_force(model, sae, data):
    """z `(n_contexts, ctx, d_sae)` for the same contexts the scan reads (BOS rows zeroed)."""
    hm = HookManager(model)
    out = []
    for tokens in token_batches(model, data, CTX, 8, TOKENS):
        acts = hm.collect(tokens, POINT)[POINT]
        with torch.no_grad():
            z = sae.encode(acts)
        z[:, 0] = 0
        out.extend(z)
    return out


def test_top_contexts_hold_the_maximum_activations(tiny_model, sae, data):
    latents = [0, 3, 7, 11, 39]
    scan = top_activations(sae, tiny_model, data, TOKENS, latents=latents, n_top=6, before=3, after=2, ctx_len=CTX, progress=False)
    z = brute_force(tiny_model, sae, data)
    flat = torch.cat([c[1:] for c in z])  # non-BOS tokens
    assert scan["n_tokens"] == flat.shape[0] == TOKENS
    assert torch.equal(scan["fired"], (flat > 0).sum(0))
    for row, latent in enumerate(latents):
        expected = flat[:, latent].topk(6).values
        expected = torch.where(expected > 0, expected, torch.zeros_like(expected))
        torch.testing.assert_close(scan["values"][row], expected, rtol=0, atol=1e-5)
        for j in range(6):
            c, p = int(scan["context"][row, j]), int(scan["pos"][row, j])
            if expected[j] == 0:
                assert c == -1 and p == -1
                continue
            assert p >= 1
            assert float(z[c][p, latent]) == pytest.approx(float(scan["values"][row, j]), abs=1e-5)
            # the window holds the latent's activations at p-3 .. p+2 (zero beyond the context)
            want = torch.zeros(6)
            lo, hi = max(0, p - 3), min(z[c].shape[0], p + 3)
            want[lo - (p - 3): hi - (p - 3)] = z[c][lo:hi, latent]
            torch.testing.assert_close(scan["window"][row, j], want, rtol=0, atol=1e-5)
    assert (scan["values"][latents.index(7)] == 0).all()


def test_logit_effects_match_hand_computation(tiny_model, sae):
    W_U = tiny_model.unembed._original_component.weight.detach().t()  # the HF lm_head, (d_model, d_vocab)
    norm_w = tiny_model.ln_final._original_component.weight.detach().clone()  # restored after
    plain = logit_weights(sae, tiny_model, [2, 5], use_final_norm=False)
    torch.testing.assert_close(plain, sae.W_dec.detach()[[2, 5]] @ W_U, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        tiny_model.ln_final._original_component.weight.mul_(torch.linspace(0.5, 2.0, 64))
    try:
        scaled = logit_weights(sae, tiny_model, [2, 5], use_final_norm=True)
        expected = (sae.W_dec.detach()[[2, 5]] * tiny_model.ln_final._original_component.weight.detach()) @ W_U
    finally:
        with torch.no_grad():
            tiny_model.ln_final._original_component.weight.copy_(norm_w)
    torch.testing.assert_close(scaled, expected, rtol=1e-5, atol=1e-5)


def test_analysis_and_dashboard(tiny_model, sae, data, tmp_path):
    res = analyze_features(sae, tiny_model, data, TOKENS, latents=None, n_top=4, n_logits=5, ctx_len=CTX, progress=False)
    assert [e["index"] for e in res["latents"]] == list(range(40))
    assert len(res["feature_density"]) == 40 and res["feature_density"][7] == 0
    # top-k SAE with k=4: densities sum to at most k (ties at zero aside)
    assert sum(res["feature_density"]) == pytest.approx(4.0, abs=0.05)
    lat0 = res["latents"][0]
    logits = logit_weights(sae, tiny_model, [0])[0]
    tok = tiny_model.tokenizer
    assert [t for t, _ in lat0["promoted"]] == [tok.decode([int(i)]) for i in logits.topk(5).indices]
    assert lat0["promoted"][0][1] == pytest.approx(float(logits.max()), abs=1e-4)
    assert lat0["suppressed"][0][1] == pytest.approx(float(logits.min()), abs=1e-4)
    alive = [e for e in res["latents"] if e["examples"]]
    assert alive, "no requested latent fired"
    ex = alive[0]["examples"][0]
    assert ex["acts"][ex["center"]] == pytest.approx(ex["value"], abs=1e-4) and ex["value"] == alive[0]["max_act"]
    assert ex["value"] >= max(e["value"] for e in alive[0]["examples"])
    eos = tok.decode([tok.eos_token_id])  # also the BOS that starts each context
    assert all(piece in TEXT for piece in "".join(ex["tokens"]).split(eos))
    assert res["latents"][7]["examples"] == [] and res["latents"][7]["max_act"] == 0

    html_path, json_path = write_dashboard(tmp_path / "dash" / "dashboard.html", res)
    assert json.loads(json_path.read_text())["latents"][12]["index"] == 12
    page = html_path.read_text()
    assert not re.search(r"<script[^>]+src=[\"']https?://", page)
    assert "plotly.js" in page.lower() or "Plotly.newPlot" in page
    assert len(page) > 1_000_000  # plotly.js itself is inside
    for i in (0, 7, 12):
        assert f"id='latent-{i}'" in page and f"href='#latent-{i}'" in page
    assert "<select" in page and "promotes" in page


def test_bad_latents_raise(tiny_model, sae, data):
    with pytest.raises(InterpError, match="latent 40 is out of range"):
        top_activations(sae, tiny_model, data, 50, latents=[1, 40], progress=False)
    with pytest.raises(InterpError, match="trained on blocks.2.hook_resid_post"):
        top_activations(sae, tiny_model, data, 50, point="blocks.0.hook_resid_post", progress=False)

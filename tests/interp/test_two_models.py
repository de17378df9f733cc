"""Hook points, capture paths, generation and tokenizer alignment on both embedded models:
SmolLM2-135M (llama) and Gemma 3 270M (gemma3_text: scaled embeddings, pre- and post-norms,
sliding-window layers, tied 262k-token embeddings)."""

from __future__ import annotations

import pytest
import torch

from interp import HookManager, InterpError, fastpath, readout
from interp.generation import kv_cache_works
from interp.steering.alignment import aligned_activations, shared_boundaries, token_ends

pytestmark = pytest.mark.slow

SHAPES = {"smol": (30, 576, 49152), "gemma": (18, 640, 262144)}
TEXTS = ["The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
         "Congress shall make no law respecting an establishment of religion."]


@pytest.fixture(params=["smol", "gemma"])
def model(request):
    return request.param, request.getfixturevalue(request.param)


def test_hook_names_shapes_and_selectors_resolve(model):
    key, lm = model
    n_layers, d_model, d_vocab = SHAPES[key]
    assert (lm.cfg.n_layers, lm.cfg.d_model, lm.cfg.d_vocab) == (n_layers, d_model, d_vocab)
    hm = HookManager(lm)
    last = n_layers - 1
    assert hm.resolve("resid_post:-1") == [f"blocks.{last}.hook_resid_post"]
    assert hm.resolve("mlp_out:0-2;attn_out:5") == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out", "blocks.2.hook_mlp_out",
                                                     "blocks.5.hook_attn_out"]
    assert len(hm.resolve("resid_mid:all")) == n_layers
    tokens = lm.to_tokens(TEXTS[0])
    cap = hm.collect(tokens, ["hook_embed", "resid_pre:0", "resid_mid:3", "attn_out:3", "mlp_out:3", "resid_post:3"])
    for name, act in cap.items():
        assert act.shape == (1, tokens.shape[1], d_model), name
    # the residual stream adds what attention and the MLP write (after Gemma's post-norms)
    r = {k.split(".")[-1]: v for k, v in cap.items() if k.startswith("blocks.3.")}
    scale = float(r["hook_resid_post"].abs().max())
    assert torch.allclose(r["hook_resid_mid"] + r["hook_mlp_out"], r["hook_resid_post"], atol=1e-5 * scale)
    # hook_embed is what block 0 reads: on Gemma the embedding already times sqrt(d_model)
    assert torch.equal(cap["hook_embed"], cap["blocks.0.hook_resid_pre"])
    if key == "gemma":
        raw = lm.original_model.model.embed_tokens.weight[tokens[0]]
        assert torch.allclose(cap["hook_embed"][0], raw * d_model**0.5, rtol=1e-3)
        assert torch.equal(cap["blocks.3.hook_attn_out"], hm.collect(tokens, "blocks.3.ln1_post.hook_out")["blocks.3.ln1_post.hook_out"])


def test_a_point_the_architecture_lacks_names_the_points_it_has(smol, gemma):
    assert "blocks.3.ln1_post.hook_out" in HookManager(gemma).hook_points  # Gemma's norm after attention
    with pytest.raises(InterpError) as err:
        HookManager(smol).resolve("blocks.3.ln1_post.hook_out")
    msg = str(err.value)
    assert "closest: blocks.3.ln1.hook_out" in msg and "\n" not in msg
    with pytest.raises(InterpError, match="the model has 18 layers"):
        HookManager(gemma).resolve("blocks.18.hook_resid_post")
    with pytest.raises(InterpError, match="closest: blocks.2.hook_resid_post"):
        HookManager(gemma).resolve("blocks.2.hook_resid_pots")


def test_which_capture_path_runs_on_each_model(smol, gemma, monkeypatch):
    """Llama bridges take the plain-HF fast path; Gemma 3 is not proven there and takes the bridge.

    `HookManager.collect` is the one entry; it routes to `fastpath.collect` or to its own hooks."""
    runs = []
    fast, bridge = fastpath.collect, HookManager._collect_hooked
    monkeypatch.setattr(fastpath, "collect", lambda *a, **k: runs.append("fast") or fast(*a, **k))
    monkeypatch.setattr(HookManager, "_collect_hooked", lambda self, *a, **k: runs.append("bridge") or bridge(self, *a, **k))
    for lm, path in ((smol, "fast"), (gemma, "bridge")):
        runs.clear()
        names = [f"blocks.{i}.hook_resid_post" for i in (1, 4)]
        got = readout.read(lm, TEXTS, names, pool="mean")
        assert runs == [path]
        assert fastpath.applies(HookManager(lm), names) is (path == "fast")
        tokens, lengths = readout.tokenize(lm, TEXTS[:1])
        _, cache = lm.run_with_cache(tokens, names_filter=names)
        for name in names:
            assert torch.allclose(got[name][0], cache[name][0, 1:].mean(0), rtol=1e-5, atol=1e-5 * float(cache[name].abs().max()))
    with pytest.raises(InterpError, match="no plain HuggingFace fast path"):
        fastpath.plain_model(gemma)


def test_the_kv_cache_check_passes_on_gemma(gemma):
    assert kv_cache_works(gemma) is True


def test_two_tokenizers_pair_tokens_that_have_read_the_same_prefix(smol, gemma):
    ids_a, ends_a = token_ends(smol.tokenizer, TEXTS)
    ids_b, ends_b = token_ends(gemma.tokenizer, TEXTS)
    assert ids_a[0] != ids_b[0]  # different vocabularies
    for t, text in enumerate(TEXTS):
        pairs = shared_boundaries(ends_a[t], ends_b[t])
        assert len(pairs) >= 0.6 * len(text.split())  # most word ends are shared
        for i, j in pairs:
            a = smol.tokenizer.decode(ids_a[t][: i + 1]).strip()
            b = gemma.tokenizer.decode(ids_b[t][: j + 1]).strip()
            assert a == b == text[: ends_a[t][i]].strip()
    aligned = aligned_activations(smol, gemma, TEXTS, "resid_post:9", "resid_post:6")
    assert aligned.source.shape[1] == 576 and aligned.target.shape[1] == 640
    assert len(aligned) == sum(len(shared_boundaries(a, b)) for a, b in zip(ends_a, ends_b))
    # the row for a pair is the activation at that token, as a plain capture reads it
    tokens, _ = readout.tokenize(gemma, TEXTS[:1])
    full = HookManager(gemma).collect(tokens, "blocks.6.hook_resid_post")["blocks.6.hook_resid_post"][0]
    first = shared_boundaries(ends_a[0], ends_b[0])
    assert torch.allclose(aligned.target[: len(first)], full[[1 + j for _, j in first]], rtol=1e-5, atol=1e-3)

"""Generation checks the KV-cache path once and falls back to no cache when it is wrong."""

import warnings

import pytest
import torch
from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

from interp import load_model
from interp.generation import kv_cache_works
from interp.steering import generate_ids


def _greedy(model, tokens, use_cache: bool) -> torch.Tensor:
    out = model.generate(tokens, max_new_tokens=12, do_sample=False, use_past_kv_cache=use_cache,
                         stop_at_eos=False, verbose=False, return_type="tokens")
    return out[0, tokens.shape[1]:]


def test_cache_check_passes_on_the_locked_versions(tiny_llama_dir, device):
    model = load_model(str(tiny_llama_dir), device=device)
    assert kv_cache_works(model) is True
    tokens = model.to_tokens("the cat sat on the mat")
    assert torch.equal(_greedy(model, tokens, True), _greedy(model, tokens, False))


def test_a_cache_that_is_never_filled_is_caught_and_generation_stays_right(tiny_llama_dir, monkeypatch):
    """Simulate the transformers 5.24 break: the attention never extends K/V with the cache."""
    model = load_model(str(tiny_llama_dir), device="cpu")
    tokens = model.to_tokens("the cat sat on the mat and then the dog")
    right = _greedy(model, tokens, False)
    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", lambda self, k, v, **kwargs: (k, v))
    broken = _greedy(model, tokens, True)
    assert not torch.equal(broken, right)  # the simulated break changes cached generation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kv_cache_works(model) is False
    assert any("KV cache" in str(w.message) for w in caught)
    ids = generate_ids(model, tokens, max_new_tokens=12, temperature=0)
    assert torch.equal(ids[: right.numel()], right)


@pytest.mark.slow
def test_smollm2_cached_and_uncached_greedy_text_agree(smol):
    assert kv_cache_works(smol) is True
    tokens = smol.to_tokens("The capital of France is")
    assert torch.equal(_greedy(smol, tokens, True), _greedy(smol, tokens, False))

"""The plain-HuggingFace harvest path gives bit-identical activations to the bridge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from interp import HookManager, load_model
from interp import fastpath
from interp.errors import InterpError
from interp.activations import token_activations

SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def _tokens(model, batch: int = 2, ctx: int = 24) -> torch.Tensor:
    tokens = torch.randint(0, model.cfg.d_vocab, (batch, ctx))
    tokens[:, 0] = model.tokenizer.bos_token_id
    return tokens


def _all_names(model) -> list[str]:
    return [f"blocks.{layer}.hook_{site}" for layer in range(model.cfg.n_layers) for site in SITES]


def _assert_equal_to_run_with_cache(model, tokens: torch.Tensor) -> None:
    names = _all_names(model)
    _, cache = model.run_with_cache(tokens, names_filter=names)
    fast = fastpath.collect(model, tokens, names)
    assert sorted(fast) == sorted(names)
    for name in names:
        assert torch.equal(fast[name], cache[name]), name


def test_every_site_equals_run_with_cache(tiny_model):
    hm = HookManager(tiny_model)
    assert fastpath.applies(hm, _all_names(tiny_model))
    _assert_equal_to_run_with_cache(tiny_model, _tokens(tiny_model))


def test_half_precision_bridge_is_matched_too(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), device="cpu", dtype=torch.bfloat16)
    assert fastpath.plain_model(model).model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    _assert_equal_to_run_with_cache(model, _tokens(model))


def test_one_point_at_a_time_with_early_stop(tiny_model):
    tokens = _tokens(tiny_model)
    names = _all_names(tiny_model)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=names)
    for name in names:
        got = fastpath.collect(tiny_model, tokens, [name], positions=slice(1, None), dtype=torch.float16)
        assert list(got) == [name]
        assert torch.equal(got[name], cache[name][:, 1:].to(torch.float16)), name


def test_token_activations_takes_the_fast_path_with_bridge_values(tiny_model, monkeypatch):
    hm = HookManager(tiny_model)
    tokens = _tokens(tiny_model, batch=3)
    names = hm.resolve(["resid_post:all", "attn_out:1", "resid_pre:0"])
    bridge = hm.collect(tokens, names, positions=slice(1, None))

    def no_bridge(*_args, **_kwargs):
        raise AssertionError("the bridge forward ran")

    monkeypatch.setattr(HookManager, "_collect_hooked", no_bridge)
    acts = token_activations(hm, tokens, names, torch.float32)
    for name in names:
        assert acts[name].shape == (3 * 23, tiny_model.cfg.d_model)
        assert torch.equal(acts[name], bridge[name].reshape(-1, tiny_model.cfg.d_model))


def test_hook_manager_collect_chooses_the_route_itself(tiny_model, tiny_gpt2_dir):
    """`hm.collect`, as users and every module call it, takes the plain forward where it is exact (and
    says so in `last_route`), the bridge's hooks where it is not; the values equal run_with_cache."""
    hm = HookManager(tiny_model)
    tokens = _tokens(tiny_model)
    names = _all_names(tiny_model)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=names)
    got = hm.collect(tokens, names)
    assert hm.last_route == "plain" and all(torch.equal(got[n], cache[n]) for n in names)
    mixed = [names[0], "blocks.0.ln1.hook_normalized"]  # a point the plain forward does not serve
    got = hm.collect(tokens, mixed)
    assert hm.last_route == "bridge" and torch.equal(got[names[0]], cache[names[0]])
    with hm.steer(torch.ones(tiny_model.cfg.d_model), alpha=1.0, point="blocks.0.hook_resid_post"):
        steered = hm.collect(tokens, "blocks.1.hook_resid_post")  # an edit in effect must be honoured
    assert hm.last_route == "bridge" and not torch.equal(steered["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"])
    gpt2 = HookManager(load_model(str(tiny_gpt2_dir), device="cpu"))
    gpt2.collect(tokens % gpt2.model.cfg.d_vocab, "blocks.0.hook_resid_post")
    assert gpt2.last_route == "bridge"


def test_plain_model_shares_the_bridge_weights(tiny_model):
    plain = fastpath.plain_model(tiny_model)
    assert fastpath.plain_model(tiny_model) is plain
    bridge_ptrs = {p.data_ptr() for p in tiny_model.parameters()}
    n_plain = 0
    for name, p in plain.named_parameters():
        assert p.device.type != "meta", name
        assert p.data_ptr() in bridge_ptrs, name
        n_plain += p.numel()
    assert n_plain == sum(p.numel() for p in tiny_model.original_model.parameters())
    hf_q = tiny_model.blocks[1].attn.original_component.q_proj.original_component.weight
    assert plain.model.layers[1].self_attn.q_proj.weight is hf_q
    assert not any(p.requires_grad for p in tiny_model.parameters())
    assert plain not in list(tiny_model.modules())


def test_weight_changes_are_followed(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), device="cpu")
    tokens = _tokens(model)
    fastpath.plain_model(model)
    with torch.no_grad():  # in place: the shared tensor changes for both
        model.blocks[0].mlp.original_component.down_proj.original_component.weight.mul_(3.0)
    _assert_equal_to_run_with_cache(model, tokens)
    norm = model.blocks[1].ln2.original_component
    norm.weight = nn.Parameter(torch.linspace(0.5, 1.5, norm.weight.numel()), requires_grad=False)
    assert fastpath.plain_model(model).model.layers[1].post_attention_layernorm.weight is norm.weight
    _assert_equal_to_run_with_cache(model, tokens)


def test_falls_back_when_the_bridge_path_is_needed(tiny_model, tiny_gpt2_dir):
    hm = HookManager(tiny_model)
    tokens = _tokens(tiny_model)
    point = "blocks.1.hook_resid_post"
    assert fastpath.applies(hm, [point])
    assert not fastpath.applies(hm, [point, "blocks.0.ln1.hook_normalized"])
    assert not fastpath.applies(hm, ["blocks.0.hook_in"])
    plain = token_activations(hm, tokens, [point], torch.float32)[point]
    direction = torch.ones(tiny_model.cfg.d_model)
    with hm.steer(direction, alpha=2.0, point="blocks.0.hook_resid_post"):
        assert not fastpath.applies(hm, [point])
        steered = token_activations(hm, tokens, [point], torch.float32)[point]
        expected = hm.collect(tokens, point, positions=slice(1, None))[point].reshape(-1, tiny_model.cfg.d_model)
    assert torch.equal(steered, expected)
    assert not torch.allclose(steered, plain)
    assert fastpath.applies(hm, [point])

    gpt2 = HookManager(load_model(str(tiny_gpt2_dir), device="cpu"))
    assert not fastpath.applies(gpt2, [point])
    with pytest.raises(InterpError, match="no plain HuggingFace fast path"):
        fastpath.plain_model(gpt2.model)
    assert not fastpath.applies(HookManager(nn.Sequential(nn.Linear(4, 4))), ["0"])


@pytest.mark.slow
def test_smollm2_every_site_equals_run_with_cache(smol):
    assert fastpath.applies(HookManager(smol), _all_names(smol))
    _assert_equal_to_run_with_cache(smol, _tokens(smol, batch=2, ctx=16))

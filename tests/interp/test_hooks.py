"""HookManager: capture equals TransformerLens, edits equal hand computation, hooks never leak."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from interp import HookManager, InterpError, load_model
from interp.hooks import SITES

TEXTS = ["the cat sat on the mat and the dog ran", "paris is the capital of france, rome of"]


def site_names(n_layers):
    return [f"blocks.{layer}.{hook}" for layer in range(n_layers) for hook in SITES.values()]


def hook_count(model: nn.Module) -> int:
    """Forward hooks attached anywhere in `model` (the bridge keeps a few of its own)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch_dir", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_capture_equals_run_with_cache_every_site_every_layer(arch_dir, request):
    model = load_model(str(request.getfixturevalue(arch_dir)), device="cpu")
    hm = HookManager(model)
    tokens = model.to_tokens(TEXTS)
    logits, cache = model.run_with_cache(tokens)
    before = hook_count(model)
    names = site_names(model.cfg.n_layers)
    with torch.no_grad(), hm.capture(names) as cap:
        out = hm.forward(tokens)
    for name in names:
        assert cap[name].dtype == cache[name].dtype
        assert torch.equal(cap[name], cache[name]), name
    assert torch.equal(out, logits)
    assert hook_count(model) == before


def test_resid_post_equals_hf_hidden_states(tiny_llama_dir, tiny_model):
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    tokens = tiny_model.to_tokens(TEXTS)
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    cap = HookManager(tiny_model).collect(tokens, "resid_post:all")
    n = tiny_model.cfg.n_layers
    for layer in range(n - 1):  # HF applies the final norm to its last hidden state
        assert torch.equal(cap[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1])
    assert not torch.allclose(cap[f"blocks.{n - 1}.hook_resid_post"], hidden[n])


def test_early_stop_equals_full_forward_and_stops(tiny_model):
    hm = HookManager(tiny_model)
    tokens = tiny_model.to_tokens(TEXTS)
    with torch.no_grad(), hm.capture("resid_mid:1") as full:
        hm.forward(tokens)
    calls = []
    handle = tiny_model.blocks[2].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        early = hm.collect(tokens, "resid_mid:1")
    finally:
        handle.remove()
    assert torch.equal(early["blocks.1.hook_resid_mid"], full["blocks.1.hook_resid_mid"])
    assert calls == []  # block 2 never ran


def test_edit_adds_vector_exactly_like_by_hand(tiny_model):
    hm = HookManager(tiny_model)
    tokens = tiny_model.to_tokens(TEXTS)
    v = torch.randn(tiny_model.cfg.d_model)
    with torch.no_grad():
        resid = hm.collect(tokens, "blocks.1.hook_resid_post")["blocks.1.hook_resid_post"]
        by_hand = tiny_model(resid + v, start_at_layer=2)
        with hm.edit("blocks.1.hook_resid_post", lambda act: act + v):
            edited = tiny_model(tokens)
        with hm.steer(v, alpha=1.0, point="blocks.1.hook_resid_post"):
            steered = tiny_model(tokens)
        plain = tiny_model(tokens)
    assert torch.equal(edited, by_hand)
    assert torch.equal(steered, by_hand)
    assert not torch.allclose(plain, edited)


def test_hooks_removed_after_exception_and_nested_blocks_compose(tiny_model):
    hm = HookManager(tiny_model)
    tokens = tiny_model.to_tokens(TEXTS)
    v = torch.randn(tiny_model.cfg.d_model)
    before = hook_count(tiny_model)
    with pytest.raises(RuntimeError):
        with hm.edit("blocks.0.hook_resid_post", lambda a: a + v):
            with hm.capture("resid_post:all"):
                assert hm.n_active > 0
                raise RuntimeError("boom")
    assert hm.n_active == 0 and hook_count(tiny_model) == before
    with torch.no_grad():
        with hm.edit("blocks.0.hook_resid_post", lambda a: a + v), hm.edit("blocks.0.hook_resid_post", lambda a: a + 2 * v):
            both = tiny_model(tokens)
        with hm.edit("blocks.0.hook_resid_post", lambda a: a + 3 * v):
            once = tiny_model(tokens)
    assert torch.allclose(both, once, atol=1e-5)
    assert hook_count(tiny_model) == before


def test_capture_positions_device_dtype(tiny_model):
    hm = HookManager(tiny_model)
    tokens = tiny_model.to_tokens(TEXTS)
    full = hm.collect(tokens, "blocks.0.hook_resid_pre")["blocks.0.hook_resid_pre"]
    last = hm.collect(tokens, "blocks.0.hook_resid_pre", positions=-1, dtype=torch.float16)["blocks.0.hook_resid_pre"]
    some = hm.collect(tokens, "blocks.0.hook_resid_pre", positions=[0, 2])["blocks.0.hook_resid_pre"]
    assert last.dtype == torch.float16 and torch.equal(last, full[:, -1].half())
    assert torch.equal(some, full[:, [0, 2]])
    assert not full.requires_grad


def test_ablate_splice_patch(tiny_model):
    hm = HookManager(tiny_model)
    tokens = tiny_model.to_tokens(TEXTS)
    point = "blocks.1.hook_mlp_out"
    with torch.no_grad():
        clean = tiny_model(tokens)
        with hm.splice(point, lambda x: x.clone()):
            spliced = tiny_model(tokens)
        with hm.ablate(point), hm.capture(point) as cap:
            tiny_model(tokens)
        u = torch.randn(tiny_model.cfg.d_model)
        with hm.ablate("blocks.1.hook_resid_post", mode="direction", direction=u), hm.capture("blocks.1.hook_resid_post") as dcap:
            tiny_model(tokens)
        with hm.patch(point, torch.ones(tiny_model.cfg.d_model), positions=0), hm.capture(point) as pcap:
            tiny_model(tokens)
    assert torch.equal(clean, spliced)
    assert torch.count_nonzero(cap[point]) == 0
    assert (dcap["blocks.1.hook_resid_post"] @ (u / u.norm())).abs().max() < 1e-5
    assert torch.equal(pcap[point][:, 0], torch.ones(2, tiny_model.cfg.d_model))


def test_steer_generated_positions_leave_prompt_alone(tiny_model):
    hm = HookManager(tiny_model)
    tokens = tiny_model.to_tokens(TEXTS[:1])
    v = 5 * torch.randn(tiny_model.cfg.d_model)
    with torch.no_grad():
        clean = tiny_model(tokens)
        with hm.steer(v, 1.0, "blocks.0.hook_resid_post", positions="generated"):
            first = tiny_model(tokens)  # the prompt: untouched
            longer = torch.cat([tokens, tokens[:, 1:3]], dim=1)
            second = tiny_model(longer)  # no KV cache: only the 2 new positions are steered
        plain_longer = tiny_model(longer)
    n = tokens.shape[1]
    assert torch.equal(first, clean)
    assert torch.allclose(second[:, :n], plain_longer[:, :n], atol=1e-6)
    assert not torch.allclose(second[:, n:], plain_longer[:, n:])


def test_resolve_selectors_and_errors(tiny_model):
    hm = HookManager(tiny_model)
    assert hm.resolve("resid_post:all") == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert hm.resolve("mlp_out:0-1") == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    assert hm.resolve(["resid_pre:-1", "blocks.2.hook_resid_pre"]) == ["blocks.2.hook_resid_pre"]
    with pytest.raises(InterpError, match="closest: blocks.0.hook_resid_post"):
        hm.resolve("blocks.0.hook_resid_pots")
    with pytest.raises(InterpError, match="layer 7 is out of range: the model has 3 layers"):
        hm.resolve("resid_post:7")
    with pytest.raises(InterpError, match="out of range"):
        hm.resolve("blocks.9.hook_resid_post")


def test_plain_module_by_path():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    hm = HookManager(net)
    x = torch.randn(5, 4)
    with torch.no_grad():
        cap = hm.collect(x, ["0", "1"])
        assert torch.equal(cap["1"], torch.relu(net[0](x)))
        with hm.edit("1", lambda a: a * 0):
            out = net(x)
    assert torch.equal(out, net[2].bias.expand(5, 2))
    with pytest.raises(InterpError, match="unknown hook point"):
        hm.resolve("3")
    assert hook_count(net) == 0


@pytest.mark.slow
def test_smollm2_capture_equals_run_with_cache_and_hf(smol):
    from interp.models import model_source

    hm = HookManager(smol)
    tokens = smol.to_tokens(["The capital of France is Paris, and the capital of Italy is"])
    logits, cache = smol.run_with_cache(tokens)
    names = site_names(smol.cfg.n_layers)
    with torch.no_grad(), hm.capture(names) as cap:
        hm.forward(tokens)
    assert all(torch.equal(cap[n], cache[n]) for n in names)
    hf = AutoModelForCausalLM.from_pretrained(model_source("default")[0], attn_implementation="eager").eval()
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    for layer in range(smol.cfg.n_layers - 1):
        assert torch.equal(cap[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1]), layer


def test_steer_generated_with_kv_cache_steps_after_one_token_prompt(tiny_model):
    hm = HookManager(tiny_model)
    one = tiny_model.to_tokens("the", prepend_bos=False)[:, :1]
    v = 5 * torch.randn(tiny_model.cfg.d_model)
    with torch.no_grad():
        plain = tiny_model(one)
        with hm.steer(v, 1.0, "blocks.0.hook_resid_post", positions="generated"):
            prompt = tiny_model(one)  # the 1-token prompt
            step = tiny_model(one)  # a cached decoding step also sees 1 token: it is generated
    assert torch.equal(prompt, plain)
    assert not torch.allclose(step, plain)

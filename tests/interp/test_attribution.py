"""Attribution patching (AtP / AtP*) against activation patching and against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from interp import HookManager, load_model
from interp.attribution import attribute, attribution_patching
from interp.patching import RESID_HOOKS, Site, activation_patching, enumerate_sites, patch_metrics
from interp.prompt_pairs import PromptPair, logit_diff_metric, tokenize_pairs

PAIR = PromptPair("Paris is the capital of", "Rome is the capital of", " the", " is")
GPT2_PAIR = PromptPair("The cat sat on the", "The sun sat on the", " the", " is")


class Toy(nn.Module):
    """x (b, pos, 4) -> tanh layer -> `mid` (b, pos, 8) -> metric = sum over positions of w . mid: linear in `mid`."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 8)
        self.mid = nn.Identity()
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.mid(torch.tanh(self.enc(x)))).sum(dim=(1, 2))


def test_attribution_is_exact_where_the_metric_is_linear_in_the_site():
    torch.manual_seed(0)
    model = Toy().requires_grad_(False)
    hm = HookManager(model)
    clean, corrupted = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    sites = [Site(point, p) for point in ("mid", "enc") for p in range(5)]
    metric = lambda out: out  # noqa: E731
    patched, m_clean, m_corrupted = patch_metrics(hm, clean, corrupted, sites, metric, batch_rows=4)
    estimate, a_clean, a_corrupted = attribute(hm, clean, corrupted, sites, metric)
    torch.testing.assert_close(a_clean, m_clean) and torch.testing.assert_close(a_corrupted, m_corrupted)
    actual = patched - m_corrupted[:, None]
    # `mid` feeds the metric linearly: first order is exact (float32 rounding only).
    torch.testing.assert_close(estimate[:, :5], actual[:, :5], atol=1e-5, rtol=1e-5)
    assert actual[:, :5].abs().min() > 1e-2
    # `enc` goes through tanh first: the estimate is only approximate there (this test can tell the two apart).
    assert (estimate[:, 5:] - actual[:, 5:]).abs().max() > 1e-2


def test_attribution_equals_activation_patching_at_the_final_norm_output(tiny_model):
    # The logits are a linear map of ln_final's output, so patching it is exactly first order.
    act = activation_patching(tiny_model, [PAIR], hooks="ln_final.hook_out")
    att = attribution_patching(tiny_model, [PAIR], hooks="ln_final.hook_out")
    np.testing.assert_allclose(att.recovered, act.recovered, atol=1e-4)
    assert act.recovered[-1] == pytest.approx(1.0, abs=1e-4) and np.abs(act.recovered[:-1]).max() < 1e-4


def test_attribution_ranks_residual_sites_like_activation_patching(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    act = activation_patching(model, [GPT2_PAIR], hooks=RESID_HOOKS)
    att = attribution_patching(model, [GPT2_PAIR], hooks=RESID_HOOKS)
    rho = spearmanr(act.recovered, att.recovered)[0]
    print(f"Spearman(attribution, activation) over {len(act.sites)} residual sites: {rho:.3f}")
    assert len(act.sites) == 4 * 3 * 9
    assert rho >= 0.9  # measured 0.983 on the 3-layer, d_model 64 GPT-2 fixture


def test_attribution_costs_one_forward_and_one_backward(tiny_model, monkeypatch):
    forwards, grads, backwards = [], [], []
    handles = [tiny_model.register_forward_pre_hook(lambda *_: forwards.append("model")),
               tiny_model.blocks[-1].register_forward_pre_hook(lambda *_: forwards.append("last block"))]
    real_grad, real_backward = torch.autograd.grad, torch.Tensor.backward
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grads.append(1) or real_grad(*a, **k))
    monkeypatch.setattr(torch.Tensor, "backward", lambda *a, **k: backwards.append(1) or real_backward(*a, **k))
    try:
        result = attribution_patching(tiny_model, [PAIR], hooks=RESID_HOOKS + ";z:all;q:all;k:all")
    finally:
        for h in handles:
            h.remove()
    assert len(result.sites) == 4 * 3 * 7 + 3 * 4 + 3 * 4 * 7 + 3 * 2 * 7
    assert forwards == ["model", "last block"] and len(grads) == 1 and not backwards


def _grad_at_pattern(hm, tokens, metric, layer):
    """dLD/dpattern of one layer at one run, with the pattern turned into a leaf (independent of interp.attribution)."""
    held = {}

    def leaf(p):
        held["p"] = p.detach().requires_grad_(True)
        return held["p"]

    with hm.edit(f"blocks.{layer}.attn.hook_pattern", leaf), torch.enable_grad():
        metric(hm.forward(tokens)).sum().backward()
    return held["p"].grad[0]


def test_qk_fix_equals_the_linearised_effect_of_the_recomputed_pattern(tiny_model):
    """AtP* for a query/key node = sum (A' - A) * dLD/dA, with A' the pattern of a real forward with that node patched."""
    hm = HookManager(tiny_model)
    toks = tokenize_pairs(tiny_model, [PAIR])
    metric = logit_diff_metric(toks.answer, toks.wrong)
    layer, n_pos = 1, toks.clean.shape[1]
    sites = enumerate_sites(hm, f"q:{layer};k:{layer}", n_pos)
    estimate, _, _ = attribute(hm, toks.clean, toks.corrupted, sites, metric, qk_fix=True)
    pattern = f"blocks.{layer}.attn.hook_pattern"
    grad = _grad_at_pattern(hm, toks.corrupted, metric, layer)
    clean = hm.collect(toks.clean, [f"blocks.{layer}.attn.hook_rot_q", f"blocks.{layer}.attn.hook_rot_k"], device=None)
    base = hm.collect(toks.corrupted, pattern, device=None)[pattern][0]
    expected = []
    for site in sites:
        def write(a, site=site):
            a = a.clone()
            a[:, site.head, site.position] = clean[site.point][:, site.head, site.position]
            return a
        with hm.edit(site.point, write):
            moved = hm.collect(toks.corrupted, pattern, device=None)[pattern][0]
        expected.append(float(((moved - base) * grad).sum()))
    expected = torch.tensor(expected)
    assert len(sites) == 4 * n_pos + 2 * n_pos and expected.abs().max() > 1e-4
    torch.testing.assert_close(estimate[0], expected, atol=1e-6 + 1e-3 * float(expected.abs().max()), rtol=0)


def test_qk_fix_recovers_what_plain_attribution_misses_in_a_saturated_head(tiny_llama_dir):
    # Planted saturation: queries and keys of the last layer scaled by 30, so its softmax is nearly one-hot
    # and its gradient nearly zero. Measured on the top-3 sites: activation 2.98, -1.47, -0.80; AtP* 2.79,
    # -1.41, -0.74; plain AtP 0.07, -0.001, 0.002.
    model = load_model(str(tiny_llama_dir), device="cpu")
    attn = model.blocks[2].attn.original_component
    with torch.no_grad():
        attn.q_proj.weight.mul_(30.0)
        attn.k_proj.weight.mul_(30.0)
    act = activation_patching(model, [PAIR], hooks="q:2;k:2")
    fixed = attribution_patching(model, [PAIR], hooks="q:2;k:2", qk_fix=True)
    plain = attribution_patching(model, [PAIR], hooks="q:2;k:2", qk_fix=False)
    top = np.argsort(-np.abs(act.recovered))[:3]
    print("activation", act.recovered[top], "AtP*", fixed.recovered[top], "AtP", plain.recovered[top])
    assert np.abs(act.recovered[top]).min() > 0.5
    assert np.all(np.abs(fixed.recovered[top] - act.recovered[top]) < 0.15 * np.abs(act.recovered[top]))
    assert np.all(np.abs(plain.recovered[top]) < 0.1 * np.abs(act.recovered[top]))


def test_pairs_run_in_one_forward_and_match_single_runs(tiny_model):
    other = PromptPair("Rome is the capital of", "Paris is the capital of", " is", " the")
    both = attribution_patching(tiny_model, [PAIR, other], hooks=RESID_HOOKS + ";z:all")
    one = attribution_patching(tiny_model, [PAIR], hooks=RESID_HOOKS + ";z:all")
    two = attribution_patching(tiny_model, [other], hooks=RESID_HOOKS + ";z:all")
    np.testing.assert_allclose(both.recovered, (one.recovered + two.recovered) / 2, atol=1e-4)

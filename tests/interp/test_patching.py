"""Activation patching on a tiny random llama: identities that hold whatever the weights, and batched == one forward per site."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp import HookManager, InterpError
from interp.patching import DEFAULT_HOOKS, Site, activation_patching, enumerate_sites, patch_metrics, run_patched
from interp.prompt_pairs import PromptPair, logit_diff_metric, read_pairs, tokenize_pairs

PAIR = PromptPair("Paris is the capital of", "Rome is the capital of", " the", " is")
OTHER = PromptPair("Rome is the capital of", "Paris is the capital of", " is", " the")
LONGER = PromptPair("The cat sat on the mat", "The sun sat on the mat", " the", " is")
# Batched forwards (many rows) and single-row forwards round differently: patched logit differences
# agree to float32 rounding, far inside this (the logit differences themselves are ~1e-1).
ATOL = 1e-5


@pytest.fixture(scope="module")
def setup(tiny_model):
    hm = HookManager(tiny_model)
    toks = tokenize_pairs(tiny_model, [PAIR])
    metric = logit_diff_metric(toks.answer, toks.wrong)
    return hm, toks, metric


def test_pair_tokenizes_to_equal_lengths_and_differs_at_the_subject(setup):
    _, toks, _ = setup
    assert toks.clean.shape == toks.corrupted.shape == (1, 7)
    assert (toks.clean != toks.corrupted).nonzero()[:, 1].tolist() == [1, 2]  # 'Par','is' vs 'Ro','me'; BOS first


def test_patching_the_clean_run_into_itself_changes_nothing(setup):
    hm, toks, metric = setup
    sites = enumerate_sites(hm, DEFAULT_HOOKS + ";q:all;k:all", toks.clean.shape[1])
    patched, m_clean, m_same = patch_metrics(hm, toks.clean, toks.clean, sites, metric, batch_rows=100)
    assert len(sites) == 4 * 3 * 7 + 3 * 4 + 3 * 4 * 7 + 3 * 2 * 7
    assert torch.equal(m_clean, m_same)
    torch.testing.assert_close(patched, m_clean.expand_as(patched), atol=ATOL, rtol=0)


def test_identities_final_layer_nothing_and_whole_layer(setup, tiny_model):
    hm, toks, metric = setup
    last = toks.clean.shape[1] - 1
    sites = [Site("blocks.2.hook_resid_post", last), Site("blocks.1.hook_resid_pre", None),
             *[Site(f"blocks.{layer}.hook_{kind}", 0) for layer in range(3) for kind in ("resid_pre", "attn_out", "mlp_out")],
             *[Site(f"blocks.{layer}.attn.hook_z", 0, head) for layer in range(3) for head in range(4)]]
    patched, m_clean, m_corrupted = patch_metrics(hm, toks.clean, toks.corrupted, sites, metric, batch_rows=7)
    recovered = (patched[0] - m_corrupted) / (m_clean - m_corrupted)
    assert abs(float(m_clean - m_corrupted)) > 0.05
    assert abs(float(recovered[0]) - 1.0) < 1e-4        # the final block's output at the last position decides the logits
    assert abs(float(recovered[1]) - 1.0) < 1e-4        # a whole layer's residual at every position: the clean run
    # BOS (position 0) is the same token in both prompts, so nothing there differs: patching it changes nothing.
    assert recovered[2:2 + 9].abs().max() < 1e-4
    # A head at position 0 only: still nothing (z at position 0 is the same in both runs).
    assert recovered[11:].abs().max() < 1e-4
    # An unpatched row gives the corrupted run back.
    none_row = run_patched(hm, toks.corrupted.expand(2, -1), [None, sites[0]], {"blocks.2.hook_resid_post": hm.collect(toks.clean, "resid_post:2")["blocks.2.hook_resid_post"]}, metric)
    assert abs(float(none_row[0] - m_corrupted)) < ATOL and abs(float(none_row[1] - m_clean)) < ATOL


def _one_forward_per_site(hm, toks, metric, sites):
    """Reference: each site in its own single-row forward, written with HookManager.patch / edit."""
    points = list(dict.fromkeys(s.point for s in sites))
    clean = hm.collect(toks.clean, points, device=None)
    out = []
    for site in sites:
        act = clean[site.point]
        if site.head is None:
            ctx = hm.patch(site.point, act[:, site.position], positions=site.position)
        else:
            def write(a, act=act, site=site):
                a = a.clone()
                if site.point.endswith("hook_z"):
                    d = a.shape[-1] // 4
                    a[..., site.head * d:(site.head + 1) * d] = act[..., site.head * d:(site.head + 1) * d]
                else:  # rot_q / rot_k: (batch, heads, pos, d_head)
                    a[:, site.head, site.position] = act[:, site.head, site.position]
                return a
            ctx = hm.edit(site.point, write)
        with torch.no_grad(), ctx:
            out.append(float(metric(hm.forward(toks.corrupted))))
    return torch.tensor(out)


def test_batched_patching_equals_one_forward_per_site(setup):
    hm, toks, metric = setup
    sites = enumerate_sites(hm, DEFAULT_HOOKS + ";q:1;k:2", toks.clean.shape[1])[::4]  # every kind, 38 sites
    assert {s.kind for s in sites} == {"resid_pre", "resid_post", "attn_out", "mlp_out", "z", "q", "k"}
    batched, _, m_corrupted = patch_metrics(hm, toks.clean, toks.corrupted, sites, metric, batch_rows=37)
    single = _one_forward_per_site(hm, toks, metric, sites)
    torch.testing.assert_close(batched[0], single, atol=ATOL, rtol=0)
    assert (single - m_corrupted).abs().max() > 0.05     # the sites do move the metric


def test_activation_patching_scores_and_pairs_mean(tiny_model):
    one = activation_patching(tiny_model, [PAIR], hooks="resid_post:all;z:all")
    two = activation_patching(tiny_model, [OTHER], hooks="resid_post:all;z:all")
    both = activation_patching(tiny_model, [PAIR, OTHER], hooks="resid_post:all;z:all", batch_tokens=20)
    assert [s.point for s in one.sites[:7]] == ["blocks.0.hook_resid_post"] * 7
    assert one.sites[21:] == [Site(f"blocks.{layer}.attn.hook_z", None, h) for layer in range(3) for h in range(4)]
    np.testing.assert_allclose(both.recovered, (one.recovered + two.recovered) / 2, atol=1e-4)
    assert both.clean_logit_diff == pytest.approx(one.clean_logit_diff + two.clean_logit_diff, abs=ATOL)
    assert one.recovered[20] == pytest.approx(1.0, abs=1e-4)  # resid_post of the last layer at the last position
    record = json.loads(json.dumps(one.to_json("tiny")))
    assert record["sites"][20] == {"point": "blocks.2.hook_resid_post", "position": 6, "head": None, "recovered": one.recovered[20]}
    assert record["clean_logit_diff"] == one.clean_logit_diff[0] and record["tokens"]["clean"][1] == "Par"


@pytest.mark.parametrize("pair, message", [
    (PromptPair("The cat sat on the mat", "The dog sat on the mat", " the", " is"), "clean prompt has 11 tokens and the corrupted prompt 12"),
    (PromptPair("", "Rome is the capital of", " the", " is"), "the clean prompt is empty"),
    (PromptPair("Paris is the capital of", "   ", " the", " is"), "the corrupted prompt is empty"),
    (PromptPair("Paris is the capital of", "Rome is the capital of", " mat", " is"), "the answer ' mat' is 2 tokens"),
    (PromptPair("Paris is the capital of", "Rome is the capital of", " the", " the"), "are the same token"),
])
def test_bad_pairs_are_refused_with_one_line(tiny_model, pair, message):
    with pytest.raises(InterpError, match=message) as info:
        tokenize_pairs(tiny_model, [pair])
    assert "\n" not in str(info.value)


def test_pairs_of_different_lengths_and_bad_files(tiny_model, tmp_path):
    with pytest.raises(InterpError, match="pair 2: its prompts have 11 tokens but pair 1's have 7"):
        tokenize_pairs(tiny_model, [PAIR, LONGER])
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PAIR.__dict__) + "\n\n" + json.dumps(OTHER.__dict__) + "\n")
    assert read_pairs(path) == [PAIR, OTHER]
    path.write_text('{"clean": "a", "corrupted": "b"}\n')
    with pytest.raises(InterpError, match="line 1 lacks answer, wrong"):
        read_pairs(path)
    path.write_text("not json\n")
    with pytest.raises(InterpError, match="line 1 is not JSON"):
        read_pairs(path)
    with pytest.raises(InterpError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl")


def test_bad_sites_are_refused(tiny_model, tiny_gpt2_dir):
    from interp import load_model

    hm = HookManager(tiny_model)
    with pytest.raises(InterpError, match="layer 5 is out of range"):
        enumerate_sites(hm, "z:5", 7)
    with pytest.raises(InterpError, match="unknown hook point 'resid_prex:0'"):
        enumerate_sites(hm, "resid_prex:0", 7)
    with pytest.raises(InterpError, match="not \\(batch, 7 positions, d\\)"):
        activation_patching(tiny_model, [PAIR], hooks="blocks.0.attn.hook_pattern")
    with pytest.raises(InterpError, match="q sites need rotary attention"):
        enumerate_sites(HookManager(load_model(str(tiny_gpt2_dir), device="cpu")), "q:0", 7)

"""interp.readout: one tokenisation, one padding rule, one BOS rule, shared by probes, CAVs and steering."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from interp import HookManager, InterpError, readout
from interp import steering as st
from probes import LinearProbe, probe_layers, tcav

POS = ["I love this film, it is wonderful.", "The sun is hot", "A bird sang in the tree.", "Paris is the capital"]
NEG = ["I hate this film, it is terrible.", "The snow is cold", "The dog ran.", "Rome is the capital of Italy."]
TEXTS = POS + NEG
POINTS = ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"]
P1 = POINTS[0]


def reference(model, texts, point, pool):
    """Per text, unpadded, through TransformerLens's own run_with_cache; BOS (position 0) dropped."""
    rows = []
    for text in texts:
        _, cache = model.run_with_cache(model.to_tokens(text, prepend_bos=True))
        act = cache[point][0, 1:].float()
        rows.append({"last": act[-1], "mean": act.mean(0), "max": act.amax(0), 0: act[0], -2: act[-2]}[pool])
    return torch.stack(rows)


@pytest.fixture(params=["left", "right"])
def padding_side(request, tiny_model):
    before = tiny_model.tokenizer.padding_side
    tiny_model.tokenizer.padding_side = request.param
    yield request.param
    tiny_model.tokenizer.padding_side = before


def test_tokenize_is_bos_plus_text_tokens_right_padded(tiny_model):
    tokens, lengths = readout.tokenize(tiny_model, TEXTS)
    for i, text in enumerate(TEXTS):
        expected = tiny_model.to_tokens(text, prepend_bos=True)[0]
        assert int(lengths[i]) == expected.numel()
        assert torch.equal(tokens[i, : lengths[i]], expected)
    assert tokens.shape == (len(TEXTS), int(lengths.max()))
    with pytest.raises(InterpError, match="text 1 .* has no tokens"):
        readout.tokenize(tiny_model, ["fine", ""])


@pytest.mark.parametrize("pool", ["last", "mean", "max", 0, -2])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_read_equals_run_with_cache_for_any_batch_and_padding_side(tiny_model, padding_side, pool, batch_size):
    got = readout.read(tiny_model, TEXTS, POINTS, pool=pool, batch_size=batch_size)
    for point in POINTS:
        torch.testing.assert_close(got[point], reference(tiny_model, TEXTS, point, pool), rtol=0, atol=1e-6)


def test_mean_norms_are_over_non_bos_tokens(tiny_model):
    got = readout.read(tiny_model, TEXTS, P1, batch_size=3)
    norms = []
    for text in TEXTS:
        _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(text))
        norms.append(cache[P1][0, 1:].norm(dim=-1))
    norms = torch.cat(norms)
    assert got.n_tokens == norms.numel()
    assert got.mean_norms[P1] == pytest.approx(float(norms.mean()), rel=1e-6)


def test_read_tokens_and_token_activations_leave_bos_out(tiny_model):
    acts, text_index, token_ids = readout.read_tokens(tiny_model, TEXTS, P1, batch_size=3)
    rows, ids = [], []
    for text in TEXTS:
        tokens = tiny_model.to_tokens(text)
        _, cache = tiny_model.run_with_cache(tokens)
        rows.append(cache[P1][0, 1:])
        ids.append(tokens[0, 1:])
    torch.testing.assert_close(acts[P1], torch.cat(rows), rtol=0, atol=1e-6)
    assert torch.equal(token_ids, torch.cat(ids))
    assert text_index.tolist() == [i for i, r in enumerate(rows) for _ in range(len(r))]
    # token_activations reads packed contexts (BOS at column 0) with the same rule
    packed = tiny_model.to_tokens(TEXTS[0])
    flat = readout.token_activations(HookManager(tiny_model), packed, [P1], torch.float32)[P1]
    torch.testing.assert_close(flat, rows[0], rtol=0, atol=1e-6)


def test_unknown_pool_or_position_fails_before_any_forward(tiny_model):
    with pytest.raises(InterpError, match="unknown pool"):
        readout.read(tiny_model, TEXTS, P1, pool="median")
    shortest = min(len(tiny_model.to_tokens(t)[0]) - 1 for t in TEXTS)
    with pytest.raises(InterpError, match=f"shortest has {shortest} tokens"):
        readout.read(tiny_model, TEXTS, P1, pool=shortest)


def test_probe_cav_and_steering_vector_see_the_same_activations(tiny_model, monkeypatch):
    """Every consumer reads through `readout.read`; what each gets equals run_with_cache, and the
    probe's direction, the CAV's inputs and the steering vector follow from those numbers."""
    calls: list[tuple[list[str], object, dict]] = []
    real = readout.read

    def spy(model_or_hm, inputs, points, pool="last", **kwargs):
        out = real(model_or_hm, inputs, points, pool=pool, **kwargs)
        calls.append((list(inputs), pool, out))
        return out

    monkeypatch.setattr(readout, "read", spy)
    last = reference(tiny_model, TEXTS, P1, "last")
    mean = reference(tiny_model, TEXTS, P1, "mean")

    # probe: its direction is the one sklearn-style LinearProbe fit on the reference activations gives
    texts, labels = TEXTS * 3, [1] * 4 + [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4 + [0] * 4
    result = probe_layers(tiny_model, texts, labels, points=P1, C=1.0, n_bootstrap=20, progress=False)
    X = torch.cat([last] * 3).double().numpy()
    train = np.array(result.split["train"])
    expected = LinearProbe(C=1.0, random_state=0).fit(X[train], np.array(labels)[train]).direction_
    np.testing.assert_allclose(result.directions[P1].numpy(), expected, rtol=1e-4, atol=1e-5)
    probe_acts = calls[-1][2][P1]

    # CAV: the concept and random activations handed to train_cav are the reference rows
    seen = []
    tcav_module = importlib.import_module("probes.tcav")  # `probes.tcav` the attribute is the function

    def record(concept_acts, random_acts, **kwargs):
        seen.append((concept_acts, random_acts))
        return real_train(concept_acts, random_acts, **kwargs)

    real_train = tcav_module.train_cav
    monkeypatch.setattr(tcav_module, "train_cav", record)
    tcav(tiny_model, POS, [NEG, NEG[::-1], POS[::-1]], NEG, " the", P1, n_runs=2, progress=False)
    torch.testing.assert_close(seen[0][0], last[:4], rtol=0, atol=1e-6)
    torch.testing.assert_close(seen[0][1], last[4:], rtol=0, atol=1e-6)
    cav_acts = calls[-2][2][P1]

    # steering vector: the mean difference of the reference rows, and the same rows the probe read
    for pool, ref in (("last", last), ("mean", mean)):
        vec = st.mean_diff(tiny_model, POS, NEG, P1, pool=pool, batch_size=3, progress=False)
        torch.testing.assert_close(vec.directions[P1], ref[:4].mean(0) - ref[4:].mean(0), rtol=0, atol=1e-6)
    steer_acts = calls[-2][2][P1]  # the pool="last" build
    # The three consumers read the same rows. They read them in other batches (the probe 24 texts in
    # batches of 16, the steering build 8 in batches of 3), and a CPU's kernels may round a row by a
    # few float32 ulps differently in another batch composition, so "the same numbers" is equality up
    # to that rounding: 1e-5 relative, where a different pooling, position or point differs by O(1).
    torch.testing.assert_close(steer_acts, probe_acts[:8], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(steer_acts[:4], cav_acts, rtol=1e-5, atol=1e-6)

    # the steering evaluator's probe scorer reads mean-pooled rows the same way
    scorer = st.ProbeScorer(tiny_model, P1)
    torch.testing.assert_close(scorer._features(TEXTS), mean, rtol=0, atol=1e-6)
    assert {pool for _, pool, _ in calls} == {"last", "mean"}

"""SAE latent selection (LF-Steering): a planted SAE whose latent fires on one set only is chosen first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp import InterpError, readout
from interp.steering import SteeringVector
from saes.architectures import SAEConfig, make_sae
from saes.steering import latent_effects, sae_feature_vector

P = "blocks.1.hook_resid_post"
# Words of the tiny tokenizer's corpus (few tokens in all); no two texts share a first word, so no token of
# one set has the same context (and activation) as a token of the other.
POS = ["I love this film.", "Paris is wonderful.", "A bird sang.", "sun is hot"]
NEG = ["The dog ran.", "Rome is terrible.", "The snow is cold", "hate this film"]
PLANT_POS, PLANT_NEG, CONST_1, CONST_HALF = 5, 6, 0, 1


@pytest.fixture(scope="module")
def planted(tiny_model):
    """A ReLU SAE (d_sae 8) on `P`: latent 5 is exactly 1 on every token of POS and 0 on NEG; latent 6
    is 0 on POS and, on the tokens of NEG text i, 1.1 or 0.9 (i even or odd: mean 1 over the texts);
    latents 0 and 1 are constant on every token (1 and 0.5), the rest random.

    Latent 5 separates the sets with no spread (Cohen's d ~ 1 / rounding noise ~ 1e5), latent 6 with a
    planted spread (d ~ 12), so latent 5 ranks first by a margin no kernel's rounding can flip; two
    latents without spread would tie, and rounding alone would order them."""
    acts, text_index, _ = readout.read_tokens(tiny_model, POS + NEG, [P])
    x = acts[P].double()
    assert x.shape[0] < x.shape[1]  # fewer tokens than dimensions: exact interpolation exists
    is_pos = text_index < len(POS)
    sign = torch.where(is_pos, 1.0, -1.0).double()
    neg_target = torch.where(is_pos, -1.0, 1.0 + 0.1 * (1 - 2 * (text_index % 2))).double()
    w_pos, w_neg = torch.linalg.lstsq(x, torch.stack([sign, neg_target], 1), driver="gelsd").solution.T
    g = torch.Generator().manual_seed(0)
    sae = make_sae(SAEConfig(d_in=64, d_sae=8, arch="relu", apply_b_dec_to_input=False, hook_name=P))
    with torch.no_grad():
        W_enc = torch.randn(64, 8, generator=g) / 8
        W_enc[:, PLANT_POS], W_enc[:, PLANT_NEG] = w_pos.float(), w_neg.float()
        W_enc[:, [CONST_1, CONST_HALF]] = 0
        b_enc = torch.zeros(8)
        b_enc[CONST_1], b_enc[CONST_HALF] = 1.0, 0.5
        W_dec = torch.randn(8, 64, generator=g)
        sae.W_enc.copy_(W_enc), sae.b_enc.copy_(b_enc), sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True) * 2)
        sae.b_dec.zero_()
    return sae


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_planted_latent_is_chosen_first_and_gives_its_decoder_direction(tiny_model, planted):
    vec = sae_feature_vector(tiny_model, planted, POS, NEG, n_features=1)
    assert isinstance(vec, SteeringVector) and vec.method == "sae_features" and vec.points == [P]
    assert vec.params["latents"] == [PLANT_POS]
    assert _cos(vec.directions[P], planted.W_dec[PLANT_POS].detach()) == pytest.approx(1.0, abs=1e-6)
    # latent 5 is 1 on every positive token and 0 on every negative one: its mean difference is 1
    assert vec.params["weights"][0] == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(vec.directions[P], planted.W_dec[PLANT_POS].detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("criterion", ["effect_size", "paired", "mean_diff"])
def test_latents_firing_alike_on_both_sets_are_never_chosen(tiny_model, planted, criterion):
    vec = sae_feature_vector(tiny_model, planted, POS, NEG, n_features=8, criterion=criterion)
    chosen = vec.params["latents"]
    assert CONST_1 not in chosen and CONST_HALF not in chosen
    assert set(chosen[:2]) == {PLANT_POS, PLANT_NEG} or criterion == "mean_diff"
    # the vector is the weighted sum of the chosen decoder rows, the negative-set latent subtracted
    w = dict(zip(chosen, vec.params["weights"]))
    assert w[PLANT_POS] == pytest.approx(1.0, abs=1e-4) and w[PLANT_NEG] == pytest.approx(-1.0, abs=1e-4)
    expected = sum(w[j] * planted.W_dec[j].detach() for j in chosen)
    torch.testing.assert_close(vec.directions[P], expected, rtol=1e-5, atol=1e-5)


def test_effect_sizes_match_an_independent_computation(tiny_model, planted):
    effects, info = latent_effects(tiny_model, planted, POS, NEG, level="text", pool="mean")
    acts, text_index, _ = readout.read_tokens(tiny_model, POS + NEG, [P])
    with torch.no_grad():
        z = planted.encode(acts[P]).numpy().astype(np.float64)
    per_text = np.stack([z[text_index.numpy() == i].mean(0) for i in range(len(POS) + len(NEG))])
    pos, neg = per_text[: len(POS)], per_text[len(POS):]
    pooled = ((len(POS) - 1) * pos.var(0, ddof=1) + (len(NEG) - 1) * neg.var(0, ddof=1)) / (len(POS) + len(NEG) - 2)
    random_latents = [2, 3, 4, 7]  # they fire on some tokens of both sets, unevenly
    expected = ((pos.mean(0) - neg.mean(0)) / np.sqrt(pooled + 1e-12))[random_latents]
    assert np.all(np.abs(expected) > 0.05)
    np.testing.assert_allclose(effects.scores("effect_size").numpy()[random_latents], expected, rtol=1e-4)
    diffs = (pos - neg)[:, random_latents]
    np.testing.assert_allclose(effects.scores("paired").numpy()[random_latents], diffs.mean(0) / diffs.std(0, ddof=1), rtol=1e-4)
    assert info["mean_norm"] == pytest.approx(float(acts[P].norm(dim=-1).mean()), rel=1e-5)
    tokens, _ = latent_effects(tiny_model, planted, POS, NEG, level="token")
    assert tokens.n_positive == int((text_index < len(POS)).sum()) and tokens.paired_diff_mean is None
    assert float(tokens.mean_diff[PLANT_POS]) == pytest.approx(1.0, abs=1e-4)


def test_vector_round_trips_and_bad_inputs_are_refused(tiny_model, planted, tmp_path):
    vec = sae_feature_vector(tiny_model, planted, POS, NEG, n_features=3)
    vec.save(tmp_path / "v")
    back = SteeringVector.load(tmp_path / "v")
    assert back.params["latents"] == vec.params["latents"] and torch.equal(back.directions[P], vec.directions[P])
    wide = make_sae(SAEConfig(d_in=32, d_sae=8, arch="relu", hook_name=P))
    with pytest.raises(InterpError, match="d_in=32"):
        sae_feature_vector(tiny_model, wide, POS, NEG)
    nameless = make_sae(SAEConfig(d_in=64, d_sae=8, arch="relu"))
    with pytest.raises(InterpError, match="names no hook point"):
        sae_feature_vector(tiny_model, nameless, POS, NEG)
    with pytest.raises(InterpError, match="trained on"):
        sae_feature_vector(tiny_model, planted, POS, NEG, point="blocks.0.hook_resid_post")
    with pytest.raises(InterpError, match="paired texts"):
        sae_feature_vector(tiny_model, planted, POS, NEG[:3], criterion="paired")

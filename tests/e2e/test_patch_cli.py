"""`interp patch` end to end on SmolLM2: the Eiffel Tower / Colosseum pair, activation and attribution patching."""

from __future__ import annotations

import json

import pytest
from scipy.stats import spearmanr

from tests.e2e.cli import interp

pytestmark = pytest.mark.slow

PAIR = ["--clean", "The Eiffel Tower is in the city of", "--corrupted", "The Colosseum is in the city of",
        "--answer", " Paris", "--wrong", " Rome"]
LAYERS = ",".join(str(layer) for layer in range(0, 30, 3))  # 10 of the 30 layers keep the run short
HOOKS = f"resid_pre:{LAYERS};resid_post:{LAYERS},29;attn_out:{LAYERS};mlp_out:{LAYERS}"
SUBJECT = (2, 3, 4)  # ' E', 'iffel', ' Tower' vs ' Col', 'osse', 'um' (position 0 is BOS)
# Spearman(attribution, activation) over these 400 residual sites measured 0.778 (0.78 over all 1200).
MIN_SPEARMAN = 0.65


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("patch")
    out = {}
    for method in ("activation", "attribution"):
        proc = interp("patch", *PAIR, "--hooks", HOOKS, "--method", method, "--out", str(root / method))
        assert str(root / method / "results.json") in proc.stdout
        result = json.loads((root / method / "results.json").read_text())
        out[method] = {(s["point"], s["position"]): s["recovered"] for s in result["sites"]}, result
    return out


def test_activation_patching_localises_the_subject(runs):
    sites, result = runs["activation"]
    print({p: round(sites[("blocks.0.hook_resid_pre", p)], 3) for p in range(10)})
    assert result["tokens"]["clean"][2:5] == [" E", "iffel", " Tower"]
    assert result["clean_logit_diff"] > 1.0 and result["corrupted_logit_diff"] < -1.0  # Paris vs Rome flips
    assert sites[("blocks.29.hook_resid_post", 9)] == pytest.approx(1.0, abs=1e-3)
    # The subject's middle token alone at the embedding recovers most of the effect (measured 0.687);
    # the tokens the prompts share recover nothing at layer 0.
    assert max(sites[("blocks.0.hook_resid_pre", p)] for p in SUBJECT) > 0.5
    assert all(abs(sites[("blocks.0.hook_resid_pre", p)]) < 1e-6 for p in range(10) if p not in SUBJECT)


def test_attribution_patching_ranks_sites_like_activation_patching(runs):
    act, _ = runs["activation"]
    att, result = runs["attribution"]
    assert act.keys() == att.keys() and len(act) == 410
    rho = spearmanr([act[k] for k in act], [att[k] for k in act])[0]
    print(f"Spearman(attribution, activation) = {rho:.3f}")
    assert rho >= MIN_SPEARMAN
    assert result["method"] == "attribution"

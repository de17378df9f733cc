"""`interp steer build|eval` end to end on SmolLM2. (Greedy `steer generate` with and without the KV cache is
checked token for token against plain transformers in `test_gemma_cli.py`, on both embedded models.)"""

from __future__ import annotations

import json

import pytest

from interp.steering import BUILTIN_PROMPTS
from tests.e2e.cli import interp

pytestmark = pytest.mark.slow

ALPHA = 0.5  # in units of the mean residual norm at the point
# Per seed, mean probe P(positive) at +ALPHA minus at -ALPHA over the prompts. Measured (layer 9, 4 prompts in one
# batch, 16 tokens): 0.92, 0.96, 0.57 for seeds 0-2; means 0.17 / 0.74 / 0.98 at -0.5 / 0 / +0.5.
# A vector that does nothing gives ~0; one with its sign flipped gives a negative margin.
MIN_MARGIN = 0.25


def test_steer_build_then_eval_moves_a_heldout_probe_across_seeds(tmp_path):
    vec, out, prompts = tmp_path / "vec", tmp_path / "eval", tmp_path / "prompts.txt"
    build = interp("steer", "build", "--positive", "builtin:sentiment", "--layer", "9", "--out", str(vec))
    assert (vec / "vector.safetensors").exists() and str(vec) in build.stdout
    prompts.write_text("\n".join(BUILTIN_PROMPTS[:4]) + "\n")
    interp("steer", "eval", "--vector", str(vec), "--out", str(out), "--prompts", str(prompts),
           "--alphas", f"-{ALPHA},0,{ALPHA}", "--alpha-unit", "norm", "--seeds", "3", "--max-new-tokens", "16")
    result = json.loads((out / "results.json").read_text())
    assert (out / "report.html").read_text().count("plotly") > 0
    curve = {row["alpha"]: row for row in result["curve"]}
    by_seed = {a: row["probe_p_positive_by_seed"] for a, row in curve.items()}
    margins = [by_seed[ALPHA][s] - by_seed[-ALPHA][s] for s in by_seed[ALPHA]]
    print("probe P(positive) by alpha:", {a: round(r["probe_p_positive"], 3) for a, r in curve.items()},
          "margins by seed:", [round(m, 3) for m in margins],
          "fluency loss:", {a: round(r["fluency_loss"], 2) for a, r in curve.items()})
    assert len(margins) == 3
    assert min(margins) > MIN_MARGIN
    assert curve[-ALPHA]["probe_p_positive"] < curve[0.0]["probe_p_positive"] < curve[ALPHA]["probe_p_positive"]

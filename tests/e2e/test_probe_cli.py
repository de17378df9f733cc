"""`interp probe` (a layer sweep with the control task) and `interp tcav` end to end on SmolLM2."""

from __future__ import annotations

import json

import pytest

from tests.e2e.cli import interp

pytestmark = pytest.mark.slow


def test_probe_sweep_finds_sentiment_in_middle_layers(tmp_path):
    out = tmp_path / "probe"
    proc = interp("probe", "--data", "builtin:sentiment", "--hooks", "resid_post:0,9,18", "--bootstrap", "200", "--out", str(out))
    result = json.loads((out / "results.json").read_text())
    points = result["points"]
    acc = {p: m["accuracy"] for p, m in points.items()}
    print("accuracy:", acc, "control:", {p: m["control_accuracy"] for p, m in points.items()})
    assert set(acc) == {f"blocks.{i}.hook_resid_post" for i in (0, 9, 18)}
    assert max(acc["blocks.9.hook_resid_post"], acc["blocks.18.hook_resid_post"]) >= 0.85
    assert acc["blocks.0.hook_resid_post"] < max(acc.values())
    for m in points.values():
        assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])
        assert m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]
    assert (out / "directions.safetensors").exists() and "plotly" in (out / "report.html").read_text()
    assert str(out) in proc.stdout


def test_tcav_separates_the_concept_and_reports_a_test(tmp_path):
    inputs, out = tmp_path / "inputs.txt", tmp_path / "tcav"
    inputs.write_text("\n".join([
        "We watched the football match on Saturday and the final",
        "The team trained hard all week before the big",
        "Fans filled the stadium to cheer for the home",
        "The coach said the players were ready for the",
        "After the whistle, both teams shook hands after the",
        "The striker scored twice in the second half of the",
        "Tickets sold out quickly for the championship",
        "The referee stopped play in the middle of the",
    ]) + "\n")
    interp("tcav", "--concept", "builtin:sports", "--random", "builtin", "--inputs", str(inputs), "--target", " game",
           "--hooks", "resid_post:6", "--runs", "5", "--out", str(out))
    result = json.loads((out / "results.json").read_text())
    stats = result["points"]["blocks.6.hook_resid_post"]
    print({k: stats[k] for k in ("mean", "random_mean", "p_value", "cav_accuracy_mean")})
    assert stats["cav_accuracy_mean"] >= 0.85  # sports sentences vs random sentences are linearly separable
    assert 0.0 <= stats["mean"] <= 1.0 and 0.0 <= stats["p_value"] <= 1.0
    assert len(stats["scores"]) == 5 and len(stats["random_scores"]) == 5

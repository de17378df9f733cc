"""Checks on what a page's commands wrote, run after the page by `test_docs.py`: the numbers a reader
of the page would look at, asserted the way the other end-to-end tests assert theirs.

A page's commands are then the end-to-end test of their path (the README's tour is the probe sweep's
and TCAV's), so the suite does not run the same command twice at other sizes. Floors were measured
on the pages as written, on 2 CPU cores, and sit below the measured values with margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def readme(folder: Path) -> None:
    """The tour: a probe per layer finds sentiment in the middle layers; TCAV's CAVs separate sports
    from random text; the SAE and its dashboard are where the tour says."""
    out = folder / "out"
    points = _json(out / "probe" / "results.json")["points"]
    acc = {int(p.split(".")[1]): m["accuracy"] for p, m in points.items()}
    # Measured: 0.74 at layer 0, 0.86-0.98 at layers 1-11, 1.00 from layer 13 on; control task 0.53-0.68.
    assert sorted(acc) == list(range(30))
    assert max(acc[9], acc[18]) >= 0.85 and acc[0] < max(acc.values())
    for m in points.values():
        assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])
        assert m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]
    assert (out / "probe" / "directions.safetensors").exists() and "plotly" in (out / "probe" / "report.html").read_text()
    # Measured: CAV held-out accuracy 0.93 / 0.95 / 0.94 at layers 3 / 6 / 9.
    tcav = _json(out / "tcav" / "results.json")["points"]
    assert set(tcav) == {f"blocks.{layer}.hook_resid_post" for layer in (3, 6, 9)}
    for stats in tcav.values():
        assert stats["cav_accuracy_mean"] >= 0.8  # sports sentences vs random sentences are linearly separable
        assert 0.0 <= stats["mean"] <= 1.0 and 0.0 <= stats["p_value"] <= 1.0
        assert len(stats["scores"]) == len(stats["random_scores"]) > 1
    sae = _json(out / "sae" / "training.json")
    assert sae["tokens"] == 20_000  # the store's tokens: no silent extension of the store
    assert "plotly" in (out / "sae" / "dashboard.html").read_text() and (out / "vec" / "vector.safetensors").exists()


def steering_methods(folder: Path) -> None:
    """LinEAS lowers its transport loss; the GGUF control vector holds the vector's directions at
    layers 6-12 (scale 1), and `steer import` reads back the same vector."""
    from gguf import GGUFReader
    from safetensors.torch import load_file

    stored = load_file(str(folder / "vectors" / "sentiment_l6_12" / "vector.safetensors"))
    reader = GGUFReader(str(folder / "sentiment.gguf"))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(tensors, key=lambda n: int(n.split(".")[1])) == [f"direction.{layer}" for layer in range(6, 13)]
    assert int(reader.fields["controlvector.layer_count"].contents()) == 7
    del reader
    back = load_file(str(folder / "vectors" / "from_gguf" / "vector.safetensors"))
    assert len(stored) == len(back) == 7
    for layer in range(6, 13):
        [key] = [k for k in stored if f"blocks.{layer}." in k]
        np.testing.assert_allclose(tensors[f"direction.{layer}"], stored[key].numpy(), rtol=1e-6)
        torch.testing.assert_close(back[key], stored[key])
    lineas = _json(folder / "steer" / "lineas_sentiment" / "lineas.json")
    assert lineas["points"] == [f"blocks.{layer}.hook_resid_post" for layer in (6, 7, 8)]
    assert lineas["params"]["loss_after"] < 0.6 * lineas["params"]["loss_before"]  # measured: 0.276 -> 0.107


def function_vectors(folder: Path) -> None:
    """The antonyms function vector (layer chosen by the sweep) answers held-out zero-shot prompts; LRC
    beats chance and its edits change the answer; GrAInS reads the sentiment contrast and its vector
    steers at full strength (the fluency cost shows it is applied)."""
    built = _json(folder / "fv" / "antonyms" / "results.json")
    assert len(built["heads"]) == 10 and all(10 <= h["layer"] <= 23 for h in built["heads"])
    assert built["heads"][0]["effect"] > 0 and 10 <= built["layer"] <= 18
    assert built["params"]["clean_accuracy"] > built["params"]["corrupted_accuracy"]
    applied = _json(folder / "fv" / "antonyms_eval" / "results.json")
    # Measured: layer 17; zero-shot 0.00 -> 0.36, few-shot 0.55 -> 0.77, on 22 held-out items.
    assert applied["n_test"] == 22 and "plotly" in (folder / "fv" / "antonyms_eval" / "report.html").read_text()
    assert applied["zero_shot"]["fv"] > applied["zero_shot"]["base"] + 0.1
    assert applied["few_shot"]["base"] > applied["zero_shot"]["base"]
    lrc = _json(folder / "lrc" / "city_country" / "results.json")
    # Measured (2 Jacobians): accuracy 0.59 (chance 0.18, probe 0.59) on 17 held-out subjects; edits 0.65 (probe directions 0.47).
    assert lrc["n_test"] >= 10 and len(lrc["classes"]) >= 5
    assert lrc["accuracy"]["lrc"] > lrc["accuracy"]["chance"] + 0.15 and lrc["accuracy"]["probe"] > lrc["accuracy"]["chance"]
    assert lrc["edits"]["lrc"] > 0.35 and (folder / "lrc" / "city_country" / "concepts.safetensors").stat().st_size > 0
    grains = _json(folder / "vectors" / "grains16" / "results.json")["vector"]["params"]
    # Measured: objective 3.62 after positive texts, 0.70 after negative; " wonderful" among the chosen tokens.
    assert grains["mean_objective_positive"] > grains["mean_objective_negative"] + 1.0
    assert any(" wonderful" in e["plus"] for e in grains["examples"])
    curve = {row["alpha"]: row for row in _json(folder / "eval" / "grains16" / "results.json")["curve"]}
    # Measured (4 prompts x 1 seed): fluency loss 1.79 unsteered -> 3.71 at half a residual norm (2.02 -> 3.68 with 2 seeds).
    assert curve[0.5]["fluency_loss"] > curve[0.0]["fluency_loss"] + 0.8


def models(folder: Path) -> None:
    """A SmolLM2 vector carried to Gemma through the fitted map moves Gemma's held-out probe, close to
    the vector built on Gemma itself."""
    fit = _json(folder / "maps" / "smol9_gemma6" / "map.json")
    # Measured: affine map, 6,616 aligned rows, held-out FVE 0.65.
    assert fit["heldout_fve"] > 0.5 and fit["n_rows_fit"] > 3000
    result = _json(folder / "vectors" / "smol_l9_on_gemma" / "results.json")
    table = {(r["vector"], r["alpha"]): r for r in result["table"]}
    moved = {name: table[(name, 0.5)]["probe_p_positive"] - table[(name, -0.5)]["probe_p_positive"] for name in ("transferred", "native")}
    # Measured (6 prompts in one batch x 1 seed): cosine to the native vector 0.61; probe P(positive) at +0.5 minus at
    # -0.5: 0.53 transferred, 0.55 native.
    assert result["cosine_to_native"] > 0.2 and moved["transferred"] > 0.15 and moved["native"] > 0.15
    assert (folder / "vectors" / "smol_l9_on_gemma" / "vector.safetensors").exists()
    assert "plotly" in (folder / "vectors" / "smol_l9_on_gemma" / "report.html").read_text()


CHECKS = {"README.md": readme, "steering_methods.md": steering_methods, "function_vectors.md": function_vectors,
          "models.md": models}

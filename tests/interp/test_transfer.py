"""Maps between two models' activations, and steering vectors carried through them."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from interp import InterpError, load_model
from interp.models import TINY_CORPUS
from interp.steering import SteeringVector, from_direction
from interp.steering.alignment import aligned_activations, shared_boundaries
from interp.steering.transfer import ActivationMap, fit_affine, fit_autoencoder, fit_map, fve, transfer_vector

POINT = "blocks.1.hook_resid_post"
TEXTS = [s.strip() + "." for s in TINY_CORPUS.split(".") if s.strip()] * 3


def _rotated_copy(src_dir, out_dir, scale: float, seed: int = 1) -> torch.Tensor:
    """Save a copy of a tiny llama whose residual stream is `scale * x @ Q` (Q random orthogonal).

    RMSNorm with unit weights commutes with rotations and ignores scale (its eps scaled by
    `scale**2`), so rotating every
    residual write (embeddings, o_proj, down_proj) by `scale * Q` and every read (q/k/v, gate/up,
    lm_head) by `Q^T` gives the same logits with every residual activation mapped by `scale * Q`.
    Returns the planted map `scale * Q` `(d, d)`.
    """
    model = AutoModelForCausalLM.from_pretrained(src_dir)
    d = model.config.hidden_size
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q.float()
    with torch.no_grad():
        for name, module in model.named_modules():
            if "norm" in name.split(".")[-1]:
                assert torch.equal(module.weight, torch.ones_like(module.weight))  # HF initialises RMSNorm at 1
        model.model.embed_tokens.weight.copy_(scale * model.model.embed_tokens.weight @ q)
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight.copy_(lin.weight @ q)
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight.copy_(scale * q.T @ lin.weight)
        model.lm_head.weight.copy_(model.lm_head.weight @ q)
    model.config.rms_norm_eps *= scale**2  # RMSNorm(scale * x) with eps * scale^2 is RMSNorm(x) exactly
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(src_dir).save_pretrained(out_dir)
    return scale * q


@pytest.fixture(scope="module")
def rotated(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rotated")
    planted = _rotated_copy(tiny_llama_dir, out, scale=3.0)
    return load_model(str(out), device="cpu"), planted


def test_a_planted_map_between_two_tiny_models_is_recovered(tiny_model, rotated):
    model_b, planted = rotated
    tokens = tiny_model.to_tokens("The cat sat on the mat.")
    assert torch.allclose(model_b(tokens), tiny_model(tokens), atol=1e-4)  # the same model, its stream rotated
    pairs = aligned_activations(tiny_model, model_b, TEXTS, POINT, POINT)
    assert len(pairs) > 200
    amap = fit_affine(pairs.source, pairs.target, ridge=0.0)  # noise-free pairs: plain least squares
    rel = float((amap.weight - planted).norm() / planted.norm())
    print(f"planted map recovered from {len(pairs)} rows: relative error {rel:.2e}, |b| {float(amap.bias.norm()):.2e}")
    assert rel <= 0.01
    assert float(amap.bias.norm()) <= 0.01 * float(pairs.target.norm(dim=1).mean())
    # a steering vector carried across is the planted map applied to it
    v = torch.randn(tiny_model.cfg.d_model)
    vec = from_direction(v, POINT, tiny_model.interp_name)
    amap.info.update(source_point=POINT, target_point=POINT, source_model=tiny_model.interp_name, target_model="rotated")
    moved = transfer_vector(vec, amap)
    assert moved.model_name == "rotated" and moved.points == [POINT]
    assert torch.allclose(moved.directions[POINT], v @ planted, rtol=0, atol=0.01 * float((v @ planted).norm()))


def test_the_identity_map_leaves_a_vector_unchanged(tiny_model):
    v = torch.randn(tiny_model.cfg.d_model)
    vec = from_direction(v, POINT, tiny_model.interp_name, method="mean_diff")
    amap = ActivationMap.identity(64, info=dict(source_point=POINT, target_point=POINT, source_model=tiny_model.interp_name,
                                                target_model=tiny_model.interp_name, target_mean_norm=7.5))
    moved = transfer_vector(vec, amap)
    assert torch.equal(moved.directions[POINT], vec.directions[POINT])
    assert moved.resid_norms == {POINT: 7.5} and moved.method == "transferred-mean_diff"


def test_a_map_fitted_from_a_model_to_itself_is_the_identity(tiny_model):
    pairs = aligned_activations(tiny_model, tiny_model, TEXTS, POINT, POINT)
    assert torch.equal(pairs.source, pairs.target)
    amap = fit_affine(pairs.source, pairs.target)
    eye = torch.eye(64)
    assert float((amap.weight - eye).norm() / eye.norm()) <= 0.01
    v = torch.randn(64)
    assert float((amap.transfer(v) - v).norm() / v.norm()) <= 0.01


def test_autoencoder_learns_a_planted_nonlinear_map():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6000, 24, generator=gen)
    a, b = torch.randn(24, 48, generator=gen), torch.randn(48, 16, generator=gen) / 7
    y = torch.relu(x @ a) @ b + 5.0
    train, test = slice(0, 5000), slice(5000, None)
    ae = fit_autoencoder(x[train], y[train], hidden=96, steps=1500, lr=3e-3, batch_rows=256)
    affine = fit_affine(x[train], y[train])
    with torch.no_grad():
        fve_ae, fve_affine = fve(ae(x[test]), y[test]), fve(affine(x[test]), y[test])
    print(f"held-out FVE: autoencoder {fve_ae:.3f}, affine {fve_affine:.3f}")
    assert fve_ae >= 0.95 and fve_ae > fve_affine + 0.1
    losses = [h["loss"] for h in ae.info["loss_history"]]
    assert losses[-1] < 0.2 * losses[0]


def test_autoencoder_transfer_is_the_mean_shift_over_anchors():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(800, 8, generator=gen)
    y = torch.cat([x, torch.relu(x)], dim=1)
    amap = fit_map("autoencoder", x, y, hidden=32, steps=200, seed=3)
    assert amap.anchors.shape == (512, 8)
    v = torch.randn(8, generator=gen)
    with torch.no_grad():
        by_hand = (amap(amap.anchors + v) - amap(amap.anchors)).mean(0)
    assert torch.equal(amap.transfer(v), by_hand)


def test_map_round_trips_through_its_folder(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen)
    y = torch.randn(300, 5, generator=gen)
    for kind in ("affine", "autoencoder"):
        amap = fit_map(kind, x, y, **({"hidden": 16, "steps": 20} if kind == "autoencoder" else {}))
        amap.info.update(source_point="a", target_point="b")
        amap.save(tmp_path / kind)
        back = ActivationMap.load(tmp_path / kind)
        assert back.kind == kind and back.info["target_point"] == "b"
        with torch.no_grad():
            assert torch.equal(back(x), amap(x))
        v = torch.randn(8, generator=gen)
        assert torch.equal(back.transfer(v), amap.transfer(v))


def test_user_mistakes_raise_one_line_errors(tmp_path, tiny_model):
    with pytest.raises(InterpError, match="map.json is missing"):
        ActivationMap.load(tmp_path)
    (tmp_path / "map.json").write_text("{not json")
    (tmp_path / "map.safetensors").write_bytes(b"junk")
    with pytest.raises(InterpError, match="corrupt"):
        ActivationMap.load(tmp_path)
    with pytest.raises(InterpError, match="unknown map kind"):
        fit_map("mlp", torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(InterpError, match="paired rows"):
        fit_affine(torch.zeros(4, 2), torch.zeros(5, 2))
    amap = ActivationMap.identity(64, info=dict(source_point="blocks.0.hook_resid_post", target_point=POINT))
    vec = from_direction(torch.ones(64), POINT, tiny_model.interp_name)
    with pytest.raises(InterpError, match="the map starts at blocks.0.hook_resid_post"):
        transfer_vector(vec, amap)
    with pytest.raises(InterpError, match="width 64"):
        amap.transfer(torch.ones(3))


def test_shared_boundaries_pair_tokens_that_end_at_the_same_character():
    # "The cat" as [The][ cat] on one side and [T][he][ c][at] on the other
    assert shared_boundaries([3, 7], [1, 3, 5, 7]) == [(0, 1), (1, 3)]
    # a zero-width token on one side: the later one (that has read the whole prefix) is used
    assert shared_boundaries([3, 3, 7], [3, 7]) == [(1, 0), (2, 1)]
    assert shared_boundaries([2, 5], [3, 6]) == []


def test_vector_types_survive_transfer(tiny_model, tmp_path):
    vec = from_direction(torch.randn(64), POINT, tiny_model.interp_name)
    vec.source = {"fingerprint": "abc", "text_hashes": ["h1"]}
    amap = ActivationMap.identity(64, info=dict(source_point=POINT, target_point="blocks.2.hook_resid_post",
                                                source_model=tiny_model.interp_name, target_model=tiny_model.interp_name))
    moved = transfer_vector(vec, amap)
    moved.save(tmp_path / "v")
    back = SteeringVector.load(tmp_path / "v")
    assert back.points == ["blocks.2.hook_resid_post"] and back.source["text_hashes"] == ["h1"]
    assert back.params["transferred_from"]["point"] == POINT


def test_steer_map_and_transfer_commands_on_tiny_models(tiny_llama_dir, tmp_path, capsys):
    """`steer map` between a tiny model and its rotated copy finds the rotation; `steer transfer` carries
    a vector built on the first onto the second, where it steers exactly as the original does."""
    from interp.cli import main

    planted = _rotated_copy(tiny_llama_dir, tmp_path / "rotated", scale=2.0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join([TINY_CORPUS] * 12))
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("I love this film, it is wonderful.\nThe sun is hot.\n")
    neg.write_text("I hate this film, it is terrible.\nThe snow is cold.\n")
    vec, amap, out = tmp_path / "vec", tmp_path / "map", tmp_path / "moved"
    assert main(["steer", "build", "--model", str(tiny_llama_dir), "--positive", str(pos), "--negative", str(neg),
                 "--hook", POINT, "--out", str(vec)]) == 0
    assert main(["steer", "map", "--from-model", str(tiny_llama_dir), "--to-model", str(tmp_path / "rotated"), "--hook-from", POINT,
                 "--hook-to", "resid_post:1", "--data", str(corpus), "--texts", "40", "--chars", "120", "--ridge", "0",
                 "--out", str(amap)]) == 0
    printed = capsys.readouterr().out
    info = json.loads((amap / "map.json").read_text())
    assert info["heldout_fve"] > 0.9999 and f"held-out {info['heldout_fve']:.3f}" in printed
    assert (amap / "report.html").read_text().count("plotly") > 0
    assert main(["steer", "transfer", "--vector", str(vec), "--map", str(amap), "--out", str(out), "--no-eval"]) == 0
    assert "wrote" in capsys.readouterr().out
    moved = SteeringVector.load(out)
    v = SteeringVector.load(vec).directions[POINT]
    assert moved.model_name == "rotated" and moved.points == [POINT]
    assert torch.allclose(moved.directions[POINT], v @ planted, atol=1e-3 * float(v.norm()))
    assert json.loads((out / "results.json").read_text())["map"]["kind"] == "affine"
    # a vector built on the wrong model, or a map folder that is not one: one-line errors
    assert main(["steer", "transfer", "--vector", str(out), "--map", str(amap), "--out", str(tmp_path / "x"), "--no-eval"]) == 1
    assert main(["steer", "transfer", "--vector", str(vec), "--map", str(tmp_path), "--out", str(tmp_path / "y"), "--no-eval"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err and not (tmp_path / "x").exists()

"""Every main path end to end through the CLI on the second embedded model, Gemma 3 270M, and the
paths new to both models (capture and greedy generation against plain transformers). Steering on Gemma
runs as docs/models.md writes it: a vector built on Gemma itself and one carried from SmolLM2 through a
map between their residual streams, both evaluated by Gemma's held-out probe (checked by `doc_checks.py`).

Gemma's quality floors sit below the values measured on 2 CPU cores (printed by each test), with
margin: streamed SAE held-out FVE 0.972 at resid_post 0 (floor 0.90); probe accuracy 1.00 at layers 6
and 12 (floor 0.85, control task 0.59-0.69); CAV accuracy 1.00 (floor 0.85).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interp.data import token_batches
from interp.models import model_source
from interp.store import ActivationStore
from tests.e2e.cli import interp

pytestmark = pytest.mark.slow

GEMMA = "gemma3-270m"
SAE_POINT = "blocks.0.hook_resid_post"
SHUFFLE_TOKENS = 2**14  # rows per shuffle block (--shuffle-tokens)
STREAM_TOKENS = 48_000  # the stream refills its shuffle buffer twice
FVE_FLOOR_STREAM = 0.90  # held-out FVE


@pytest.fixture(scope="module")
def hf_models():
    """Plain transformers models of both embedded models (eager attention, as the bridge uses), loaded once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for spec in ("smollm2-135m", GEMMA):
        path = model_source(spec)[0]
        out[spec] = (AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval(), AutoTokenizer.from_pretrained(path))
    return out


def test_inspect_lists_gemmas_hook_points():
    proc = interp("inspect", "--model", GEMMA)
    assert "gemma3-270m: 18 layers, d_model 640, 4 heads, d_vocab 262144" in proc.stdout
    for name in ("blocks.{L}.hook_resid_post", "blocks.{L}.ln1_post.hook_out", "blocks.{L}.ln2_post.hook_out", "hook_embed"):
        assert name in proc.stdout, name


@pytest.mark.parametrize("spec", ["smollm2-135m", GEMMA])
def test_cached_activations_equal_transformers_hidden_states(spec, hf_models, prose, tmp_path):
    hf, tok = hf_models[spec]
    store, n_tokens = tmp_path / "store", 2 * 63
    interp("cache", "--model", spec, "--hooks", "resid_post:0,5", "--data", str(prose["heldout"]), "--tokens", str(n_tokens),
           "--ctx-len", "64", "--batch-size", "2", "--out", str(store))
    contexts = torch.cat(list(token_batches(tok, str(prose["heldout"]), 64, 2, n_tokens)))
    with torch.no_grad():
        hidden = hf(contexts, output_hidden_states=True).hidden_states
    for layer in (0, 5):
        name = f"blocks.{layer}.hook_resid_post"
        rows = torch.as_tensor(ActivationStore(store).tensor(name)).float()
        want = hidden[layer + 1][:, 1:].reshape(-1, hidden[0].shape[-1])
        scale = float(want.abs().max())
        print(f"{spec} {name}: max |store - transformers| {float((rows - want).abs().max()):.2e} (activations up to {scale:.3g})")
        assert rows.shape == want.shape
        assert torch.allclose(rows, want, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("spec", ["smollm2-135m", GEMMA])
def test_greedy_generation_equals_transformers_with_and_without_the_kv_cache(spec, hf_models):
    hf, tok = hf_models[spec]
    prompt, n_new = "The capital of France is", 12
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)  # interp starts every prompt with BOS
    with torch.no_grad():  # greedy by hand: n_new full forwards, argmax of the last logits, no stopping rule
        for _ in range(n_new):
            ids = torch.cat([ids, hf(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    new = ids[0, -n_new:].tolist()
    special = set(tok.all_special_ids)
    stop = next((i for i, t in enumerate(new) if t in special), n_new)  # the CLI may stop at an end-of-text token
    want = tok.decode(new[:stop], skip_special_tokens=True).rstrip("\n")
    args = ("steer", "generate", "--model", spec, "--prompt", prompt, "--max-new-tokens", str(n_new), "--temperature", "0")
    cached, uncached = interp(*args).stdout.rstrip("\n"), interp(*args, "--no-kv-cache").stdout.rstrip("\n")
    print(f"{spec}: transformers {want!r}, interp {cached!r}")
    assert cached == uncached
    assert cached == want if stop == n_new else cached.startswith(want)
    assert len(want.split()) >= 2


def test_streamed_sae_train_on_gemma(prose, hf_models, tmp_path):
    out = tmp_path / "sae"
    proc = interp("sae", "train", "--model", GEMMA, "--hook", SAE_POINT, "--arch", "topk", "--k", "16", "--width", "1280",
                  "--tokens", str(STREAM_TOKENS), "--batch-tokens", "2048", "--shuffle-tokens", str(SHUFFLE_TOKENS), "--data", str(prose["train"]), "--eval-tokens", "500",
                  "--out", str(out))
    assert "saved the SAE" in proc.stdout
    training = json.loads((out / "training.json").read_text())
    assert training["tokens"] == STREAM_TOKENS > 2 * SHUFFLE_TOKENS
    fvu = [h["fvu"] for h in training["history"]]
    fve = _heldout_fve(out, prose["heldout"].read_text(), *hf_models[GEMMA])
    print(f"Gemma streamed SAE at {SAE_POINT}: held-out FVE {fve:.3f}, FVU first/last logged {fvu[0]:.3f}/{fvu[-1]:.3f}")
    assert fvu[-1] < 0.5 * fvu[0]
    assert fve > FVE_FLOOR_STREAM


class _Stop(Exception):
    pass


def _heldout_fve(sae_dir: Path, text: str, hf, tok, n_contexts: int = 12, ctx_len: int = 128) -> float:
    """1 - sum |x - x_hat|^2 / sum |x - mean x|^2 on held-out tokens, from plain transformers (`hf`, `tok`: Gemma's
    model and tokenizer) and the saved weights."""
    raw = json.loads((sae_dir / "cfg.json").read_text())
    cfg = {**raw.get("metadata", {}), **raw}
    w = load_file(str(sae_dir / "sae_weights.safetensors"))
    assert cfg["architecture"] == "topk" and cfg["hook_name"] == SAE_POINT
    ids = tok(text, add_special_tokens=False)["input_ids"]
    body = ctx_len - 1
    contexts = torch.tensor([[tok.bos_token_id] + ids[i * body : (i + 1) * body] for i in range(n_contexts)])
    captured = []

    def keep_and_stop(_module, _args, out):  # blocks.0 resid_post is decoder layer 0's output; nothing after it is needed
        captured.append(out[0] if isinstance(out, tuple) else out)
        raise _Stop

    handle = hf.model.layers[0].register_forward_hook(keep_and_stop)
    try:
        with torch.no_grad():
            hf.model(contexts)
    except _Stop:
        pass
    finally:
        handle.remove()
    x = captured[0][:, 1:].reshape(-1, 640)
    centred = x - w["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x
    pre = torch.relu(centred @ w["W_enc"] + w["b_enc"])
    top = pre.topk(cfg["k"], dim=-1)
    x_hat = torch.zeros_like(pre).scatter_(-1, top.indices, top.values) @ w["W_dec"] + w["b_dec"]
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_probe_sweep_on_gemma(tmp_path):
    out = tmp_path / "probe"
    interp("probe", "--model", GEMMA, "--data", "builtin:sentiment", "--points", "resid_post:0,6,12", "--bootstrap", "100", "--out", str(out))
    points = json.loads((out / "results.json").read_text())["points"]
    acc = {p: m["accuracy"] for p, m in points.items()}
    print("Gemma probe accuracy:", acc, "control:", {p: m["control_accuracy"] for p, m in points.items()})
    assert max(acc["blocks.6.hook_resid_post"], acc["blocks.12.hook_resid_post"]) >= 0.85
    assert acc["blocks.0.hook_resid_post"] < max(acc.values())
    for m in points.values():
        assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])


def test_tcav_on_gemma(tmp_path):
    inputs, out = tmp_path / "inputs.txt", tmp_path / "tcav"
    inputs.write_text("\n".join([
        "We watched the football match on Saturday and the final",
        "The team trained hard all week before the big",
        "Fans filled the stadium to cheer for the home",
        "The coach said the players were ready for the",
        "The striker scored twice in the second half of the",
        "Tickets sold out quickly for the championship",
    ]) + "\n")
    interp("tcav", "--model", GEMMA, "--concept", "builtin:sports", "--random", "builtin", "--inputs", str(inputs),
           "--target", " game", "--points", "resid_post:6", "--runs", "4", "--out", str(out))
    stats = json.loads((out / "results.json").read_text())["points"]["blocks.6.hook_resid_post"]
    print("Gemma TCAV:", {k: stats[k] for k in ("mean", "random_mean", "p_value", "cav_accuracy_mean")})
    assert stats["cav_accuracy_mean"] >= 0.85
    assert 0.0 <= stats["mean"] <= 1.0 and len(stats["scores"]) == 4

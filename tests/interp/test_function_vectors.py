"""Function vectors on a tiny model, each piece against an independent computation: TransformerLens's
own hooks (`run_with_hooks` / `run_with_cache`, which see `hook_z` as `(batch, pos, n_heads, d_head)`)
patching one head in one prompt at a time."""

from __future__ import annotations

import json
import random

import pytest
import torch

from interp import function_vectors as fvs
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.tasks import builtin_tasks, load_task, make_prompts


@pytest.fixture(scope="module")
def prompts(tiny_model):
    task = load_task("antonyms")
    rng = random.Random(0)
    queries = task.train[:3]
    clean = make_prompts(tiny_model.tokenizer, queries, task.train, 2, rng)
    corrupted = make_prompts(tiny_model.tokenizer, queries, task.train, 2, rng, shuffle_labels=True)
    return clean, corrupted


def _tokens(model, text):
    from interp.readout import tokenize

    return tokenize(model, [text])[0]


def _reference_mean_z(model, texts):
    zs = []
    for text in texts:
        _, cache = model.run_with_cache(_tokens(model, text))
        zs.append(torch.stack([cache[f"blocks.{l}.attn.hook_z"][0, -1] for l in range(model.cfg.n_layers)]))
    return torch.stack(zs).mean(0)


def _reference_effect(model, corrupted, mean_z, layer, head):
    """P(answer) rise from patching one head in one prompt at a time, through TransformerLens hooks."""
    rises = []
    for text, answer in zip(corrupted.texts, corrupted.answers.tolist()):
        tokens = _tokens(model, text)

        def patch(z, hook):
            z = z.clone()
            z[0, -1, head] = mean_z[layer, head]
            return z

        with torch.no_grad():
            base = model(tokens)[0, -1].softmax(-1)[answer]
            patched = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])[0, -1].softmax(-1)[answer]
        rises.append(float(patched - base))
    return sum(rises) / len(rises)


def test_mean_head_outputs_match_run_with_cache(tiny_model, prompts):
    clean, _ = prompts
    ours = fvs.mean_head_outputs(tiny_model, clean.texts, batch_texts=2)
    ref = _reference_mean_z(tiny_model, clean.texts)
    assert ours.shape == (3, 4, 16)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_batched_head_effects_equal_one_head_at_a_time_patches(tiny_model, prompts, kv_cache):
    clean, corrupted = prompts
    mean_z = fvs.mean_head_outputs(tiny_model, clean.texts)
    effects = fvs.head_indirect_effects(tiny_model, corrupted, mean_z, layers=[0, 2], batch_texts=5, kv_cache=kv_cache)
    assert torch.isnan(effects[1]).all() and not torch.isnan(effects[[0, 2]]).any()
    ref = torch.tensor([[_reference_effect(tiny_model, corrupted, mean_z, layer, head) for head in range(4)] for layer in (0, 2)])
    scale = float(ref.abs().max())
    assert scale > 1e-7  # the patches do move P(answer): the comparison is not of zeros
    assert float((effects[[0, 2]] - ref).abs().max()) <= 1e-3 * scale + 1e-8


def test_vector_is_the_heads_share_of_attn_out(tiny_model, prompts):
    """Summing every head of a layer through W_O gives that layer's attention output (no bias in llama)."""
    clean, _ = prompts
    layer = 1
    _, cache = tiny_model.run_with_cache(_tokens(tiny_model, clean.texts[0]))
    z = cache[f"blocks.{layer}.attn.hook_z"][0, -1]                      # (n_heads, d_head)
    as_mean = torch.zeros(3, 4, 16)
    as_mean[layer] = z
    vec = fvs.vector_from_heads(tiny_model, as_mean, [(layer, h, 0.0) for h in range(4)])
    torch.testing.assert_close(vec, cache[f"blocks.{layer}.hook_attn_out"][0, -1], atol=1e-5, rtol=1e-4)


def test_function_vector_is_added_at_the_last_token_only(tiny_model, prompts):
    clean, _ = prompts
    vec = torch.randn(64)
    probs, _ = fvs.answer_probs(tiny_model, clean, vec, layer=1, alpha=2.0, batch_texts=2)
    ref = []
    for text, answer in zip(clean.texts, clean.answers.tolist()):
        def add(act, hook):
            act = act.clone()
            act[0, -1] += 2.0 * vec
            return act

        with torch.no_grad():
            logits = tiny_model.run_with_hooks(_tokens(tiny_model, text), fwd_hooks=[("blocks.1.hook_resid_post", add)])
        ref.append(float(logits[0, -1].softmax(-1)[answer]))
    torch.testing.assert_close(probs, torch.tensor(ref), atol=1e-6, rtol=1e-4)
    assert HookManager(tiny_model).n_active == 0


def test_build_save_load_round_trip(tiny_model, tmp_path):
    task = load_task("country_capital")
    fv = fvs.build_function_vector(tiny_model, task, n_prompts=2, n_demos=2, n_top_heads=3, layers=[1, 2], sweep_items=4,
                                   batch_texts=8, progress=False)
    assert len(fv.heads) == 3 and all(layer in (1, 2) for layer, _, _ in fv.heads)
    assert [e for _, _, e in fv.heads] == sorted((e for _, _, e in fv.heads), reverse=True)
    assert set(fv.layer_accuracy) == {0, 1, 2} and fv.layer_accuracy[fv.layer] == max(fv.layer_accuracy.values())
    fv.save(tmp_path)
    back = fvs.FunctionVector.load(tmp_path)
    assert torch.equal(back.vector, fv.vector) and back.heads == fv.heads and back.layer == fv.layer
    meta = json.loads((tmp_path / "function_vector.json").read_text())
    assert meta["manifest"]["widths"] == {fv.point: 64}
    result = fvs.evaluate_function_vector(tiny_model, fv, task, n_demos=2, batch_texts=8)
    assert result["n_test"] == len(task.test) and 0 <= result["zero_shot"]["fv"] <= 1


def test_shipped_tasks_have_held_out_splits_and_corrupted_prompts_break_the_mapping(tiny_model):
    for name in ("antonyms", "english_french", "country_capital", "present_past"):
        task = load_task(name)
        assert len(task.inputs) >= 50 and len(task.test) >= 15 and len(task.train) >= 35
        assert len(set(task.inputs)) == len(task.inputs)
    assert "city_country" in builtin_tasks()
    task = load_task("present_past")
    pairs = dict(task.train)
    corrupted = make_prompts(tiny_model.tokenizer, task.train[:5], task.train, 4, random.Random(1), shuffle_labels=True)
    for text in corrupted.texts:
        demos = [block.split("\nA: ") for block in text.split("\n\n")[:-1]]
        assert all(pairs[x[3:]] != y for x, y in demos)  # every demonstration carries another item's answer


def test_bad_task_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b", "split": "dev"}\n')
    with pytest.raises(InterpError, match="split"):
        load_task(str(bad))
    with pytest.raises(InterpError, match="unknown task"):
        load_task("no_such_task")

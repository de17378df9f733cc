"""Harvesting and the activation store."""

import json

import pytest
import torch

import interp.activations as acts_mod
from interp import InterpError
from interp.activations import ActivationStore, build_store, harvest
from interp.data import token_batches

POINTS = ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Story {i}: a bird sang in tree {i} and the sun was hot over the park." for i in range(200)))
    return str(path)


def reference_rows(model, corpus, n_tokens, ctx_len=16):
    """Activations of every non-BOS token, computed one plain run_with_cache at a time."""
    out = {p: [] for p in POINTS}
    for tokens in token_batches(model, corpus, ctx_len, 4, n_tokens):
        _, cache = model.run_with_cache(tokens)
        for p in POINTS:
            out[p].append(cache[p][:, 1:].reshape(-1, cache[p].shape[-1]))
    return {p: torch.cat(v) for p, v in out.items()}


def test_harvest_rows_are_the_tokens_shuffled_in_step(tiny_model, corpus):
    ref = reference_rows(tiny_model, corpus, 900)
    got = list(harvest(tiny_model, POINTS, corpus, 900, ctx_len=16, batch_size=4, out_batch_size=128, shuffle_buffer_tokens=300))
    rows = {p: torch.cat([b[p] for b in got]) for p in POINTS}
    assert rows[POINTS[0]].shape == (900, 64)
    assert all(b[POINTS[0]].shape[0] == 128 for b in got[:-1])
    # Same multiset of rows, shuffled: match each reference row to its harvested position.
    order = torch.cdist(ref[POINTS[0]], rows[POINTS[0]]).argmin(dim=1)
    assert torch.equal(rows[POINTS[0]][order], ref[POINTS[0]])
    assert not torch.equal(order, torch.arange(900))
    # One permutation for all points: row i of each point is the same token.
    assert torch.allclose(rows[POINTS[1]][order], ref[POINTS[1]], atol=1e-6)


def test_store_equals_reference_and_reads_back(tiny_model, corpus, tmp_path):
    store = build_store(tiny_model, POINTS, corpus, 1000, tmp_path / "s", ctx_len=16, batch_size=4, shard_contexts=8, progress=False)
    ref = reference_rows(tiny_model, corpus, 1000)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["n_tokens"] == 1000 and manifest["d"] == 64 and manifest["points"] == POINTS
    assert manifest["model"] == tiny_model.interp_name and len(manifest["data_fingerprint"]) == 16
    for p in POINTS:
        assert torch.allclose(store.tensor(p), ref[p], atol=1e-6)
        batches = list(store.batches(p, 96, shuffle=True, seed=1))
        shuffled = torch.cat(batches)
        assert shuffled.shape == (1000, 64)
        assert torch.allclose(shuffled.sum(0), ref[p].sum(0), atol=1e-3)


def test_store_interrupted_then_resumed_equals_one_go(tiny_model, corpus, tmp_path, monkeypatch):
    kw = dict(ctx_len=16, batch_size=4, shard_contexts=8, progress=False)
    one_go = build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "a", **kw)
    real, calls = acts_mod.token_activations, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(acts_mod, "token_activations", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "b", **kw)
    half = ActivationStore(tmp_path / "b")
    assert 0 < half.n_tokens < 1500 and not half.complete
    monkeypatch.setattr(acts_mod, "token_activations", real)
    resumed = build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "b", **kw)
    for p in POINTS:
        assert torch.equal(resumed.tensor(p), one_go.tensor(p))
    # Extending a finished store to more tokens also equals one go.
    small = build_store(tiny_model, POINTS, corpus, 500, tmp_path / "c", **kw)
    assert small.n_tokens == 500
    extended = build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "c", **kw)
    assert torch.equal(extended.tensor(POINTS[1]), one_go.tensor(POINTS[1]))
    # Opening a finished store again harvests nothing.
    monkeypatch.setattr(acts_mod, "token_activations", interrupted)
    calls.clear()
    again = build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "c", **kw)
    assert calls == [] and torch.equal(again.tensor(POINTS[0]), one_go.tensor(POINTS[0]))


def test_store_refuses_other_settings_and_bad_input(tiny_model, corpus, tmp_path):
    build_store(tiny_model, POINTS[:1], corpus, 200, tmp_path / "s", ctx_len=16, progress=False)
    with pytest.raises(InterpError, match="made with other settings"):
        build_store(tiny_model, POINTS[1:], corpus, 200, tmp_path / "s", ctx_len=16, progress=False)
    with pytest.raises(InterpError, match="already holds an activation store"):
        build_store(tiny_model, POINTS[:1], corpus, 200, tmp_path / "s", ctx_len=16, resume=False, progress=False)
    with pytest.raises(InterpError, match="token count must be positive"):
        build_store(tiny_model, POINTS, corpus, 0, tmp_path / "z", progress=False)
    with pytest.raises(InterpError, match="not an activation store"):
        ActivationStore(tmp_path / "nowhere")
    assert not (tmp_path / "z").exists()


def test_reused_buffers_give_the_same_batches_and_corruption_is_caught(tiny_model, corpus, tmp_path):
    store = build_store(tiny_model, POINTS[:1], corpus, 1000, tmp_path / "s", ctx_len=16, shard_contexts=8, progress=False)
    p = POINTS[0]
    for shuffle in (False, True):
        fresh = [b.clone() for b in store.batches(p, 100, shuffle=shuffle, seed=3, shards_in_memory=2)]
        reused = [b.clone() for b in store.batches(p, 100, shuffle=shuffle, seed=3, shards_in_memory=2, reuse=True)]
        assert len(fresh) == len(reused) and all(torch.equal(a, b) for a, b in zip(fresh, reused))
    buffer = torch.empty(1000, 64)
    assert torch.equal(store.tensor(p, out=buffer), store.tensor(p)) and store.tensor(p, out=buffer) is buffer
    shard = tmp_path / "s" / p / "shard_00000.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(InterpError, match="truncated"):
        store.tensor(p)

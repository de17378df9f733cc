"""Harvesting and the activation store."""

import json

import numpy as np
import pytest
import torch

import interp.activations as acts_mod
import interp.store as store_mod
from interp import InterpError
from interp.activations import harvest, point_shapes
from interp.store import ActivationStore, build_store, check_store
from interp.data import fingerprint, token_batches
from interp.manifest import make_manifest

POINTS = ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Story {i}: a bird sang in tree {i} and the sun was hot over the park." for i in range(200)))
    return str(path)


def same_rows(a, b):
    """True when `a` and `b` hold the same rows the same number of times, in any order."""
    (ua, ca), (ub, cb) = (torch.unique(t, dim=0, return_counts=True) for t in (a, b))
    return torch.equal(ua, ub) and torch.equal(ca, cb)


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
    # Block-wise: 300 buffered rows are 20 contexts of 15 tokens, and each block of 300 tokens
    # is emitted, shuffled, before the next one is read.
    blocks = [slice(300 * b, 300 * (b + 1)) for b in range(3)]
    assert all(same_rows(rows[POINTS[0]][b], ref[POINTS[0]][b]) for b in blocks)
    # One permutation for all points: row i of each point is the same token.
    assert torch.allclose(rows[POINTS[1]][order], ref[POINTS[1]], atol=1e-6)


def test_store_equals_reference_and_reads_back(tiny_model, corpus, tmp_path):
    store = build_store(tiny_model, POINTS, corpus, 1000, tmp_path / "s", ctx_len=16, batch_size=4, shard_contexts=8, progress=False)
    ref = reference_rows(tiny_model, corpus, 1000)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["n_tokens"] == 1000 and manifest["points"] == POINTS and "d" not in manifest
    schema = make_manifest(tiny_model.interp_name, {p: 64 for p in POINTS}, fingerprint(corpus), 16)
    assert {k: manifest[k] for k in schema} == schema and store.schema == schema
    assert manifest["shapes"] == {p: [64] for p in POINTS} and manifest["text_field"] == "text"
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


KW = dict(ctx_len=16, batch_size=4, shard_contexts=8, progress=False)


def test_old_stores_with_one_d_still_read_resume_and_pass_the_check(tiny_model, corpus, tmp_path):
    one_go = build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "a", **KW)
    build_store(tiny_model, POINTS, corpus, 500, tmp_path / "old", **KW)
    path = tmp_path / "old" / "manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("widths", "shapes"):
        del manifest[key]
    path.write_text(json.dumps({**manifest, "version": 1, "d": 64}))
    old = ActivationStore(tmp_path / "old")
    assert old.widths == {p: 64 for p in POINTS} and old.shapes == {p: (64,) for p in POINTS} and old.d == 64
    assert check_store(old, tiny_model.interp_name, POINTS, fingerprint(corpus), 16, "text") is old
    extended = build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "old", **KW)
    for p in POINTS:
        assert torch.equal(extended.tensor(p), one_go.tensor(p))
    assert json.loads(path.read_text())["widths"] == {p: 64 for p in POINTS}


def test_check_store_names_every_differing_field_on_one_line(tiny_model, corpus, tmp_path):
    store = build_store(tiny_model, POINTS[:1], corpus, 300, tmp_path / "s", **KW)
    ok = check_store(tmp_path / "s", tiny_model.interp_name, POINTS[0], fingerprint(corpus), 16, "text")
    assert ok.n_tokens == 300 and ok.points == POINTS[:1]
    assert check_store(store, None, POINTS[:1], None, None, None) is store  # None: not checked
    with pytest.raises(InterpError) as err:
        check_store(store, "other-model", POINTS, "0123456789abcdef", 32, "body")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"the store at {tmp_path / 's'} was made with other settings")
    for part in ("model 'tiny", "lack ['blocks.2.hook_mlp_out']", "data_fingerprint", "ctx_len 16 vs 32", "text_field 'text' vs 'body'"):
        assert part in msg, part
    assert msg.endswith("use a store made with these settings, or delete it and harvest again")
    # build_store's resume goes through the same check, and names each setting that differs.
    with pytest.raises(InterpError, match=r"ctx_len 16 vs 8; dtype 'float32' vs 'float16'.*: choose another --out or delete it"):
        build_store(tiny_model, POINTS[:1], corpus, 300, tmp_path / "s", ctx_len=8, dtype=torch.float16, progress=False)
    with pytest.raises(InterpError, match=r"points \['blocks.0.hook_resid_post'\] lack \['blocks.2.hook_mlp_out'\]"):
        build_store(tiny_model, POINTS, corpus, 300, tmp_path / "s", **KW)
    build_store(tiny_model, POINTS, corpus, 120, tmp_path / "two", **KW)
    with pytest.raises(InterpError, match=r"points \['blocks.0.hook_resid_post', 'blocks.2.hook_mlp_out'\] vs \['blocks.0.hook_resid_post'\]"):
        build_store(tiny_model, POINTS[:1], corpus, 300, tmp_path / "two", **KW)  # would leave one point short
    with pytest.raises(InterpError, match="is not an activation store"):
        check_store(tmp_path / "nowhere", None, POINTS, None, None, None)


class HeadsLM(torch.nn.Module):
    """Token embeddings of width 8, seen at `embed` as (batch, pos, 8), at `heads` as
    (batch, pos, 2 heads, 4) and at `head_major` as (batch, 2, pos, 4)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.embed = torch.nn.Embedding(len(tokenizer), 8)
        self.heads = torch.nn.Identity()
        self.head_major = torch.nn.Identity()

    def forward(self, tokens):
        x = self.embed(tokens)
        h = self.heads(x.view(*tokens.shape, 2, 4))
        return self.head_major(h.transpose(1, 2))


def test_points_of_other_widths_and_head_shapes_line_up_token_for_token(tiny_model, corpus, tmp_path):
    lm = HeadsLM(tiny_model.tokenizer)
    assert point_shapes(lm, ["embed", "heads"]) == {"embed": (8,), "heads": (2, 4)}
    store = build_store(lm, ["heads", "embed"], corpus, 500, tmp_path / "h", ctx_len=16, batch_size=3, shard_contexts=4, progress=False)
    manifest = json.loads((tmp_path / "h" / "manifest.json").read_text())
    assert manifest["widths"] == {"heads": 8, "embed": 8} and manifest["shapes"] == {"heads": [2, 4], "embed": [8]}
    contexts = torch.cat([b for b in token_batches(lm, corpus, 16, 1, 495)])  # 33 full contexts
    want = lm.embed.weight.detach()[contexts[:, 1:]].reshape(-1, 8)  # (heads, d_head) flattened per token
    assert torch.equal(store.tensor("heads")[:495], want) and torch.equal(store.tensor("embed")[:495], want)
    streamed = list(harvest(lm, ["heads", "embed"], corpus, 500, ctx_len=16, batch_size=3, out_batch_size=64, shuffle_buffer_tokens=100))
    heads, embed = (torch.cat([b[p] for b in streamed]) for p in ("heads", "embed"))
    assert heads.shape == (500, 8) and torch.equal(heads, embed)  # row i of both points is the same token
    assert same_rows(heads, store.tensor("heads"))
    with pytest.raises(InterpError, match=r"head_major gives activations of shape \(2, 2, pos, 4\).*no row per token"):
        build_store(lm, ["embed", "head_major"], corpus, 100, tmp_path / "bad", progress=False)
    with pytest.raises(InterpError, match="no row per token"):
        next(harvest(lm, "head_major", corpus, 100))
    assert not (tmp_path / "bad").exists()

    # A real model: points of width 64 and 128 in one store; attention patterns are refused.
    points = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    store = build_store(tiny_model, points, corpus, 600, tmp_path / "m", **KW)
    assert store.widths == {points[0]: 64, points[1]: 128}
    out = {p: [] for p in points}
    for tokens in token_batches(tiny_model, corpus, 16, 4, 600):
        _, cache = tiny_model.run_with_cache(tokens)
        for p in points:
            out[p].append(cache[p][:, 1:].reshape(-1, cache[p].shape[-1]))
    for p in points:
        assert torch.allclose(store.tensor(p), torch.cat(out[p]), atol=1e-6)
        assert store.shard(p, 0).shape == (120, store.widths[p])
    both = list(store.batches(points, 100, shuffle=True, seed=2, reuse=True))
    assert [tuple(b[points[1]].shape) for b in both[:2]] == [(100, 128), (100, 128)]
    with pytest.raises(InterpError, match="differ in width"):
        store.d
    with pytest.raises(InterpError, match=r"hook_pattern gives activations of shape \(2, 4, pos, pos\)"):
        build_store(tiny_model, "blocks.0.attn.hook_pattern", corpus, 100, tmp_path / "p", progress=False)
    with pytest.raises(InterpError, match=r"hook_rot_q gives activations of shape \(2, 4, pos, 16\)"):
        next(harvest(tiny_model, "blocks.0.attn.hook_rot_q", corpus, 100))


def test_batch_larger_than_a_shard_writes_full_shards(tiny_model, corpus, tmp_path):
    small = build_store(tiny_model, POINTS, corpus, 1000, tmp_path / "small", ctx_len=16, batch_size=2, shard_contexts=4, progress=False)
    big = build_store(tiny_model, POINTS, corpus, 1000, tmp_path / "big", ctx_len=16, batch_size=20, shard_contexts=4, progress=False)
    rows = [s["rows"] for s in big.manifest["shards"]]
    assert rows == [60] * 16 + [40] and rows == [s["rows"] for s in small.manifest["shards"]]
    for p in POINTS:
        assert torch.allclose(big.tensor(p), small.tensor(p), atol=1e-6)
        assert all(big.shard(p, i).shape == (n, 64) for i, n in enumerate(rows))


def test_store_refuses_a_folder_of_other_files(tiny_model, corpus, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    with pytest.raises(InterpError, match=r"holds other files and no activation store \(no manifest.json\): choose a new or empty --out"):
        build_store(tiny_model, POINTS, corpus, 200, mine, **KW)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "my own file"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_store(tiny_model, POINTS, corpus, 200, empty, **KW).n_tokens == 200


def test_harvest_skip_tokens_is_exact_and_runs_no_earlier_block(tiny_model, corpus, monkeypatch):
    # ctx_len 16: 15 rows per context; a 200-row buffer makes blocks of 13 contexts (195 rows);
    # 700 tokens are 46 full contexts and one of 10 tokens, in 4 blocks.
    kw = dict(ctx_len=16, batch_size=4, out_batch_size=64, shuffle_buffer_tokens=200, seed=5)
    contexts = [c for b in token_batches(tiny_model, corpus, 16, 1, 700) for c in b]
    real, seen = acts_mod.token_activations, []

    def counted(hm, tokens, *args, **kwargs):
        seen.extend(tokens)
        return real(hm, tokens, *args, **kwargs)

    monkeypatch.setattr(acts_mod, "token_activations", counted)
    full_batches = list(harvest(tiny_model, POINTS, corpus, 700, **kw))
    full = {p: torch.cat([b[p] for b in full_batches]) for p in POINTS}
    assert len(seen) == 47 and [len(b[POINTS[0]]) for b in full_batches] == [64] * 10 + [60]
    for s in (1, 64, 194, 195, 250, 585, 699, 700):
        seen.clear()
        got = list(harvest(tiny_model, POINTS, corpus, 700, skip_tokens=s, **kw))
        for p in POINTS:
            rows = torch.cat([b[p] for b in got]) if got else torch.empty(0, 64)
            assert torch.equal(rows, full[p][s:]), (s, p)
        first = 13 * (s // 195) if s < 700 else 47
        assert len(seen) == 47 - first, s  # contexts before the block holding s never reach the model
        assert all(torch.equal(a, b) for a, b in zip(seen, contexts[first:])), s
    with pytest.raises(InterpError, match="skip_tokens must be between 0 and the token count 700"):
        next(harvest(tiny_model, POINTS, corpus, 700, skip_tokens=701, **kw))


def test_generators_leave_grad_mode_hooks_and_threads_alone(tiny_model, corpus, tmp_path):
    store = build_store(tiny_model, POINTS[:1], corpus, 300, tmp_path / "s", **KW)
    param = torch.nn.Parameter(torch.zeros(64))
    threads = torch.get_num_threads()

    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_model.modules())

    hooks = n_hooks()
    generators = {
        "harvest": (b[POINTS[0]] for b in harvest(tiny_model, POINTS[:1], corpus, 300, ctx_len=16, out_batch_size=50, shuffle_buffer_tokens=100)),
        "store.batches": store.batches(POINTS[0], 50),
        "token_batches": (torch.nn.functional.one_hot(b[:, 1:] % 64, 64).float().mean((0, 1)) for b in token_batches(tiny_model, corpus, 16, 2, 300)),
    }
    for name, gen in generators.items():
        for _ in range(3):
            x = next(gen)
            assert torch.is_grad_enabled(), name
            loss = (x @ param - 1.0).pow(2).mean()
            loss.backward()
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            param.grad = None
        gen.close()
        assert torch.is_grad_enabled() and n_hooks() == hooks and torch.get_num_threads() == threads, name


def test_manifest_counts_a_shard_only_once_its_files_are_complete(tiny_model, corpus, tmp_path, monkeypatch):
    one_go = build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "a", **KW)
    real_write = store_mod.write_json
    writes = []

    def checked_write(target, obj):
        for i, shard in enumerate(obj["shards"]):  # every counted shard is already complete on disk
            for p in POINTS:
                assert np.load(target.parent / p / shard["file"], mmap_mode="r").shape == (shard["rows"], 64), (i, p)
        writes.append(len(obj["shards"]))
        real_write(target, obj)

    monkeypatch.setattr(store_mod, "write_json", checked_write)
    build_store(tiny_model, POINTS, corpus, 500, tmp_path / "c", **KW)  # 4 shards of 120 rows, then 20
    assert writes[-5:] == [1, 2, 3, 4, 5]
    # Extending replaces the short last shard; interrupted after one point's new file is in place.
    real_path, calls = store_mod.atomic_path, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_path(*args, **kwargs)

    monkeypatch.setattr(store_mod, "atomic_path", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "c", **KW)
    half = ActivationStore(tmp_path / "c")
    assert half.n_tokens == 480 and not list((tmp_path / "c").rglob("*.tmp"))
    for p in POINTS:
        assert torch.equal(half.tensor(p), one_go.tensor(p)[:480])
    monkeypatch.setattr(store_mod, "atomic_path", real_path)
    resumed = build_store(tiny_model, POINTS, corpus, 1500, tmp_path / "c", **KW)
    for p in POINTS:
        assert torch.equal(resumed.tensor(p), one_go.tensor(p))
    # A store holding more than asked for serves a smaller request as it is.
    assert build_store(tiny_model, POINTS, corpus, 600, tmp_path / "c", **KW).n_tokens == 1500


@pytest.mark.parametrize("dtype, unit_roundoff", [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11)])
def test_low_precision_store_is_the_float32_store_rounded_and_says_what_it_lost(tiny_model, corpus, tmp_path, dtype, unit_roundoff):
    full = build_store(tiny_model, POINTS, corpus, 500, tmp_path / "f32", **KW)
    low = build_store(tiny_model, POINTS, corpus, 500, tmp_path / "low", dtype=dtype, **KW)
    assert low.dtype == dtype and full.precision_loss is None
    for p in POINTS:
        a, b = low.tensor(p), full.tensor(p)
        assert a.dtype == dtype
        # Round to nearest: each stored value is the float32 value's nearest representable one.
        assert torch.equal(a, b.to(dtype))
        rel = (a.float() - b).abs() / b.abs().clamp_min(1e-30)
        assert rel[b.abs() > 1e-3].max() <= unit_roundoff * (1 + 1e-6)  # u = 2^-p, p significand bits
        loss = low.precision_loss[p]  # summed over 5 shards, checked against the stores themselves
        assert loss["relative_rms_error"] == pytest.approx(((a.double() - b.double()).norm() / b.double().norm()).item(), rel=1e-6)
        assert loss["max_abs_error"] == pytest.approx((a.float() - b).abs().max().item(), rel=1e-6)
    # The files are half the size.
    size = lambda s: sum(f.stat().st_size for f in s.path.rglob("*.npy"))
    assert size(low) < 0.55 * size(full)


def test_float16_overflow_is_refused_with_one_line():
    with pytest.raises(InterpError, match="exceed the range of float16.*bfloat16"):
        store_mod._cast(torch.tensor([[1.0, 7e4]]), torch.float16, "blocks.0.hook_resid_post")


def test_a_shard_file_the_manifest_never_counted_is_ignored_and_replaced(tiny_model, corpus, tmp_path):
    one_go = build_store(tiny_model, POINTS, corpus, 900, tmp_path / "a", **KW)
    part = build_store(tiny_model, POINTS, corpus, 240, tmp_path / "b", **KW)  # 2 shards
    # A writer that died after writing shard 2's file of one point, before the manifest counted it.
    garbage = np.full((120, 64), 7.0, dtype=np.float32)
    np.save(tmp_path / "b" / POINTS[0] / "shard_00002.npy", garbage)
    np.save(tmp_path / "b" / POINTS[1] / "shard_00002.npy", garbage[:50])  # and a torn one
    stale = ActivationStore(tmp_path / "b")
    assert stale.n_tokens == 240 and stale.tensor(POINTS[0]).shape == (240, 64)
    assert torch.equal(stale.tensor(POINTS[0]), part.tensor(POINTS[0]))
    resumed = build_store(tiny_model, POINTS, corpus, 900, tmp_path / "b", **KW)
    for p in POINTS:
        assert torch.equal(resumed.tensor(p), one_go.tensor(p))


def test_harvest_gathers_and_shuffles_blocks_on_the_batches_device(tiny_model, corpus, monkeypatch):
    """Rows go from the forward to the device the batches are for (on a GPU: no round trip through host
    memory). Here that device is `meta`: every capture is asked for it, never for the CPU, and the
    batches arrive there with the shapes a CPU harvest gives."""
    asked = []
    capture = acts_mod.token_activations

    def spy(hm, tokens, names, dtype, device="cpu"):
        asked.append(torch.device(device))
        return capture(hm, tokens, names, dtype, device=device)

    monkeypatch.setattr(acts_mod, "token_activations", spy)
    kwargs = dict(ctx_len=16, batch_size=4, out_batch_size=128, shuffle_buffer_tokens=300)
    on_meta = list(harvest(tiny_model, POINTS, corpus, 900, device="meta", **kwargs))
    assert asked and set(asked) == {torch.device("meta")}
    on_cpu = list(harvest(tiny_model, POINTS, corpus, 900, device="cpu", **kwargs))
    assert [{p: (b[p].device.type, b[p].shape) for p in POINTS} for b in on_meta] == \
           [{p: ("meta", b[p].shape) for p in POINTS} for b in on_cpu]

"""Steering vectors: construction against independent computations, application identities, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from interp import HookManager, InterpError, load_model, readout
from interp.readout import texts_fingerprint
from interp import steering as st
se = st  # the evaluation functions live in the same package
from interp.cli_steer import app

POS = ["I love this film, it is wonderful.", "The sun is hot", "A bird sang in the tree.", "Paris is the capital"]
NEG = ["I hate this film, it is terrible.", "The snow is cold", "The dog ran.", "Rome is the capital of Italy."]
PROMPT = "The cat sat on the"
P1 = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def vec(tiny_model):
    return st.mean_diff(tiny_model, POS, NEG, "resid_post:0-2", progress=False)


def _unit(d: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    return v / v.norm()


# ---------------------------------------------------------------- construction
@pytest.mark.parametrize("pool", ["last", "mean"])
def test_mean_diff_matches_numpy(tiny_model, pool):
    v = st.mean_diff(tiny_model, POS, NEG, [P1, "blocks.2.hook_resid_post"], pool=pool, batch_size=2, progress=False)
    for point in v.points:
        pooled = []
        for text in POS + NEG:
            _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(text))
            act = cache[point][0].numpy()[1:]  # drop BOS
            pooled.append(act[-1] if pool == "last" else act.mean(0))
        pooled = np.stack(pooled)
        expected = pooled[: len(POS)].mean(0) - pooled[len(POS):].mean(0)
        np.testing.assert_allclose(v.directions[point].numpy(), expected, rtol=1e-4, atol=1e-5)
    assert v.method == "mean_diff" and v.model_name == tiny_model.interp_name
    assert len(v.source["text_hashes"]) == len(POS) + len(NEG)


def test_pca_diff_matches_svd_and_aligns_with_mean(tiny_model):
    v = st.pca_diff(tiny_model, POS, NEG, P1, progress=False)
    acts = readout.read(tiny_model, POS + NEG, [P1])
    diffs = (acts[P1][: len(POS)] - acts[P1][len(POS):]).double().numpy()
    _, _, vt = np.linalg.svd(diffs, full_matrices=False)
    got = v.directions[P1].double().numpy()
    cos = abs(got @ vt[0]) / np.linalg.norm(got)
    assert cos == pytest.approx(1.0, abs=1e-5)
    assert got @ diffs.mean(0) > 0
    assert np.linalg.norm(got) == pytest.approx(abs((diffs @ vt[0]).mean()), rel=1e-4)
    with pytest.raises(InterpError, match="same number"):
        st.pca_diff(tiny_model, POS, NEG[:3], P1, progress=False)


def test_empty_contrast_set_is_an_error(tiny_model):
    with pytest.raises(InterpError, match="negative contrast set is empty"):
        st.mean_diff(tiny_model, POS, [], P1, progress=False)


# ------------------------------------------------------------ metadata and disk
def test_save_load_round_trip(vec, tmp_path):
    vec.save(tmp_path / "v")
    back = st.SteeringVector.load(tmp_path / "v")
    assert back.points == vec.points and back.model_name == vec.model_name and back.method == vec.method
    for p in vec.points:
        assert torch.equal(back.directions[p], vec.directions[p])
    assert back.resid_norms == pytest.approx(vec.resid_norms)
    assert back.source == vec.source and back.layers == [0, 1, 2]
    meta = json.loads((tmp_path / "v" / "vector.json").read_text())
    assert meta["norms"][P1] == pytest.approx(float(vec.directions[P1].norm()))


def test_manifest_is_recorded_and_old_folders_load(vec, tiny_model, tmp_path):
    from interp.manifest import make_manifest

    vec.save(tmp_path / "v")
    meta = json.loads((tmp_path / "v" / "vector.json").read_text())
    widths = {p: 64 for p in vec.points}
    assert meta["manifest"] == make_manifest(tiny_model.interp_name, widths, texts_fingerprint(POS + NEG))
    assert meta["manifest"]["data_fingerprint"] == vec.source["fingerprint"]
    # a version-1 folder has no manifest: it loads, and the manifest is rebuilt from its fields
    del meta["manifest"]
    meta["version"] = 1
    (tmp_path / "v" / "vector.json").write_text(json.dumps(meta))
    old = st.SteeringVector.load(tmp_path / "v")
    assert old.manifest == make_manifest(tiny_model.interp_name, widths, texts_fingerprint(POS + NEG))
    st.check_vector(tiny_model, old)
    # a manifest that contradicts the weights is refused
    meta["manifest"] = make_manifest(tiny_model.interp_name, {p: 32 for p in vec.points})
    (tmp_path / "v" / "vector.json").write_text(json.dumps(meta))
    with pytest.raises(InterpError, match="does not match the vector"):
        st.SteeringVector.load(tmp_path / "v")


def test_check_vector_goes_through_the_manifest(tiny_model, monkeypatch):
    import interp.manifest

    seen = []
    real = interp.manifest.check_manifest
    monkeypatch.setattr(interp.manifest, "check_manifest", lambda have, want, what, fix="": seen.append((have, want)) or real(have, want, what, fix))
    v = st.from_direction(_unit(), P1, tiny_model.interp_name, data_fingerprint="abc")
    st.generate(tiny_model, PROMPT, v, 1.0, max_new_tokens=2)
    have, want = seen[0]
    assert have == {"model": tiny_model.interp_name, "points": [P1], "widths": {P1: 64}, "data_fingerprint": "abc", "ctx_len": None}
    assert want["widths"] == {P1: 64} and want["data_fingerprint"] is None
    with pytest.raises(InterpError, match="unknown hook point"):
        st.check_vector(tiny_model, st.from_direction(_unit(), "blocks.1.hook_nothing", tiny_model.interp_name))


def test_load_corrupt_or_missing(vec, tmp_path):
    with pytest.raises(InterpError, match="missing"):
        st.SteeringVector.load(tmp_path / "nothing")
    vec.save(tmp_path / "v")
    (tmp_path / "v" / "vector.safetensors").write_bytes(b"garbage")
    with pytest.raises(InterpError, match="corrupt"):
        st.SteeringVector.load(tmp_path / "v")
    vec.save(tmp_path / "w")
    (tmp_path / "w" / "vector.json").write_text("{not json")
    with pytest.raises(InterpError, match="corrupt"):
        st.SteeringVector.load(tmp_path / "w")


def test_arithmetic(vec):
    a = st.from_direction(_unit(seed=1), P1, vec.model_name)
    b = st.from_direction(_unit(seed=2), [P1, "blocks.2.hook_resid_post"], vec.model_name)
    s = a + b
    assert s.points == [P1, "blocks.2.hook_resid_post"]
    assert torch.allclose(s.directions[P1], _unit(seed=1) + _unit(seed=2))
    assert torch.allclose(s.directions["blocks.2.hook_resid_post"], _unit(seed=2))
    assert torch.allclose((a - b).directions[P1], _unit(seed=1) - _unit(seed=2))
    assert torch.allclose((a - b).directions["blocks.2.hook_resid_post"], -_unit(seed=2))
    assert torch.allclose((-a).directions[P1], -_unit(seed=1))
    assert torch.allclose((2.5 * a).directions[P1], 2.5 * _unit(seed=1))
    assert torch.allclose((a * -1).directions[P1], -_unit(seed=1))
    for n in (vec * 7.0).normalized().norms.values():
        assert n == pytest.approx(1.0, abs=1e-6)
    other = st.from_direction(_unit(), P1, "another-model")
    with pytest.raises(InterpError, match="same model"):
        a + other


# ------------------------------------------------------------------ application
def test_steered_forward_equals_hand_added_residual(tiny_model):
    v = st.from_direction(_unit(), P1, tiny_model.interp_name)
    tokens = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        with st.apply(tiny_model, v, alpha=3.0):
            steered = tiny_model(tokens)
        resid = HookManager(tiny_model).collect(tokens, P1)[P1]
        by_hand = tiny_model(resid + 3.0 * _unit(), start_at_layer=2)
        plain = tiny_model(tokens)
    torch.testing.assert_close(steered, by_hand, rtol=1e-5, atol=1e-5)
    assert (steered - plain).abs().max() > 1e-2


def test_alpha_zero_reproduces_generation(tiny_model, vec):
    for temperature in (0.0, 0.9):
        plain = st.generate_ids(tiny_model, PROMPT, None, max_new_tokens=12, temperature=temperature, seed=5)
        zero = st.generate_ids(tiny_model, PROMPT, vec, 0.0, max_new_tokens=12, temperature=temperature, seed=5)
        assert torch.equal(plain, zero)
        assert plain.numel() > 0
    big = st.generate_ids(tiny_model, PROMPT, vec.normalized(), 50.0, max_new_tokens=12, temperature=0.0)
    assert not torch.equal(big, st.generate_ids(tiny_model, PROMPT, None, max_new_tokens=12, temperature=0.0))


def test_positions_generated_leaves_prompt_logits(tiny_model):
    v = st.from_direction(_unit(), P1, tiny_model.interp_name)
    prompt = tiny_model.to_tokens(PROMPT)
    full = torch.cat([prompt, tiny_model.to_tokens(" mat. The dog", prepend_bos=False)], dim=1)
    n = prompt.shape[1]
    with torch.no_grad():
        plain = tiny_model(full)
        with st.apply(tiny_model, v, alpha=5.0, positions="generated"):
            first = tiny_model(prompt)  # the block's first forward is the prompt
            later = tiny_model(full)  # no cache: positions from n on are "generated"
    torch.testing.assert_close(first, plain[:, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(later[:, :n], plain[:, :n], rtol=1e-5, atol=1e-5)
    assert (later[:, n:] - plain[:, n:]).abs().max() > 1e-2


def test_generated_positions_same_with_and_without_kv_cache(tiny_model):
    v = st.from_direction(_unit(), P1, tiny_model.interp_name)
    tokens = tiny_model.to_tokens(PROMPT)
    runs = {}
    for cache in (True, False):
        with torch.no_grad(), st.apply(tiny_model, v, alpha=8.0, positions="generated"):
            runs[cache] = tiny_model.generate(tokens, max_new_tokens=8, do_sample=False, use_past_kv_cache=cache,
                                              verbose=False, return_type="tokens", stop_at_eos=False)
    assert torch.equal(runs[True], runs[False])
    plain = st.generate_ids(tiny_model, tokens, None, max_new_tokens=8, temperature=0.0)
    # The first new token is predicted from the (unsteered) prompt, so it matches the plain run.
    assert int(runs[True][0, tokens.shape[1]]) == int(plain[0])


def test_norm_preserve_and_norm_unit(tiny_model, vec):
    tokens = tiny_model.to_tokens(PROMPT)
    hm = HookManager(tiny_model)
    plain = hm.collect(tokens, P1)[P1]
    single = st.SteeringVector({P1: vec.directions[P1]}, vec.model_name, "mean_diff", vec.resid_norms)
    with torch.no_grad(), st.apply(tiny_model, single, alpha=0.5, alpha_unit="norm"), hm.capture(P1) as cap:
        tiny_model(tokens)
    added = cap[P1] - plain
    expected = 0.5 * vec.resid_norms[P1]
    assert added.norm(dim=-1) == pytest.approx(torch.full((tokens.shape[1],), expected).unsqueeze(0), rel=1e-4)
    with torch.no_grad(), st.apply(tiny_model, single, alpha=20.0, norm_preserve=True), hm.capture(P1) as cap:
        tiny_model(tokens)
    torch.testing.assert_close(cap[P1].norm(dim=-1), plain.norm(dim=-1), rtol=1e-5, atol=1e-5)
    assert (cap[P1] - plain).abs().max() > 1e-2


def test_vector_for_another_model_is_refused(tiny_model):
    wrong_d = st.from_direction(torch.ones(32), P1, tiny_model.interp_name)
    with pytest.raises(InterpError, match="d_model 32"):
        st.generate(tiny_model, PROMPT, wrong_d, 1.0)
    wrong_name = st.from_direction(torch.ones(64), P1, "smollm2-135m")
    with pytest.raises(InterpError, match="built for model 'smollm2-135m'"):
        st.generate(tiny_model, PROMPT, wrong_name, 1.0)


# ------------------------------------------------------------------ evaluation
def test_lexicon_scorer_numbers(tmp_path):
    lex = se.LexiconScorer()
    assert lex.score("good") == lex.scores["good"] == 2
    assert lex.score("A good film, a terrible ending!") == pytest.approx((2 - 4) / 2)
    assert lex.score("no known words here") == 0.0
    pos, neg = se.load_builtin_pairs()
    assert len(pos) == len(neg) >= 50
    assert np.mean(lex(pos)) > 1.5 and np.mean(lex(neg)) < -1.5


def test_evaluate_baseline_matches_plain_generation(tiny_model, vec):
    prompts = ["The cat", "Paris is the capital of"]  # different lengths: the batch is padded
    res = se.evaluate(tiny_model, vec, prompts, alphas=[-1.0, 0.0, 1.0], seeds=[0, 1], max_new_tokens=6, progress=False)
    by_seed = {s: st.generate_batch_ids(tiny_model, prompts, None, max_new_tokens=6, seed=s) for s in (0, 1)}
    ids = [by_seed[s][i] for i in range(len(prompts)) for s in (0, 1)]
    texts = [tiny_model.tokenizer.decode(i.tolist(), skip_special_tokens=True) for i in ids]
    row0 = next(r for r in res["curve"] if r["alpha"] == 0.0)
    assert row0["lexicon"] == pytest.approx(np.mean(se.LexiconScorer()(texts)))
    losses = []  # each continuation scored alone, unpadded
    for (p, _), new in zip([(p, s) for p in prompts for s in (0, 1)], ids):
        full = torch.cat([tiny_model.to_tokens(p)[0], new]).unsqueeze(0)
        logp = torch.log_softmax(tiny_model(full)[0, :-1], -1)
        n = new.numel()
        losses.append(float(-logp[-n:].gather(1, full[0, -n:, None]).mean()))
    assert row0["fluency_loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert [s["texts"]["0.0"] for s in res["samples"]] == texts


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_generation_continues_each_prompt_as_alone(arch, tiny_llama_dir, tiny_gpt2_dir):
    """Left padding plus the mask: greedy rows equal each prompt generated on its own (positions, attention),
    and steering a batch steers every row as it steers the prompt alone."""
    model = load_model(str(tiny_llama_dir if arch == "llama" else tiny_gpt2_dir), device="cpu")
    prompts = ["The cat", "Paris is the capital of a country that", "Hi", "Yesterday the weather was"]
    batch = st.generate_batch_ids(model, prompts, max_new_tokens=8, temperature=0)
    assert [b.tolist() for b in batch] == [st.generate_ids(model, p, max_new_tokens=8, temperature=0).tolist() for p in prompts]
    pos, neg = se.load_builtin_pairs()
    v = st.mean_diff(model, pos[:8], neg[:8], "blocks.1.hook_resid_post", progress=False).normalized()
    steered = st.generate_batch_ids(model, prompts, v, 30.0, max_new_tokens=8, temperature=0)
    assert [b.tolist() for b in steered] == [st.generate_ids(model, p, v, 30.0, max_new_tokens=8, temperature=0).tolist()
                                             for p in prompts]
    assert [b.tolist() for b in steered] != [b.tolist() for b in batch]


def test_continuation_losses_of_a_batch_equal_each_alone(tiny_model):
    prompts = [tiny_model.to_tokens(p)[0] for p in ["The cat", "Paris is the capital of a country that"]]
    new = [torch.tensor([5, 9, 11]), torch.tensor([7])]
    together = se.continuation_losses(tiny_model, prompts, new)
    alone = [se.continuation_loss(tiny_model, p, n) for p, n in zip(prompts, new)]
    assert together == pytest.approx(alone, rel=1e-5)
    assert np.isnan(se.continuation_losses(tiny_model, prompts[:1], [torch.tensor([], dtype=torch.long)])[0])


def test_probe_scorer_leaves_build_texts_out(tiny_model, tmp_path):
    pos, neg = se.load_builtin_pairs()
    labelled = tmp_path / "lab.jsonl"
    labelled.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [(p, 1) for p in pos] + [(n, 0) for n in neg]))
    v = st.mean_diff(tiny_model, pos[:10], neg[:10], P1, progress=False)
    probe = se.fit_sentiment_probe(tiny_model, P1, v, labelled)
    assert probe.n_train_ + probe.n_test_ == len(pos) + len(neg) - 20
    probs = probe(["I love it", "I hate it"])
    assert all(0.0 <= p <= 1.0 for p in probs)


def test_layer_sweep_rows_and_slope(tiny_model, vec):
    lex = se.LexiconScorer()
    vectors = {p: st.SteeringVector({p: d}, vec.model_name, "mean_diff", vec.resid_norms) for p, d in vec.directions.items()}
    rows = se.layer_sweep(tiny_model, vectors, ["The cat"], lex, alphas=[-2.0, 0.0, 2.0], max_new_tokens=5, progress=False)
    assert len(rows) == 9 and [r["layer"] for r in rows[::3]] == [0, 1, 2]
    for p in vectors:
        sel = [r for r in rows if r["point"] == p]
        slope = np.polyfit([r["alpha"] for r in sel], [r["score"] for r in sel], 1)[0]
        assert sel[0]["slope"] == pytest.approx(slope, abs=1e-9)
    base = lex([st.generate(tiny_model, "The cat", None, max_new_tokens=5)])[0]
    assert all(r["score"] == pytest.approx(base) for r in rows if r["alpha"] == 0.0)
    assert se.layer_sweep_figure(rows).data


# ------------------------------------------------------------------------- CLI
runner = CliRunner()


def _files(tmp_path, pos=POS, neg=NEG):
    (tmp_path / "pos.txt").write_text("\n".join(pos) + "\n")
    (tmp_path / "neg.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in neg))
    return str(tmp_path / "pos.txt"), str(tmp_path / "neg.jsonl")


def test_cli_build_generate_eval(tiny_llama_dir, tiny_model, tmp_path):
    pos, neg = _files(tmp_path)
    r = runner.invoke(app, ["build", "--model", str(tiny_llama_dir), "--positive", pos, "--negative", neg,
                            "--layer", "1", "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    v = st.SteeringVector.load(tmp_path / "v")
    direct = st.mean_diff(tiny_model, POS, NEG, P1, pool="mean", progress=False)
    torch.testing.assert_close(v.directions[P1], direct.directions[P1])
    r = runner.invoke(app, ["generate", "--model", str(tiny_llama_dir), "--prompt", PROMPT, "--vector", str(tmp_path / "v"),
                            "--alpha", "-3", "--max-new-tokens", "6", "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert r.stdout == st.generate(tiny_model, PROMPT, v, -3.0, max_new_tokens=6, seed=2) + "\n"
    r = runner.invoke(app, ["generate", "--model", str(tiny_llama_dir), "--prompt", PROMPT, "--vector", str(tmp_path / "v"),
                            "--alpha", "2", "--max-new-tokens", "4", "--compare"])
    assert r.exit_code == 0 and "unsteered" in r.stdout
    labelled = tmp_path / "lab.jsonl"
    p2, n2 = se.load_builtin_pairs()
    labelled.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [(p, 1) for p in p2] + [(n, 0) for n in n2]))
    r = runner.invoke(app, ["eval", "--model", str(tiny_llama_dir), "--vector", str(tmp_path / "v"), "--out", str(tmp_path / "e"),
                            "--alphas", "-2,0,2", "--seeds", "1", "--max-new-tokens", "5", "--labelled", str(labelled),
                            "--prompts", pos])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert [row["alpha"] for row in res["curve"]] == [-2.0, 0.0, 2.0]
    assert {"lexicon", "probe_p_positive", "fluency_loss"} <= set(res["curve"][0])
    assert "plotly" in (tmp_path / "e" / "report.html").read_text()


def test_cli_generate_from_probe_and_sae(tiny_llama_dir, tiny_model, tmp_path):
    from interp.atomic import write_safetensors

    name = tiny_llama_dir.resolve().name
    # a directions file as written before manifests were recorded: format, model, points only
    write_safetensors(tmp_path / "probe" / "directions.safetensors", {P1: _unit()},
                      metadata={"format": "interp.probe_directions", "model": name, "points": json.dumps([P1])})
    r = runner.invoke(app, ["generate", "--model", str(tiny_llama_dir), "--prompt", PROMPT, "--probe", str(tmp_path / "probe"),
                            "--hook", "resid_post:1", "--alpha", "6", "--max-new-tokens", "6", "--temperature", "0"])
    assert r.exit_code == 0, r.output
    expected = st.generate(tiny_model, PROMPT, st.from_direction(_unit(), P1, name), 6.0, max_new_tokens=6, temperature=0)
    assert r.stdout == expected + "\n"
    r = runner.invoke(app, ["generate", "--model", str(tiny_llama_dir), "--prompt", PROMPT, "--probe", str(tmp_path / "probe"),
                            "--hook", "resid_post:2", "--alpha", "6"])
    assert "blocks.2.hook_resid_post" in _error(r) and "lack" in _error(r)
    saes = pytest.importorskip("saes.io")
    from saes.architectures import SAEConfig, make_sae

    sae = make_sae(SAEConfig(d_in=64, d_sae=16, arch="topk", k=4, model_name=name, hook_name=P1))
    saes.save_sae(sae, tmp_path / "sae")
    r = runner.invoke(app, ["generate", "--model", str(tiny_llama_dir), "--prompt", PROMPT, "--sae", str(tmp_path / "sae"),
                            "--feature", "3", "--alpha", "6", "--max-new-tokens", "6", "--temperature", "0"])
    assert r.exit_code == 0, r.output
    row = saes.load_sae(tmp_path / "sae").W_dec[3].detach()
    assert r.stdout == st.generate(tiny_model, PROMPT, st.from_direction(row, P1, name, method="sae_feature", feature=3), 6.0, max_new_tokens=6, temperature=0) + "\n"
    r = runner.invoke(app, ["generate", "--model", str(tiny_llama_dir), "--prompt", PROMPT, "--sae", str(tmp_path / "sae"),
                            "--feature", "16", "--alpha", "1"])
    assert "--feature 16 is out of range" in str(r.exception)


def _error(result) -> str:
    assert result.exit_code != 0
    if isinstance(result.exception, InterpError):
        msg = str(result.exception)
    else:
        msg = result.output.strip()
    return msg


def test_cli_bad_inputs(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    pos, neg = _files(tmp_path)
    model = ["--model", str(tiny_llama_dir)]
    (tmp_path / "empty.txt").write_text("\n\n")
    r = runner.invoke(app, ["build", *model, "--positive", pos, "--negative", str(tmp_path / "empty.txt"), "--layer", "1", "--out", str(tmp_path / "x")])
    assert "holds no texts" in _error(r)
    (tmp_path / "s").mkdir()
    _, short = _files(tmp_path / "s", NEG[:3], NEG[:3])
    r = runner.invoke(app, ["build", *model, "--positive", pos, "--negative", short, "--layer", "1", "--method", "pca", "--out", str(tmp_path / "x")])
    assert "4 positive and 3 negative" in _error(r)
    r = runner.invoke(app, ["build", *model, "--positive", pos, "--negative", neg, "--layer", "7", "--out", str(tmp_path / "x")])
    assert "layer 7 is out of range" in _error(r)
    runner.invoke(app, ["build", *model, "--positive", pos, "--negative", neg, "--layer", "1", "--out", str(tmp_path / "v")])
    r = runner.invoke(app, ["generate", *model, "--prompt", "hi", "--vector", str(tmp_path / "v"), "--alpha", "lots"])
    msg = _error(r)
    assert "--alpha must be a number, got 'lots'" in msg and "\n" not in msg
    r = runner.invoke(app, ["generate", "--model", str(tiny_gpt2_dir), "--prompt", "hi", "--vector", str(tmp_path / "v"), "--alpha", "1"])
    assert f"built for model '{tiny_llama_dir.resolve().name}'" in _error(r)
    st.from_direction(torch.ones(32), P1, tiny_llama_dir.resolve().name).save(tmp_path / "small")
    r = runner.invoke(app, ["generate", *model, "--prompt", "hi", "--vector", str(tmp_path / "small"), "--alpha", "1"])
    assert "d_model 32" in _error(r)
    r = runner.invoke(app, ["eval", *model, "--vector", str(tmp_path / "v"), "--out", str(tmp_path / "e"), "--alphas", "1,x"])
    msg = _error(r)
    assert "must be a number, got 'x'" in msg and "\n" not in msg


def test_errors_through_interp_main_are_one_line(tiny_llama_dir, tmp_path, capsys):
    from interp.cli import main

    base = ["steer", "generate", "--model", str(tiny_llama_dir), "--prompt", "hi"]
    assert main([*base, "--vector", str(tmp_path / "none"), "--alpha", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "vector.json is missing" in err
    assert main([*base, "--alpha", "lots"]) == 1
    err = capsys.readouterr().err
    assert err == "error: --alpha must be a number, got 'lots'\n"

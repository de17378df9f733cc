"""`interp sae train | eval | features` on the tiny model with a small text file."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from interp.cli import main
from interp.errors import InterpError
from saes.cli import app, parse_latents
from saes.io import WEIGHTS_FILENAME, load_sae

runner = CliRunner()
TEXT = "\n\n".join(
    f"Line {i}: the cat sat on the mat and the dog ran in the park. Paris is the capital of France; "
    f"I love this film, it is wonderful {i}. The sun is hot and the snow is cold, said number {i * 11}."
    for i in range(120)
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae")
    result = runner.invoke(app, [
        "train", "--model", str(tiny_llama_dir), "--layer", "1", "--arch", "topk", "--k", "4", "--expansion", "2",
        "--tokens", "2400", "--batch-tokens", "256", "--data", corpus, "--ctx-len", "32", "--out", str(out),
        "--eval-tokens", "300",
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_train_writes_a_loadable_sae_and_a_report(trained, tiny_llama_dir):
    out, output = trained
    sae = load_sae(out)
    assert (sae.cfg.arch, sae.cfg.k, sae.cfg.d_in, sae.cfg.d_sae) == ("topk", 4, 64, 128)
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.context_size == 32
    results = json.loads((out / "results.json").read_text())
    assert results["hook_name"] == "blocks.1.hook_resid_post" and results["n_tokens"] == 300
    assert results["held_out"] is True  # evaluated on the text after the 2,400 training tokens
    assert results["l0"] == pytest.approx(4.0, abs=0.05)  # top-k: exactly k active (positive) latents
    assert results["fve"] > 0.05  # trained a little: better than the data mean
    assert (out / "report.html").exists() and (out / "training.json").exists()
    assert str(out) in output.replace("\n", "") and "report.html" in output


def test_eval_command(trained, tiny_llama_dir, corpus, tmp_path):
    out, _ = trained
    result = runner.invoke(app, ["eval", str(out), "--model", str(tiny_llama_dir), "--data", corpus, "--tokens", "200",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["n_tokens"] == 200 and res["lm_tokens"] == 200
    assert res["ce_loss_recovered"] == pytest.approx(
        (res["ce_loss_ablated"] - res["ce_loss_spliced"]) / (res["ce_loss_ablated"] - res["ce_loss_clean"]))
    assert "ce_loss_recovered" in result.output and str(tmp_path / "report.html") in result.output.replace("\n", "")


def test_features_command(trained, tiny_llama_dir, corpus, tmp_path):
    out, _ = trained
    result = runner.invoke(app, ["features", str(out), "--model", str(tiny_llama_dir), "--data", corpus, "--tokens", "400",
                                 "--latents", "0-9,20", "--top-n", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    feats = json.loads((tmp_path / "features.json").read_text())
    assert [e["index"] for e in feats["latents"]] == [*range(10), 20]
    assert all(len(e["examples"]) <= 3 for e in feats["latents"])
    assert sum(feats["feature_density"]) == pytest.approx(4.0, abs=0.05)
    assert (tmp_path / "dashboard.html").exists() and "dashboard.html" in result.output


def test_errors_are_one_line_and_nonzero(trained, tiny_llama_dir, corpus, tmp_path, capsys):
    out, _ = trained
    base = ["--model", str(tiny_llama_dir), "--data", corpus]
    cases = [
        (["eval", str(out), *base, "--hook", "blocks.2.hook_resid_post"], "trained on blocks.1.hook_resid_post"),
        (["train", *base, "--arch", "topk", "--k", "128", "--expansion", "2", "--tokens", "100", "--out", str(tmp_path / "a")], "k=128 must satisfy"),
        (["train", *base, "--arch", "gated", "--tokens", "100", "--out", str(tmp_path / "b")], "unknown SAE architecture 'gated'"),
        (["train", *base, "--tokens", "0", "--out", str(tmp_path / "c")], "--tokens must be positive"),
        (["features", str(out), *base, "--latents", "500"], "latent 500 is out of range"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code != 0 and isinstance(result.exception, InterpError), args
        assert message in str(result.exception) and "\n" not in str(result.exception)
    # Through the real entry point: one line on stderr, status 1, no traceback.
    assert main(["sae", "eval", str(out), *base, "--hook", "blocks.2.hook_resid_post"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: this SAE was trained on") and "Traceback" not in "".join(err)


def test_corrupt_weights_and_width_mismatch(trained, tiny_llama_dir, corpus, tmp_path):
    out, _ = trained
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / WEIGHTS_FILENAME).write_bytes((bad / WEIGHTS_FILENAME).read_bytes()[:100])
    result = runner.invoke(app, ["eval", str(bad), "--model", str(tiny_llama_dir), "--data", corpus, "--tokens", "50"])
    assert result.exit_code != 0 and "corrupt or truncated" in str(result.exception)
    # An SAE whose d_in (32) is not the point's width (64).
    narrow = tmp_path / "narrow"
    shutil.copytree(out, narrow)
    cfg = json.loads((narrow / "cfg.json").read_text())
    cfg["d_in"] = cfg["metadata"]["interp"]["d_in"] = 32
    (narrow / "cfg.json").write_text(json.dumps(cfg))
    w = load_file(str(narrow / WEIGHTS_FILENAME))
    w = {"W_enc": w["W_enc"][:32], "b_enc": w["b_enc"], "W_dec": w["W_dec"][:, :32], "b_dec": w["b_dec"][:32]}
    save_file({k: v.contiguous() for k, v in w.items()}, str(narrow / WEIGHTS_FILENAME))
    result = runner.invoke(app, ["eval", str(narrow), "--model", str(tiny_llama_dir), "--data", corpus, "--tokens", "50"])
    assert result.exit_code != 0 and "width blocks.1.hook_resid_post 32 vs 64" in str(result.exception)


def test_parse_latents():
    assert parse_latents("0-3,7,2", 10) == [0, 1, 2, 3, 7]
    assert parse_latents("0-99", 5) == [0, 1, 2, 3, 4]
    assert parse_latents("all", 3) == [0, 1, 2]
    with pytest.raises(InterpError, match="bad latent selection"):
        parse_latents("x-y", 10)


def _errors(capsys) -> list[str]:
    """The error lines on stderr (progress bars aside), after checking there is no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error")]


def _train_args(tiny_llama_dir, corpus, out, *extra):
    return ["sae", "train", "--model", str(tiny_llama_dir), "--layer", "1", "--arch", "topk", "--k", "4", "--expansion", "2",
            "--batch-tokens", "256", "--data", corpus, "--ctx-len", "32", "--out", str(out), *extra]


def test_a_folder_holding_a_run_is_not_overwritten_by_accident(trained, tiny_llama_dir, corpus, tmp_path, capsys):
    out, _ = trained
    before = (out / WEIGHTS_FILENAME).read_bytes()
    assert main(_train_args(tiny_llama_dir, corpus, out, "--tokens", "600", "--eval-tokens", "0")) == 1
    err = _errors(capsys)
    assert len(err) == 1 and "already holds an SAE run: pass --resume to continue it, --overwrite to replace it" in err[0]
    assert (out / WEIGHTS_FILENAME).read_bytes() == before
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    assert main(_train_args(tiny_llama_dir, corpus, copy, "--tokens", "600", "--eval-tokens", "0", "--overwrite")) == 0
    assert json.loads((copy / "training.json").read_text())["tokens"] == 600
    assert not (copy / "results.json").exists()  # the old run's evaluation went with it


def test_store_folder_of_other_files_is_refused_and_nothing_written(tiny_llama_dir, corpus, tmp_path, capsys):
    mine = tmp_path / "my_files"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    out = tmp_path / "sae"
    assert main(_train_args(tiny_llama_dir, corpus, out, "--tokens", "600", "--store", str(mine))) == 1
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith("error: --store") and "no activation store" in err[0]
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert not out.exists()


def test_store_made_with_other_settings_is_refused(tiny_llama_dir, corpus, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(_train_args(tiny_llama_dir, corpus, tmp_path / "a", "--tokens", "600", "--store", str(store), "--eval-tokens", "0")) == 0
    capsys.readouterr()
    # The same store asked for with another context length (64 instead of 32): refused, not reused.
    args = _train_args(tiny_llama_dir, corpus, tmp_path / "b", "--tokens", "600", "--store", str(store), "--eval-tokens", "0")
    args[args.index("--ctx-len") + 1] = "64"
    assert main(args) == 1
    err = _errors(capsys)
    assert len(err) == 1 and "ctx_len 32 vs 64" in err[0]
    assert not (tmp_path / "b").exists()


def test_a_store_of_your_own_text_trains_with_no_data_option(tiny_llama_dir, corpus, tmp_path, capsys):
    """`interp cache --data FILE` then `interp sae train --store DIR`: the store carries its text, so
    nothing is repeated; another text named by --data is refused in one line naming both."""
    store = tmp_path / "store"
    assert main(["cache", "--model", str(tiny_llama_dir), "--hooks", "blocks.1.hook_resid_post", "--data", corpus,
                 "--tokens", "1200", "--ctx-len", "32", "--out", str(store)]) == 0
    train = ["sae", "train", "--model", str(tiny_llama_dir), "--hooks", "blocks.1.hook_resid_post", "--arch", "topk", "--k", "4",
             "--expansion", "2", "--batch-tokens", "256", "--ctx-len", "32", "--tokens", "1200", "--store", str(store)]
    assert main([*train, "--out", str(tmp_path / "sae"), "--eval-tokens", "300"]) == 0
    sae = load_sae(tmp_path / "sae")
    results = json.loads((tmp_path / "sae" / "results.json").read_text())
    # trained and evaluated on the store's own text: evaluation starts after the stored contexts
    assert sae.cfg.dataset == str(os.path.realpath(corpus)) and results["held_out"] is True
    assert results["eval_contexts"][0] >= math.ceil(1200 / 31)
    manifest = json.loads((store / "manifest.json").read_text())
    assert sae.cfg.manifest["data_fingerprint"] == manifest["data_fingerprint"]
    # with no --hooks/--layer the store says what to train on: its point (layer 2 here; the middle layer is 1)
    store_l2 = tmp_path / "store_l2"
    assert main(["cache", "--model", str(tiny_llama_dir), "--hooks", "blocks.2.hook_resid_post", "--data", corpus,
                 "--tokens", "600", "--ctx-len", "32", "--out", str(store_l2)]) == 0
    bare = [a for a in train if a not in ("--hooks", "blocks.1.hook_resid_post", "--tokens", "1200")]
    bare[bare.index("--store") + 1] = str(store_l2)
    assert main([*bare, "--out", str(tmp_path / "sae_bare"), "--eval-tokens", "0"]) == 0
    assert load_sae(tmp_path / "sae_bare").cfg.hook_name == "blocks.2.hook_resid_post"
    # the same text at another path is the same text
    copy = tmp_path / "copy.txt"
    copy.write_text(TEXT)
    assert main([*train, "--data", str(copy), "--out", str(tmp_path / "sae2"), "--eval-tokens", "0"]) == 0
    capsys.readouterr()
    # other text is refused before anything is written, naming both
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("cat", "fox"))
    assert main([*train, "--data", str(other), "--out", str(tmp_path / "sae3"), "--eval-tokens", "0"]) == 1
    err = _errors(capsys)
    assert len(err) == 1 and f"--data {other} is not the text the store at {store} was made from ({os.path.realpath(corpus)}" in err[0]
    assert not (tmp_path / "sae3").exists()
    # the store's text moved away: training needs only the store; evaluation says where it went instead
    moved = tmp_path / "moved"
    moved.mkdir()
    corpus_copy = tmp_path / "gone.txt"
    corpus_copy.write_text(TEXT)
    store2 = tmp_path / "store2"
    assert main(["cache", "--model", str(tiny_llama_dir), "--hooks", "blocks.1.hook_resid_post", "--data", str(corpus_copy),
                 "--tokens", "1200", "--ctx-len", "32", "--out", str(store2)]) == 0
    corpus_copy.rename(moved / "gone.txt")
    capsys.readouterr()
    run = [*train[:-1], str(store2), "--out", str(tmp_path / "sae4")]
    assert main([*run, "--eval-tokens", "100"]) == 0
    out = capsys.readouterr().out
    assert "cannot be read here; evaluating on the built-in corpus" in " ".join(out.split())
    assert json.loads((tmp_path / "sae4" / "results.json").read_text())["n_tokens"] > 0
    # ...and a store that would need more of that text says so in one line
    assert main([*run[:-1], str(tmp_path / "sae5"), "--tokens", "5000", "--extend"]) == 1
    err = _errors(capsys)
    assert len(err) == 1 and "cannot be read here to harvest more" in err[0]


def test_a_store_says_how_much_it_holds_and_grows_only_when_asked(tiny_llama_dir, corpus, tmp_path, capsys):
    """Without --tokens, training reads every token the store holds; asking for more is refused unless
    --extend, which says first how many tokens it harvests from which text."""
    store = tmp_path / "store"
    assert main(["cache", "--model", str(tiny_llama_dir), "--hooks", "blocks.1.hook_resid_post", "--data", corpus,
                 "--tokens", "1000", "--ctx-len", "32", "--out", str(store)]) == 0
    train = ["sae", "train", "--model", str(tiny_llama_dir), "--hooks", "blocks.1.hook_resid_post", "--k", "4", "--expansion", "2",
             "--batch-tokens", "200", "--ctx-len", "32", "--store", str(store), "--eval-tokens", "0"]
    capsys.readouterr()
    assert main([*train, "--out", str(tmp_path / "a")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"training on the 1,000 tokens in {store}" in out
    assert json.loads((tmp_path / "a" / "training.json").read_text())["tokens"] == 1000
    before = (store / "manifest.json").read_text()
    assert main([*train, "--tokens", "1600", "--out", str(tmp_path / "b")]) == 1
    err = _errors(capsys)
    assert len(err) == 1 and "holds 1,000 tokens and --tokens asks for 1,600: pass --extend to harvest the other 600" in err[0]
    assert (store / "manifest.json").read_text() == before and not (tmp_path / "b").exists()
    assert main([*train, "--tokens", "1600", "--extend", "--out", str(tmp_path / "b")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"harvesting 600 tokens of {os.path.realpath(corpus)} at blocks.1.hook_resid_post into {store} (it holds 1,000)" in out
    assert json.loads((store / "manifest.json").read_text())["n_tokens"] == 1600
    assert json.loads((tmp_path / "b" / "training.json").read_text())["tokens"] == 1600


def test_evaluation_text_is_disjoint_from_training_text(tiny_llama_dir, corpus, tmp_path):
    from interp.store import ActivationStore
    from interp.data import token_batches
    from interp import load_model

    store, out = tmp_path / "store", tmp_path / "sae"
    # The store holds more text (1,200 tokens) than this run trains on (600): any stored row may be drawn.
    assert main(_train_args(tiny_llama_dir, corpus, tmp_path / "first", "--tokens", "1200", "--store", str(store), "--eval-tokens", "0")) == 0
    assert main(_train_args(tiny_llama_dir, corpus, out, "--tokens", "600", "--store", str(store), "--eval-tokens", "300")) == 0
    stored_contexts = math.ceil(ActivationStore(store).n_tokens / 31)
    sae = load_sae(out)
    assert sae.cfg.train_contexts == stored_contexts == 39
    results = json.loads((out / "results.json").read_text())
    start, end = results["eval_contexts"]
    assert start >= stored_contexts and end > start and results["held_out"] is True
    # The evaluated token ids are not among the stored (training) ones, context by context.
    model = load_model(str(tiny_llama_dir), device="cpu")
    train_ctx = torch.cat(list(token_batches(model, corpus, 32, 64, n_tokens=stored_contexts * 31)))[:, 1:]
    eval_ctx = torch.cat(list(token_batches(model, corpus, 32, 64, n_tokens=end * 31, skip_contexts=start)))[:, 1:]
    assert train_ctx.shape[0] == stored_contexts and eval_ctx.shape[0] == end - start
    # Contexts cut the one token stream into consecutive pieces: the training text ends where evaluation starts.
    whole = torch.cat(list(token_batches(model, corpus, 32, 64, n_tokens=end * 31)))[:, 1:]
    assert torch.equal(whole[:stored_contexts], train_ctx) and torch.equal(whole[start:end], eval_ctx)
    # `sae eval` on the same text skips the training text by default...
    assert main(["sae", "eval", str(out), "--model", str(tiny_llama_dir), "--data", corpus, "--tokens", "200", "--out", str(tmp_path / "e1")]) == 0
    again = json.loads((tmp_path / "e1" / "results.json").read_text())
    assert again["eval_contexts"][0] >= stored_contexts and again["held_out"] is True
    # ...and says so when asked to start inside it.
    assert main(["sae", "eval", str(out), "--model", str(tiny_llama_dir), "--data", corpus, "--tokens", "200",
                 "--skip-tokens", "0", "--out", str(tmp_path / "e2")]) == 0
    inside = json.loads((tmp_path / "e2" / "results.json").read_text())
    assert inside["eval_contexts"][0] == 0 and inside["held_out"] is False


def test_resumed_streamed_run_seeks_instead_of_rerunning_the_model(tiny_llama_dir, corpus, tmp_path, monkeypatch):
    import interp.activations
    from saes.trainer import Trainer

    contexts = []
    real = interp.activations.token_activations
    monkeypatch.setattr(interp.activations, "token_activations", lambda hm, tokens, *a, **k: (contexts.append(tokens.shape[0]), real(hm, tokens, *a, **k))[1])
    # shuffle blocks of 8 contexts of 31 tokens
    args = lambda out: _train_args(tiny_llama_dir, corpus, out, "--tokens", "2400", "--eval-tokens", "0", "--shuffle-tokens", str(8 * 31))
    assert main(args(tmp_path / "full")) == 0
    full_contexts, contexts[:] = sum(contexts), []

    real_step = Trainer.train_step

    def step_then_interrupt(self, x):
        real_step(self, x)
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
    assert main(args(tmp_path / "cut")) == 130
    first_part, contexts[:] = sum(contexts), []
    monkeypatch.setattr(Trainer, "train_step", real_step)
    # The stream of another shuffle block would not be the stream the checkpoint saw: refused, one line.
    other = [a if a != str(8 * 31) else str(16 * 31) for a in args(tmp_path / "cut")] + ["--resume"]
    assert main(other) == 1 and contexts == []
    assert main(args(tmp_path / "cut") + ["--resume"]) == 0
    resumed = sum(contexts)
    # 5 steps of 256 = 1,280 tokens = context 41, in the block of contexts 40-47: the model runs on
    # contexts 40-77 again, not on all 78.
    assert full_contexts == first_part == math.ceil(2400 / 31)
    assert resumed == full_contexts - 40 < first_part
    full, cut = load_sae(tmp_path / "full"), load_sae(tmp_path / "cut")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(cut, name), getattr(full, name), atol=1e-5), name


def test_bf16_model_and_store_train_an_sae_close_to_the_float32_one(tiny_llama_dir, corpus, tmp_path):
    from interp.store import ActivationStore

    def run(name, *extra):
        out, store = tmp_path / name, tmp_path / f"{name}-store"
        result = runner.invoke(app, ["train", "--model", str(tiny_llama_dir), "--layer", "1", "--k", "4", "--expansion", "2",
                                     "--tokens", "1200", "--batch-tokens", "200", "--data", corpus, "--ctx-len", "32",
                                     "--store", str(store), "--out", str(out), "--eval-tokens", "0", *extra])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return ActivationStore(store), load_sae(out), result.output

    full_store, full, _ = run("f32")
    low_store, low, output = run("bf16", "--store-dtype", "bfloat16")
    point = "blocks.1.hook_resid_post"
    a, b = low_store.tensor(point), full_store.tensor(point)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b.to(torch.bfloat16))
    loss = low_store.precision_loss[point]
    assert loss["relative_rms_error"] == pytest.approx(((a.double() - b.double()).norm() / b.double().norm()).item(), rel=1e-6)
    assert "bfloat16 store: relative RMS error" in output.replace("\n", " ")
    # The SAE trains in float32 either way, and bf16 rounding of its inputs costs it little: FVE on
    # the float32 rows, computed here from each SAE's forward.
    assert low.W_dec.dtype == torch.float32

    def fve(sae):
        with torch.no_grad():
            return 1 - ((sae(b) - b) ** 2).sum().item() / ((b - b.mean(0)) ** 2).sum().item()

    print(f"FVE on float32 rows: float32 store {fve(full):.4f}, bfloat16 store {fve(low):.4f}")
    assert fve(full) > 0.3 and abs(fve(low) - fve(full)) < 0.02
    # A bf16 model harvests bf16 activations; the SAE still trains in float32 on them.
    _, half_model, _ = run("bf16-model", "--dtype", "bfloat16")
    assert half_model.W_dec.dtype == torch.float32 and torch.isfinite(half_model.W_dec).all()

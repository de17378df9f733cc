"""`interp sae train | eval | features` on the tiny model with a small text file."""

from __future__ import annotations

import json

import pytest
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
        "--tokens", "2400", "--batch-size", "256", "--data", corpus, "--ctx-len", "32", "--out", str(out),
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
                                 "--latents", "0-9,20", "--n-top", "3", "--out", str(tmp_path)])
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
    assert result.exit_code != 0 and "d_in 32 but blocks.1.hook_resid_post has width 64" in str(result.exception)


def test_parse_latents():
    assert parse_latents("0-3,7,2", 10) == [0, 1, 2, 3, 7]
    assert parse_latents("0-99", 5) == [0, 1, 2, 3, 4]
    assert parse_latents("all", 3) == [0, 1, 2]
    with pytest.raises(InterpError, match="bad latent selection"):
        parse_latents("x-y", 10)

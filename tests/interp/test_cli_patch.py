"""`interp patch` on the tiny llama: files written, numbers in them, and one-line refusals that write nothing."""

from __future__ import annotations

import json

import pytest

from interp.cli import main

CLEAN, CORRUPTED = "Paris is the capital of", "Rome is the capital of"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_patch_writes_results_and_a_self_contained_report(capsys, tiny_llama_dir, tmp_path):
    out = tmp_path / "act"
    code, stdout, err = run(capsys, "patch", "--model", str(tiny_llama_dir), "--clean", CLEAN, "--corrupted", CORRUPTED,
                            "--answer", " the", "--wrong", " is", "--hooks", "resid_pre:all;resid_post:2;z:all", "--out", str(out))
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    sites = {(s["point"], s["position"], s["head"]): s["recovered"] for s in result["sites"]}
    assert len(sites) == 3 * 7 + 7 + 3 * 4
    assert sites[("blocks.2.hook_resid_post", 6, None)] == pytest.approx(1.0, abs=1e-4)
    assert sites[("blocks.0.hook_resid_pre", 0, None)] == pytest.approx(0.0, abs=1e-6)  # BOS: the same in both prompts
    assert result["clean_logit_diff"] - result["corrupted_logit_diff"] > 0.05 and result["method"] == "activation"
    html = (out / "report.html").read_text()
    assert html.count("Plotly.newPlot") == 3 and '<script src="http' not in html  # resid_pre, resid_post, heads; plotly.js inline
    assert "blocks.2.hook_resid_post" in stdout and str(out / "results.json") in stdout


def test_attribution_and_pairs_file(capsys, tiny_llama_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in [
        {"clean": CLEAN, "corrupted": CORRUPTED, "answer": " the", "wrong": " is"},
        {"clean": CORRUPTED, "corrupted": CLEAN, "answer": " is", "wrong": " the"}]) + "\n")
    code, _, err = run(capsys, "patch", "--model", str(tiny_llama_dir), "--pairs", str(pairs), "--method", "attribution",
                       "--hooks", "mlp_out:all;q:1;k:1", "--out", str(tmp_path / "att"))
    assert code == 0, err
    result = json.loads((tmp_path / "att" / "results.json").read_text())
    assert result["n_pairs"] == 2 and len(result["pairs"]) == 2 and result["options"]["qk_fix"] is True
    assert len(result["sites"]) == 3 * 7 + 4 * 7 + 2 * 7
    # The mirrored pair's gap is the first's with the sign flipped, so the mean logit differences cancel.
    assert result["clean_logit_diff"] == pytest.approx(-result["corrupted_logit_diff"], abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--corrupted", "The cat sat on the mat"], "the clean prompt has 7 tokens and the corrupted prompt 11"),
    (["--answer", " mat"], "the answer ' mat' is 2 tokens"),
    (["--clean", ""], "the clean prompt is empty"),
    (["--wrong", " the"], "are the same token"),
    (["--method", "exact"], "unknown --method 'exact'"),
    (["--pairs", "PAIRS"], "give either --pairs FILE or --clean"),
    (["--hooks", "z:7"], "layer 7 is out of range"),
    (["--batch-tokens", "3"], "--batch-tokens 3 is smaller than one prompt (7 tokens)"),
    (["--top-n", "0"], "--top-n must be at least 1"),
])
def test_bad_inputs_print_one_line_and_write_nothing(capsys, tiny_llama_dir, tmp_path, args, message):
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    args = [a.replace("PAIRS", str(tmp_path / "pairs.jsonl")) for a in args]
    out = tmp_path / "out"
    base = {"--clean": CLEAN, "--corrupted": CORRUPTED, "--answer": " the", "--wrong": " is"}
    for flag, value in zip(args[::2], args[1::2]):
        if flag in base:
            base[flag] = value
    rest = [a for flag, value in zip(args[::2], args[1::2]) if flag not in base for a in (flag, value)]
    argv = ["patch", "--model", str(tiny_llama_dir), "--out", str(out), *[a for kv in base.items() for a in kv], *rest]
    code, _, err = run(capsys, *argv)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and not out.exists()


def test_missing_prompt_option_and_bad_pairs_file(capsys, tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "patch", "--model", str(tiny_llama_dir), "--clean", CLEAN, "--answer", " the", "--out", str(out))
    assert code == 1 and "missing --corrupted, --wrong" in err and not out.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clean": "Paris is", "corrupted": "Rome is"}\n')
    code, _, err = run(capsys, "patch", "--model", str(tiny_llama_dir), "--pairs", str(bad), "--out", str(out))
    assert code == 1 and "line 1 lacks answer, wrong" in err and not out.exists()

"""`interp tcav --global`, `interp concepts nmf` and `interp probe --target semantic-entropy` on a tiny model:
the files they write hold the numbers the Python API gives, and bad input is one line, exit 1, no files."""

import json

import pytest

from interp.cli import main
from probes.gcav import gcav
from probes.nmf_concepts import nmf_concepts
from probes.semantic_entropy import semantic_entropy_probe
from probes.tcav import builtin_random_texts

CONCEPT = [f"The cat sat on the mat {i}" for i in range(12)]
INPUTS = ["I love this film", "The dog ran in the park", "Paris is the capital", "A bird sang in the tree"]
TEXTS = ["I love this film.", "Paris is wonderful.", "A bird sang.", "The dog ran in the park.", "Rome is terrible.",
         "The snow is cold", "The cat sat on the mat", "sun is hot"] * 3
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "What colour is the sky?", "How many legs has a cat?",
             "What is the largest ocean?", "Who painted the Mona Lisa?", "What is two plus two?", "Where is Rome?"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lines(tmp_path, name, texts):
    path = tmp_path / name
    path.write_text("\n".join(texts) + "\n")
    return path


def one_line_error(code, err, message, out_dir):
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_tcav_global_writes_the_gcav_result(capsys, tiny_llama_dir, tiny_model, tmp_path):
    concept, inputs, out = lines(tmp_path, "cats.txt", CONCEPT), lines(tmp_path, "inputs.txt", INPUTS), tmp_path / "gcav"
    code, stdout, err = run(capsys, "tcav", "--global", "--model", tiny_llama_dir, "--concept", concept, "--inputs", inputs,
                            "--target", " the", "--hooks", "resid_post:0-2", "--runs", "3", "--seed", "1", "--out", out)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    direct = gcav(tiny_model, CONCEPT, builtin_random_texts(), INPUTS, " the", "resid_post:0-2", n_runs=3, seed=1, concept="cats")
    assert res["global"]["scores"] == pytest.approx(direct["global"]["scores"])
    assert res["global"]["p_value"] == pytest.approx(direct["global"]["p_value"], nan_ok=True)
    assert res["cross_layer_variance_after"] == pytest.approx(direct["cross_layer_variance_after"])
    assert res["points"] == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    for p in res["points"]:
        assert res["per_point"][p]["scores_before"] == pytest.approx(direct["per_point"][p]["scores_before"])
        assert all(0 <= s <= 1 for s in res["per_point"][p]["scores_after"])
    assert (out / "directions.safetensors").exists() and "plotly" in (out / "report.html").read_text()
    assert f"global TCAV score {res['global']['mean']:.3f}" in stdout and "blocks.2.hook_resid_post" in stdout


def test_tcav_global_bad_input(capsys, tiny_llama_dir, tmp_path):
    concept, inputs, out = lines(tmp_path, "cats.txt", CONCEPT), lines(tmp_path, "inputs.txt", INPUTS), tmp_path / "o"
    base = ["tcav", "--global", "--model", tiny_llama_dir, "--concept", concept, "--inputs", inputs, "--target", " the", "--out", out]
    one_line_error(*run(capsys, *base, "--hooks", "resid_post:1")[::2], "at least 2 points", out)
    one_line_error(*run(capsys, *base, "--hooks", "resid_post:0-1", "--runs", "1")[::2], "--runs 1", out)
    one_line_error(*run(capsys, *base[:-4], "--target", "xylophonic", "--hooks", "resid_post:0-1", "--out", out)[::2],
                   "splits into", out)


def test_concepts_nmf_matches_the_api(capsys, tiny_llama_dir, tiny_model, tmp_path):
    data, out = lines(tmp_path, "texts.txt", TEXTS), tmp_path / "nmf"
    code, stdout, err = run(capsys, "concepts", "nmf", "--model", tiny_llama_dir, "--data", data, "--hook", "resid_post:1",
                            "--n-concepts", "3", "--target", " the", "--max-tokens", "60", "--out", out)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    n_texts = res["n_inputs"]
    used = TEXTS[:n_texts]
    last = len(tiny_model.tokenizer(used[-1], add_special_tokens=False)["input_ids"])
    assert res["n_rows"] >= 60 and res["n_rows"] - last < 60  # token rows (BOS not read): stopped at the budget
    direct = nmf_concepts(tiny_model, used, "resid_post:1", k=3, target=" the")
    assert res["fve_activation"] == pytest.approx(direct["fve_activation"]) and 0 < res["fve_activation"] <= 1
    assert [c["share"] for c in res["concepts"]] == pytest.approx([c["share"] for c in direct["concepts"]])
    assert [c["tcav_score"] for c in res["concepts"]] == pytest.approx([c["tcav_score"] for c in direct["concepts"]])
    assert f"{res['fve_activation']:.4f}" in stdout and "top tokens" in stdout
    assert (out / "directions.safetensors").exists() and "plotly" in (out / "report.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--nonneg", "abs"], "unknown --nonneg 'abs'"),
    (["--n-concepts", "0"], "--n-concepts must be at least 1"),
    (["--data", "/nonexistent.txt"], "does not exist"),
    (["--hook", "blocks.1.hook_resid_pots"], "closest: blocks.1.hook_resid_post"),
    (["--inputs", "INPUTS"], "--inputs is only used with --target"),
    (["--level", "text", "--n-concepts", "30"], "fewer than --n-concepts 30"),
])
def test_concepts_nmf_bad_input(capsys, tiny_llama_dir, tmp_path, args, message):
    data, out = lines(tmp_path, "texts.txt", TEXTS), tmp_path / "o"
    opts = {"--model": tiny_llama_dir, "--data": data, "--hook": "resid_post:1", "--n-concepts": "2", "--out": out}
    opts.update({k: str(data) if v == "INPUTS" else v for k, v in zip(args[::2], args[1::2])})
    one_line_error(*run(capsys, "concepts", "nmf", *[x for kv in opts.items() for x in kv])[::2], message, out)


def test_probe_semantic_entropy_matches_the_api(capsys, tiny_llama_dir, tiny_model, tmp_path):
    qfile, out = tmp_path / "q.jsonl", tmp_path / "sep"
    qfile.write_text("".join(json.dumps({"question": q, "id": i}) + "\n" for i, q in enumerate(QUESTIONS)))
    code, stdout, err = run(capsys, "probe", "--target", "semantic-entropy", "--questions", qfile, "--model", tiny_llama_dir,
                            "--hooks", "resid_post:1-2", "--samples", "3", "--max-new-tokens", "1", "--temperature", "1.5",
                            "--task", "regression", "--out", out)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    direct = semantic_entropy_probe(tiny_model, str(qfile), points="resid_post:1-2", n_samples=3, max_new_tokens=1,
                                    temperature=1.5, task="regression")
    assert [q["entropy"] for q in res["questions"]] == pytest.approx([q["entropy"] for q in direct["questions"]])
    assert [q["id"] for q in res["questions"]] == list(range(8))  # the file's other fields are kept
    assert all(0 <= q["entropy"] <= 1.0986123 + 1e-6 for q in res["questions"])  # ln 3 at most
    for p in res["points"]:
        assert res["per_point"][p]["r2"] == pytest.approx(direct["per_point"][p]["r2"], nan_ok=True)
    assert "semantic-entropy probe: 8 questions x 3 answers" in stdout and "plotly" in (out / "report.html").read_text()
    code, stdout, err = run(capsys, "probe", "--target", "semantic-entropy", "--questions", qfile, "--model", tiny_llama_dir,
                            "--hooks", "resid_post:1-2", "--samples", "3", "--max-new-tokens", "1", "--temperature", "1.5",
                            "--threshold", "median", "--out", out)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    direct = semantic_entropy_probe(tiny_model, str(qfile), points="resid_post:1-2", n_samples=3, max_new_tokens=1,
                                    temperature=1.5, threshold="median")
    assert res["threshold_rule"] == "median" and res["labels"] == direct["labels"] and 0 < sum(res["labels"]) < 8
    for p in res["points"]:
        assert res["per_point"][p]["auroc"] == pytest.approx(direct["per_point"][p]["auroc"])


@pytest.mark.parametrize("args, message", [
    (["--target", "entropy"], "unknown --target 'entropy'"),
    (["--temperature", "0"], "needs sampling"),
    (["--samples", "1"], "at least 2 answers"),
    (["--questions", "/nonexistent.jsonl"], "does not exist"),
    (["--questions", "BAD"], "not JSON lines"),
    (["--max-texts", "3"], "3 questions are too few"),
    (["--threshold", "middle"], "unknown --threshold 'middle'"),
    (["--task", "ranking"], "unknown --task 'ranking'"),
])
def test_probe_semantic_entropy_bad_input(capsys, tiny_llama_dir, tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    args = [str(tmp_path / "bad.jsonl") if a == "BAD" else a for a in args]
    out = tmp_path / "o"
    base = ["probe", "--model", tiny_llama_dir, "--hooks", "resid_post:1", "--samples", "2", "--max-new-tokens", "1", "--out", out]
    if "--target" not in args:
        base += ["--target", "semantic-entropy"]
    one_line_error(*run(capsys, *base, *args)[::2], message, out)

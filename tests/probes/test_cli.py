"""`interp probe` and `interp tcav` through typer's CliRunner on an app built here."""

import json

import pytest
import typer
from typer.testing import CliRunner

from interp.errors import InterpError
from probes.cli import register

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    register(app)
    return app


def labelled(tmp_path, n=24, one_class=False):
    path = tmp_path / "data.jsonl"
    rows = [{"sentence": f"The {'cat' if i % 2 else 'dog'} sat on the mat{' ' * (i % 3)}.", "y": 1 if one_class else i % 2}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines(tmp_path, name, texts):
    path = tmp_path / name
    path.write_text("\n".join(texts) + "\n")
    return path


def test_probe_command_writes_outputs(app, tiny_llama_dir, tmp_path, device):
    out = tmp_path / "out"
    res = runner.invoke(app, ["probe", "--model", str(tiny_llama_dir), "--data", str(labelled(tmp_path)),
                              "--text-field", "sentence", "--label-field", "y", "--hooks", "resid_post:0-1",
                              "--out", str(out), "--bootstrap", "50", "--device", device])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert list(data["points"]) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for m in data["points"].values():
        assert m["selectivity"] == pytest.approx(m["accuracy"] - m["control_accuracy"])
        assert m["C"] in [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
        assert f"{m['C']:g}" in res.output and f"{m['shuffled_accuracy']:.3f}" in res.output
    assert (out / "directions.safetensors").exists() and (out / "report.html").exists()
    assert "blocks.1.hook_resid_post" in res.output and str(out / "results.json") in res.output
    assert "shuffled-label baseline" in res.output and "control task" in res.output
    # a fixed C and the control types from a column
    rows = [json.loads(line) for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    typed = tmp_path / "typed.jsonl"
    typed.write_text("".join(json.dumps({**r, "kind": i % 6}) + "\n" for i, r in enumerate(rows)))
    res = runner.invoke(app, ["probe", "--model", str(tiny_llama_dir), "--data", str(typed), "--text-field", "sentence",
                              "--label-field", "y", "--type-field", "kind", "--hooks", "resid_post:1", "--C", "0.5",
                              "--out", str(out), "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["points"]["blocks.1.hook_resid_post"]["C"] == 0.5
    assert data["control_task"]["types"] == [i % 6 for i in range(24)] and data["control_task"]["n_types_both_sides"] == 6


def test_probe_command_bad_data(app, tiny_llama_dir, tmp_path):
    res = runner.invoke(app, ["probe", "--model", str(tiny_llama_dir), "--data", str(labelled(tmp_path, one_class=True)),
                              "--text-field", "sentence", "--label-field", "y", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and isinstance(res.exception, InterpError)
    assert "two classes" in str(res.exception)
    res = runner.invoke(app, ["probe", "--model", str(tiny_llama_dir), "--data", str(labelled(tmp_path, n=3)),
                              "--text-field", "sentence", "--label-field", "y", "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, InterpError) and "only 1 example" in str(res.exception)
    res = runner.invoke(app, ["probe", "--model", str(tiny_llama_dir), "--data", str(labelled(tmp_path)),
                              "--label-field", "nope", "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, InterpError)
    res = runner.invoke(app, ["probe", "--model", str(tiny_llama_dir), "--data", str(labelled(tmp_path)), "--text-field", "sentence",
                              "--label-field", "y", "--C", "-1", "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, InterpError) and "--C must be positive" in str(res.exception)
    res = runner.invoke(app, ["probe", "--model", str(tiny_llama_dir), "--data", str(labelled(tmp_path)), "--text-field", "sentence",
                              "--label-field", "y", "--pool", "median", "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, InterpError) and "unknown pool 'median'" in str(res.exception)


def test_tcav_command_writes_outputs(app, tiny_llama_dir, tmp_path):
    concept = lines(tmp_path, "cats.txt", [f"The cat sat on the mat {i}" for i in range(12)])
    random = lines(tmp_path, "random.txt", [f"A bird sang in the tree {i}" for i in range(60)])
    inputs = lines(tmp_path, "inputs.txt", ["I love this film", "The dog ran in the park", "Paris is the capital"])
    out = tmp_path / "tcav"
    res = runner.invoke(app, ["tcav", "--model", str(tiny_llama_dir), "--concept", str(concept), "--random", str(random),
                              "--inputs", str(inputs), "--target", " the", "--hooks", "resid_post:1,2", "--runs", "3",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["concept"] == "cats" and data["correction"] == "bonferroni"
    for s in data["points"].values():
        assert len(s["scores"]) == 3 and all(0.0 <= v <= 1.0 for v in s["scores"])
        assert s["mean"] == pytest.approx(sum(s["scores"]) / 3)
    assert (out / "report.html").exists() and str(out / "report.html") in res.output


def test_tcav_command_bad_input(app, tiny_llama_dir, tmp_path):
    concept = lines(tmp_path, "c.txt", [f"The cat sat {i}" for i in range(8)])
    inputs = lines(tmp_path, "i.txt", ["I love this film"])
    res = runner.invoke(app, ["tcav", "--model", str(tiny_llama_dir), "--concept", str(concept), "--inputs", str(inputs),
                              "--target", "xylophonic", "--hooks", "resid_post:1", "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, InterpError) and "splits into" in str(res.exception)
    empty = lines(tmp_path, "empty.txt", [""])
    res = runner.invoke(app, ["tcav", "--model", str(tiny_llama_dir), "--concept", str(empty), "--inputs", str(inputs),
                              "--target", " the", "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, InterpError) and "is empty" in str(res.exception)
    res = runner.invoke(app, ["tcav", "--model", str(tiny_llama_dir), "--concept", "builtin:nonexistent", "--inputs", str(inputs),
                              "--target", " the", "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, InterpError)

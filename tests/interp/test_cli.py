"""The `interp` command: one-line errors, non-zero exits, no partial files."""

import json

import pytest

from interp.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_lists_hook_points(capsys, tiny_llama_dir):
    code, out, _ = run(capsys, "inspect", "--model", str(tiny_llama_dir))
    assert code == 0
    assert "3 layers, d_model 64" in out
    assert "blocks.{L}.hook_resid_post" in out and "0-2" in out


def test_cache_writes_a_store(capsys, tiny_llama_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"The cat {i} sat on the mat near the park." for i in range(100)))
    code, out, _ = run(capsys, "cache", "--model", str(tiny_llama_dir), "--hooks", "resid_post:0-1", "--data", str(corpus),
                       "--tokens", "300", "--ctx-len", "16", "--out", str(tmp_path / "store"))
    assert code == 0, out
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["shards"]) == 300
    assert "stored 300 tokens" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--hooks", "blocks.0.hook_resid_pots"], "closest: blocks.0.hook_resid_post"),
        (["--hooks", "resid_post:12"], "layer 12 is out of range"),
        (["--data", "/nonexistent.txt"], "does not exist"),
        (["--data", "EMPTY"], "is empty"),
        (["--data", "TABLE", "--text-field", "body"], "column 'body' not in"),
        (["--tokens", "0"], "must be positive"),
        (["--out", "/proc/forbidden/store"], "cannot write to"),
        (["--hooks", "blocks.0.attn.hook_pattern"], "has no row per token"),
    ],
)
def test_cache_bad_input_one_line_nonzero_no_files(capsys, tiny_llama_dir, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "table.jsonl").write_text('{"text": "hello"}\n')
    args = [a.replace("EMPTY", str(tmp_path / "empty.txt")).replace("TABLE", str(tmp_path / "table.jsonl")) for a in args]
    out_dir = tmp_path / "out"
    base = ["cache", "--model", str(tiny_llama_dir), "--hooks", "resid_post:0", "--tokens", "50", "--ctx-len", "16", "--out", str(out_dir)]
    code, _, err = run(capsys, *base, *args)
    assert code == 1
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_cache_stores_a_width_per_point_and_refuses_a_folder_of_other_files(capsys, tiny_llama_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"The cat {i} sat on the mat near the park." for i in range(100)))
    base = ["cache", "--model", str(tiny_llama_dir), "--data", str(corpus), "--tokens", "200", "--ctx-len", "16"]
    hooks = "blocks.0.hook_resid_post;blocks.1.mlp.hook_post"
    code, out, _ = run(capsys, *base, "--hooks", hooks, "--out", str(tmp_path / "store"))
    assert code == 0, out
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["widths"] == {"blocks.0.hook_resid_post": 64, "blocks.1.mlp.hook_post": 128}
    assert "blocks.0.hook_resid_postwidth64,blocks.1.mlp.hook_postwidth128" in "".join(out.split())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, *base, "--hooks", hooks, "--out", str(mine))
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(error_lines) == 1 and "holds other files and no activation store" in error_lines[0]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_usage_error_exits_2(capsys):
    code, _, _ = run(capsys, "cache", "--tokens", "notanumber", "--out", "x")
    assert code == 2

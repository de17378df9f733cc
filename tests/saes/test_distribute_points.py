"""Several hook points from one harvest, and `--distribute-points`: hook points per rank under torchrun.

One process with `--hooks resid_post:0-1` must train the SAEs two single-point runs train; two gloo
ranks with `--distribute-points` must train the same two, each written by the rank that owns it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.saes.ranks import ROOT, env, max_diff, start_ranks, torchrun

POINTS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")

# Loaded through PYTHONPATH in each rank: records the files the rank writes (audit hooks).
WATCH = '''
import os, sys
_out, _log = os.environ["WATCH_OUT"], os.environ["WATCH_LOG"] + "." + os.environ.get("RANK", "x")
def _seen(path):  # appended at once: a rank ends with os._exit, without atexit handlers
    with open(_log, "a") as f:
        f.write(os.fsdecode(path) + "\\n")
def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        flags = args[2] if isinstance(args[2], int) else 0
        writes = (args[1] and any(c in str(args[1]) for c in "wax+")) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writes and os.path.abspath(os.fsdecode(args[0])).startswith(_out):
            _seen(args[0])
    elif event == "os.rename" and os.path.abspath(os.fsdecode(args[1])).startswith(_out):
        _seen(args[1])
sys.addaudithook(_hook)
'''


def _common(model_dir: Path) -> list[str]:
    return ["sae", "train", "--model", str(model_dir), "--arch", "topk", "--k", "4", "--expansion", "2", "--tokens", "1000",
            "--batch-tokens", "128", "--data", "builtin", "--ctx-len", "32", "--checkpoint-steps", "3", "--device", "cpu",
            "--seed", "3"]


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, tmp_path_factory):
    """One multi-point run (with its evaluation) and the two single-point runs it must equal."""
    from interp.cli import main

    root = tmp_path_factory.mktemp("points")
    common = _common(tiny_llama_dir)
    assert main([*common, "--hooks", "resid_post:0-1", "--out", str(root / "multi"), "--eval-tokens", "124"]) == 0
    for layer in (0, 1):
        assert main([*common, "--layer", str(layer), "--out", str(root / f"single{layer}"), "--eval-tokens", "0"]) == 0
    return root


def test_several_points_train_the_sae_of_each_single_point_run(runs):
    for layer, point in enumerate(POINTS):
        folder = runs / "multi" / point
        diff = max_diff(folder, runs / f"single{layer}")
        print(f"{point}: multi-point run vs single-point run, max abs weight diff {diff:.2e}")
        assert diff < 1e-6
        cfg = json.loads((folder / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == point
        results = json.loads((folder / "results.json").read_text())  # each SAE evaluated on its own point
        assert results["hook_name"] == point and 0 < results["fve"] <= 1
    assert sorted(p.name for p in (runs / "multi").iterdir()) == list(POINTS)


@pytest.mark.torchrun
def test_distribute_points_over_two_ranks_equals_one_process(runs, tiny_llama_dir, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WATCH)
    out, log = tmp_path / "dist", tmp_path / "writes"
    environ = env(PYTHONPATH=f"{site}{os.pathsep}{ROOT}", WATCH_OUT=str(out.resolve()), WATCH_LOG=str(log))
    proc = torchrun("-m", "interp", *_common(tiny_llama_dir), "--hooks", "resid_post:0-1", "--distribute-points", "--eval-tokens",
                    "0", "--out", str(out), "--dist-timeout", "30", timeout=120, environ=environ)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank, point in enumerate(POINTS):
        diff = max_diff(out / point, runs / "multi" / point)
        print(f"{point}: 2 ranks with --distribute-points vs one process, max abs weight diff {diff:.2e}")
        assert diff < 1e-6
        written = Path(f"{log}.{rank}").read_text().splitlines()
        assert written and all(Path(f).resolve().is_relative_to((out / point).resolve()) for f in written), written
        assert any(f.endswith("sae_weights.safetensors") for f in written)


@pytest.mark.torchrun
def test_distribute_points_refusals(tiny_llama_dir, tmp_path, capsys):
    from interp.cli import main

    common = [*_common(tiny_llama_dir), "--eval-tokens", "0"]
    # One point cannot go to two ranks.
    few = torchrun("-m", "interp", *common, "--layer", "1", "--distribute-points", "--out", str(tmp_path / "few"), "--dist-timeout", "30",
                   timeout=120)
    assert few.returncode != 0
    lines = [line for line in few.stderr.splitlines() if "1 point cannot go to 2 ranks" in line]
    # Each rank refuses on its own; torchrun may stop the second before it prints, once the first has failed.
    assert 1 <= len(lines) <= 2 and all(line.startswith("error: --distribute-points gives every rank its own hook points") for line in lines)
    assert "saes/" not in few.stderr  # one line per rank, no traceback from the trainer (torchrun adds its own report)
    assert not (tmp_path / "few").exists()
    # Not with latent sharding (refused before the model loads).
    code = main([*common, "--hooks", "resid_post:0-1", "--distribute-points", "--shard-latents", "2", "--out", str(tmp_path / "sh")])
    assert code == 1 and not (tmp_path / "sh").exists()
    assert capsys.readouterr().err.strip() == ("error: --distribute-points and --shard-latents cannot be combined (not supported): "
                                               "drop one of them")
    from saes.train import TrainConfig, train_saes
    from saes.architectures import SAEConfig
    from interp.errors import InterpError

    with pytest.raises(InterpError, match="--distribute-points and --shard-latents cannot be combined"):
        train_saes([], {"a": SAEConfig(d_in=4, d_sae=8, arch="topk", k=2)}, TrainConfig(n_tokens=10, device="cpu"),
                   tmp_path / "py", distribute_points=True, shard_latents=2)


@pytest.mark.torchrun
def test_distribute_points_a_dead_rank_is_one_line_on_the_other(tiny_llama_dir, tmp_path):
    args = [*_common(tiny_llama_dir), "--hooks", "resid_post:0-1", "--distribute-points", "--eval-tokens", "0",
            "--out", str(tmp_path / "dead"), "--dist-timeout", "30"]
    # started by hand with torchrun's variables: no launcher to SIGTERM the survivor
    procs = start_ranks(["-m", "interp", *args], INTERP_TEST_FAULT="1:3:kill")
    _, err = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=30)
    assert procs[0].returncode == 1 and procs[1].returncode == -9
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    print(lines)
    assert len(lines) == 1 and "rank 0 of 2: another rank stopped responding" in lines[0], err[-2000:]
    assert "resume from the last checkpoint" in lines[0] and "Traceback" not in err

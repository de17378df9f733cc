"""`interp sae train --shard-latents N` under torchrun (gloo, 2 CPU ranks): the SAE of one process.

A tiny random llama and a tiny activation store; the one-process run (no flag) is the reference.
The ranks are started with torchrun, or by hand with torchrun's variables (as on two nodes, no
agent) for the interrupted run.
"""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from interp.cli import main
from tests.saes.ranks import counters, max_diff, start_ranks, torchrun, weights



def _check_ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[:4000] + "\n...\n" + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    """The common command line, and the one-process reference trained with it (which builds the store)."""
    tmp = tmp_path_factory.mktemp("shard_latents")
    common = ["sae", "train", "--model", str(tiny_llama_dir), "--layer", "1", "--arch", "topk", "--k", "4", "--expansion", "2",
              "--tokens", "1000", "--batch-tokens", "128", "--data", "builtin", "--ctx-len", "32", "--store", str(tmp / "store"),
              "--eval-tokens", "0", "--checkpoint-steps", "2", "--device", "cpu", "--checkpoint-minutes", "0"]
    ref = tmp / "one"
    assert main([*common, "--out", str(ref)]) == 0
    return {"common": common, "ref": ref, "tmp": tmp}


@pytest.mark.torchrun
def test_two_latent_ranks_train_the_sae_of_one_process(run, tmp_path):
    out = tmp_path / "sharded"
    start = time.monotonic()
    proc = torchrun("-m", "interp", *run["common"], "--shard-latents", "2", "--out", str(out), "--dist-timeout", "30")
    wall = time.monotonic() - start
    _check_ok(proc)
    diff = max_diff(run["ref"], out)
    print(f"--shard-latents 2 vs 1 process: max abs weight diff {diff:.2e}; torchrun wall {wall:.1f} s")
    assert diff < 1e-5
    assert weights(out)["W_dec"].shape == (128, 64)  # the full SAE, gathered
    assert torch.equal(counters(run["ref"]), counters(out))
    t_ref, t_out = (json.loads((f / "training.json").read_text()) for f in (run["ref"], out))
    assert (t_out["steps"], t_out["tokens"]) == (t_ref["steps"], t_ref["tokens"]) == (8, 1000)
    assert t_out["dead_latents"] == t_ref["dead_latents"]
    assert proc.stdout.count("saved the SAE to") == 1  # rank 0 speaks
    # One checkpoint per latent rank, each holding half the latents.
    shards = sorted(p.name for p in out.glob("checkpoint-shard-*.safetensors"))
    assert shards == ["checkpoint-shard-0-of-2.safetensors", "checkpoint-shard-1-of-2.safetensors"]
    assert load_file(str(out / shards[1]))["sae.W_dec"].shape == (64, 64)
    assert not (out / "checkpoint.safetensors").exists()


def test_refusals_are_one_line_before_anything_is_written(run, tmp_path, capsys):
    cases = [
        (["--arch", "relu", "--shard-latents", "2"], "--shard-latents shards topk SAEs only, not --arch relu"),
        (["--width", "129", "--shard-latents", "2"], "--shard-latents 2 does not divide the SAE's 129 latents"),
        (["--shard-latents", "2"], "--shard-latents 2 needs a multiple of 2 ranks, but 1 was launched"),
        (["--shard-latents", "0"], "--shard-latents must be positive"),
    ]
    for extra, message in cases:
        out = tmp_path / "bad"
        argv = [a for a in run["common"] if a not in ("--arch", "topk")] + extra + ["--out", str(out)]
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (extra, err)
        assert not out.exists()


@pytest.mark.torchrun
def test_an_interrupted_sharded_run_resumes_to_the_same_sae_and_only_with_the_same_n(run, tmp_path, capsys):
    out = tmp_path / "cut"
    # rank 1 SIGKILLs itself before step 5 (0-based); shard checkpoints are at step 4
    procs = start_ranks(["-m", "interp", *run["common"], "--shard-latents", "2", "--out", str(out), "--dist-timeout", "30"],
                        INTERP_TEST_FAULT="1:5:kill")
    rank0_err = procs[0].communicate(timeout=120)[1]
    procs[1].wait(timeout=60)
    print(f"rank 0 stderr: {rank0_err.strip()}")
    assert procs[1].returncode == -signal.SIGKILL and procs[0].returncode == 1
    errors = [line for line in rank0_err.splitlines() if "error" in line.lower()]  # besides progress bars
    assert len(errors) == 1 and "Traceback" not in rank0_err, rank0_err
    assert errors[0].startswith("error: rank 0 of 2: another rank stopped responding") and rank0_err.rstrip().endswith(errors[0])
    assert "on a multiple of 2 ranks with --shard-latents 2" in errors[0]
    steps = [json.loads((out / f"checkpoint-shard-{r}-of-2.json").read_text())["step"] for r in (0, 1)]
    assert steps == [4, 4] and not (out / "sae_weights.safetensors").exists()

    # Resuming without the flag (one process) is refused on one line; the checkpoint is untouched.
    assert main([*run["common"], "--out", str(out), "--resume"]) != 0
    err = capsys.readouterr().err.strip()
    assert "is sharded over 2 latent ranks: resume with --shard-latents 2" in err and len(err.splitlines()) == 1, err

    start = time.monotonic()
    proc = torchrun("-m", "interp", *run["common"], "--shard-latents", "2", "--out", str(out), "--resume", "--dist-timeout", "30")
    wall = time.monotonic() - start
    _check_ok(proc)
    diff = max_diff(run["ref"], out)
    print(f"resumed sharded run vs uninterrupted 1 process: max abs weight diff {diff:.2e}; resume wall {wall:.1f} s")
    assert diff < 1e-5
    assert torch.equal(counters(run["ref"]), counters(out))
    assert json.loads((out / "training.json").read_text())["steps"] == 8
    shutil.rmtree(out)

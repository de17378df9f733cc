"""Data-parallel SAE training under torchrun (gloo, 2 CPU ranks): the same SAE as one process.

Each test launches real ranks (`torchrun`, or two processes with torchrun's environment for the
fault tests, as on two nodes) running this file as a script (`_worker`), and compares with one
process trained in pytest on the same activations with the same global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.saes.ranks import counters, max_diff, start_ranks, torchrun

D_IN, D_SAE, N_ROWS, N_TOKENS, BATCH = 16, 64, 720, 689, 64  # 689: the last global batch (49 rows) splits 25 / 24
WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec")


# --- what each rank runs -------------------------------------------------------------------------
def _configs(arch: str, checkpoint_every: int = 0):
    from saes.architectures import SAEConfig
    from saes.trainer import TrainConfig

    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, arch=arch, k=4 if arch in ("topk", "batchtopk") else None, l0_coefficient=0.01)
    # dead_after 128 tokens: latents die and revive during the run, so AuxK and the counters matter.
    tcfg = TrainConfig(n_tokens=N_TOKENS, batch_size=BATCH, lr=3e-3, dead_after_tokens=128, init_tokens=128, device="cpu",
                       checkpoint_every=checkpoint_every, checkpoint_minutes=None, seed=0)
    return cfg, tcfg


def _source(data: Path):
    from safetensors.torch import load_file

    return list(load_file(str(data))["x"].split(37))  # uneven source batches, re-cut into global batches


def _watch_writes(out: Path, log: Path) -> None:
    """Record every file this process creates, renames or removes under `out` (audit hooks)."""
    root, seen = str(out.resolve()), []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            flags = args[2] if isinstance(args[2], int) else 0
            writes = (args[1] and any(c in str(args[1]) for c in "wax+")) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writes and os.path.abspath(os.fsdecode(args[0])).startswith(root):
                seen.append(("open", os.fsdecode(args[0])))
        elif event in ("os.rename", "os.remove", "os.mkdir") and os.path.abspath(os.fsdecode(args[0])).startswith(root):
            seen.append((event, os.fsdecode(args[0])))

    sys.addaudithook(hook)
    import atexit

    atexit.register(lambda: log.write_text(json.dumps(seen)))


def _worker(argv: list[str]) -> int:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args(argv)
    from interp.errors import InterpError
    from interp.distributed import process_group
    from saes.train import train_sae

    rank = os.environ.get("RANK", "0")
    _watch_writes(args.out, args.out.parent / f"writes.{args.out.name}.rank{rank}.json")
    cfg, tcfg = _configs(args.arch, args.checkpoint_every)
    try:
        with process_group("cpu", args.timeout):
            train_sae(_source(args.data), cfg, tcfg, args.out, resume=args.resume, progress=False)
    except InterpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# --- helpers for the tests -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Activations with sparse structure: 720 rows of 16-d sums of 3 of 40 directions, plus noise."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(40, D_IN, generator=gen)
    codes = torch.zeros(N_ROWS, 40)
    idx = torch.rand(N_ROWS, 40, generator=gen).argsort(1)[:, :3]
    codes.scatter_(1, idx, torch.rand(N_ROWS, 3, generator=gen) * 3)
    x = codes @ dirs + 0.05 * torch.randn(N_ROWS, D_IN, generator=gen) + 1.0
    path = tmp_path_factory.mktemp("acts") / "acts.safetensors"
    save_file({"x": x.contiguous()}, str(path))
    return path


def _ranks(args: list[str], fault: str, timeout_s: float) -> list[subprocess.Popen]:
    """Two ranks of this file's worker started by hand (as on two nodes: no agent watches them)."""
    return start_ranks([__file__, *args, "--timeout", str(timeout_s)], INTERP_TEST_FAULT=fault)


def _wait_stopped(pid: int, limit: float = 60) -> float:
    """When process `pid` entered the stopped state (SIGSTOP), polled from /proc."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never stopped")


def _reference(data: Path, out: Path, arch: str) -> Path:
    """The one-process run: batches of BATCH rows, the same stream."""
    from saes.train import train_sae

    cfg, tcfg = _configs(arch)
    train_sae(_source(data), cfg, tcfg, out, progress=False)
    return out


@pytest.mark.torchrun
@pytest.mark.parametrize("arch", ["topk", "jumprelu", "batchtopk"])
def test_two_ranks_train_the_sae_of_one_process_and_only_rank_0_writes(data, tmp_path, arch):
    ref = _reference(data, tmp_path / "ref", arch)
    out = tmp_path / "ddp"
    start = time.monotonic()
    proc = torchrun(__file__, "--data", str(data), "--out", str(out), "--arch", arch, "--checkpoint-every", "3", timeout=120)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[:4000] + "\n...\n" + proc.stderr[-2000:]
    diff = max_diff(ref, out)
    print(f"{arch}: 2 ranks vs 1 process, max abs weight diff {diff:.2e}; torchrun wall {wall:.1f} s")
    assert diff < 1e-5
    assert torch.equal(counters(ref), counters(out))  # dead-latent counters: identical
    t_ref, t_ddp = (json.loads((f / "training.json").read_text()) for f in (ref, out))
    assert (t_ddp["steps"], t_ddp["tokens"]) == (t_ref["steps"], t_ref["tokens"]) == (11, N_TOKENS)
    assert t_ddp["dead_latents"] == t_ref["dead_latents"]
    for a, b in zip(t_ref["history"], t_ddp["history"]):  # logged figures are of the global batch
        assert a.keys() == b.keys() and all(abs(a[key] - b[key]) < 1e-4 * max(1.0, abs(a[key])) for key in a)
    # Rank 1 created, renamed and removed nothing in the run folder; rank 0 wrote every file.
    writes = {r: json.loads((tmp_path / f"writes.ddp.rank{r}.json").read_text()) for r in (0, 1)}
    assert writes[1] == [] and writes[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())


@pytest.mark.torchrun
def test_a_dead_rank_stops_the_other_with_one_line_and_the_run_resumes_on_any_world_size(data, tmp_path):
    ref = _reference(data, tmp_path / "ref", "topk")
    out = tmp_path / "cut"
    args = ["--data", str(data), "--out", str(out), "--checkpoint-every", "2"]
    procs = _ranks(args, fault="1:5:kill", timeout_s=30)  # rank 1 SIGKILLs itself before step 5 (0-based)
    procs[1].wait(timeout=60)
    died = time.monotonic()
    rank0_err = procs[0].communicate(timeout=60)[1]
    after = time.monotonic() - died
    print(f"rank 0 exited {after:.2f} s after rank 1 died (timeout 30 s); stderr: {rank0_err.strip()}")
    assert after < 30  # a closed connection is noticed at once, well within the timeout
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 1
    assert "Traceback" not in rank0_err
    lines = [line for line in rank0_err.splitlines() if line.strip()]
    assert len(lines) == 1, rank0_err
    assert lines[0].startswith("error: rank 0 of 2: another rank stopped responding (connection lost")
    assert f"resume from the last checkpoint in {out} (--resume)" in lines[0]
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 4  # the last one before the fault
    assert not (out / "sae_weights.safetensors").exists()

    # Resume with 2 ranks (torchrun) in a copy, and with 1 process: both end where the whole run ends.
    import shutil

    two = tmp_path / "two"
    shutil.copytree(out, two)
    proc = torchrun(__file__, "--data", str(data), "--out", str(two), "--resume", timeout=120)
    assert proc.returncode == 0, proc.stderr[:4000] + "\n...\n" + proc.stderr[-2000:]
    from saes.train import train_sae

    cfg, tcfg = _configs("topk")
    train_sae(_source(data), cfg, tcfg, out, resume=True, progress=False)
    d1, d2 = max_diff(ref, out), max_diff(ref, two)
    print(f"resumed after a dead rank: max abs diff to the whole run {d1:.2e} (1 process), {d2:.2e} (2 ranks)")
    assert d1 < 1e-5 and d2 < 1e-5
    assert torch.equal(counters(ref), counters(out)) and torch.equal(counters(ref), counters(two))


@pytest.mark.torchrun
def test_a_silent_rank_times_out_the_other_with_one_line(data, tmp_path):
    out = tmp_path / "stuck"
    procs = _ranks(["--data", str(data), "--out", str(out)], fault="1:3:stop", timeout_s=4)  # rank 1 SIGSTOPs
    try:
        stopped = _wait_stopped(procs[1].pid)
        rank0_err = procs[0].communicate(timeout=60)[1]
        after = time.monotonic() - stopped
    finally:
        procs[1].kill()
        procs[1].wait()
    print(f"rank 0 gave up {after:.2f} s after rank 1 stopped (timeout 4 s); stderr: {rank0_err.strip()}")
    assert procs[0].returncode == 1 and "Traceback" not in rank0_err
    assert 3.5 < after < 20  # the timeout, not a hang (and not sooner)
    lines = [line for line in rank0_err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "error: rank 0 of 2: another rank stopped responding (collective timed out after 4 s); resume from the last checkpoint in")


def test_resume_refuses_another_global_batch(data, tmp_path):
    from interp.errors import InterpError
    from saes.train import train_sae

    out = _reference(data, tmp_path / "run", "topk")
    (out / "sae_weights.safetensors").unlink()
    (out / "cfg.json").unlink()
    cfg, tcfg = _configs("topk")
    tcfg.batch_size = 32
    with pytest.raises(InterpError, match="trained on batches of 64 tokens .* resume with --batch-tokens 64"):
        train_sae(_source(data), cfg, tcfg, out, resume=True, progress=False)


@pytest.mark.torchrun
def test_torchrun_cli_trains_from_a_store_like_one_process(tiny_llama_dir, tmp_path):
    from interp.cli import main

    store = tmp_path / "store"
    common = ["sae", "train", "--model", str(tiny_llama_dir), "--layer", "1", "--arch", "topk", "--k", "4", "--expansion", "2",
              "--tokens", "1000", "--batch-tokens", "128", "--data", "builtin", "--ctx-len", "32", "--store", str(store),
              "--eval-tokens", "0", "--checkpoint-steps", "2", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0  # builds the store, then trains in one process
    start = time.monotonic()
    proc = torchrun("-m", "interp", *common, "--out", str(tmp_path / "two"), "--dist-timeout", "30", timeout=240)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[:4000] + "\n...\n" + proc.stderr[-2000:]
    diff = max_diff(tmp_path / "one", tmp_path / "two")
    print(f"CLI: 2 ranks vs 1 process, max abs weight diff {diff:.2e}; torchrun wall {wall:.1f} s")
    assert diff < 1e-5
    assert proc.stdout.count("saved the SAE to") == 1  # rank 0 speaks, rank 1 is quiet
    # A global batch that does not split over the ranks is refused, by every rank, on one line each.
    bad = torchrun("-m", "interp", *[a if a != "128" else "127" for a in common], "--out", str(tmp_path / "bad"), timeout=240)
    assert bad.returncode != 0 and "does not split evenly over 2 ranks" in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.torchrun
def test_torchrun_cli_streams_with_the_forwards_split_over_the_ranks(tiny_llama_dir, tmp_path):
    # Streamed (no --store): each rank runs the model on half of every shuffle block and the ranks
    # exchange the rows, then train data-parallel; the SAE is the one-process SAE.
    from interp.cli import main

    common = ["sae", "train", "--model", str(tiny_llama_dir), "--layer", "1", "--arch", "topk", "--k", "4", "--expansion", "2",
              "--tokens", "1200", "--batch-tokens", "128", "--data", "builtin", "--ctx-len", "32",
              "--eval-tokens", "0", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    proc = torchrun("-m", "interp", *common, "--out", str(tmp_path / "two"), "--dist-timeout", "30", timeout=240)
    assert proc.returncode == 0, proc.stderr[:4000] + "\n...\n" + proc.stderr[-2000:]
    diff = max_diff(tmp_path / "one", tmp_path / "two")
    print(f"streamed CLI: 2 ranks vs 1 process, max abs weight diff {diff:.2e}")
    assert diff < 1e-5


if __name__ == "__main__":
    status = _worker(sys.argv[1:])
    # As `interp.cli.run` does for ranks: skip interpreter teardown, where gloo's threads can abort,
    # after the exit handlers (the write audit's log) have run.
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)

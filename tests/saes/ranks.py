"""Launching two ranks from a test, and reading back the SAEs they save (shared by the torchrun tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    """The environment of a rank: one torch thread, the repository importable, plus `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def torchrun(*args: str, timeout: float = 240, environ: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 ARGS` (a script, or `-m interp ...`), its output captured."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "--monitor-interval", "0.2",
           *args]
    return subprocess.run(cmd, cwd=ROOT, env=environ or env(), capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(argv: list[str], **extra: str) -> list[subprocess.Popen]:
    """Two ranks of `python ARGV` started by hand with torchrun's variables (as on two nodes: no agent
    watches them, so a rank that dies is noticed by the other rank alone)."""
    port = str(free_port())
    return [subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                                     MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra))
            for rank in (0, 1)]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae_weights.safetensors"))


def max_diff(a: Path, b: Path) -> float:
    """The largest absolute difference between the saved SAEs in folders `a` and `b` (same tensors)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[n] - wb[n]).abs().max().item() for n in wa)


def counters(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "latent_counters.safetensors"))["tokens_since_fired"]

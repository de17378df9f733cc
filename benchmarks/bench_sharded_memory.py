"""Per-rank memory of latent-sharded TopK SAE training (`saes.sharded`) against the unsharded SAE.

Run (launches torchrun itself, 2 processes, gloo on CPU / NCCL on CUDA):

    .venv/bin/python benchmarks/bench_sharded_memory.py [--d-in 576 --d-sae 36864 --k 32 --batch 1024 --nproc 2] [--json FILE]

On CUDA rank r uses GPU `r % torch.cuda.device_count()`. More ranks than GPUs (e.g. 2 ranks on one
GPU, enough for a memory figure: each process has its own allocator and its own peak) share GPUs,
which NCCL refuses ("duplicate GPU"), so the group is then gloo (it all-gathers and all-reduces CUDA
tensors through host memory); `--backend` overrides the choice.

Every rank trains its shard for two Adam steps (with 10% of the latents marked dead, so AuxK runs);
then rank 0 alone trains the unsharded `TopKSAE` the same way. For each it prints:
- state: parameters + gradients + Adam moments (sum of tensor storage sizes);
- saved: activations saved for the backward (through `torch.autograd.graph.saved_tensors_hooks`,
  parameters excluded);
- dense pre: the `(batch, latents)` pre-activation matrix that the TopK encoder builds and frees
  inside its forward (the largest transient of a step);
- accounted: the sum of the three, and the measured peak resident memory of the step above the
  process's memory before the model was built (Linux `VmHWM`, reset through `/proc/self/clear_refs`);
  on CUDA `torch.cuda.max_memory_allocated` instead.
The ratio sharded / unsharded is the figure of merit (ideally 1 / nproc plus the replicated `b_dec`
and the batch's `(batch, d_in)` tensors). Timings are not reported: this machine's cores are shared.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saes.architectures import SAEConfig, make_sae  # noqa: E402
from saes.sharded import ShardedTopK  # noqa: E402

ARGV_ENV = "BENCH_SHARDED_MEMORY_ARGV"  # the launcher's arguments, for its ranks (JSON list)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", type=int, default=36864)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--backend", choices=["auto", "nccl", "gloo"], default="auto",
                   help="auto: gloo on CPU, NCCL on CUDA with a GPU per rank, gloo when ranks share a GPU")
    p.add_argument("--json", default=None, help="rank 0 also writes the figures (bytes) to this JSON file")
    return p.parse_args(json.loads(os.environ[ARGV_ENV]) if ARGV_ENV in os.environ else None)


def _proc_bytes(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


class _Peak:
    """Peak memory above the level at entry: CUDA allocator peak, or resident set (Linux).

    `start()` resets the peak to the current level, so what happened between entry and `start()`
    (building the model) only counts through what it left allocated.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _proc_bytes("VmRSS")
        return self

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _proc_bytes("VmHWM") - self.base


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _train(module, x: torch.Tensor, dead: torch.Tensor, aux_k: int, peak: _Peak | None = None, steps: int = 2) -> dict:
    """`steps` Adam steps on `module` (a TopKSAE or a ShardedTopK); memory figures in bytes."""
    if peak is not None:
        peak.start()
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    params = {p.data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = _nbytes(t)
        return t

    for _ in range(steps):
        saved.clear()
        opt.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = module.training_loss(x, dead=dead, aux_k=aux_k)
        out.loss.backward()
        opt.step()
        module.normalize_decoder()
    state = sum(_nbytes(p) + _nbytes(p.grad) for p in module.parameters())
    state += sum(_nbytes(t) for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    return {"state": state, "saved": sum(saved.values())}


def _worker(a: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    backend = a.backend
    if backend == "auto":
        backend = "nccl" if cuda and world_size <= torch.cuda.device_count() else "gloo"
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = SAEConfig(d_in=a.d_in, d_sae=a.d_sae, k=a.k)
    aux_k = min(512, a.d_in // 2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, a.d_in, generator=gen).to(device)
    dead = torch.zeros(a.d_sae, dtype=torch.bool)
    dead[torch.randperm(a.d_sae, generator=gen)[: a.d_sae // 10]] = True
    dead = dead.to(device)
    itemsize = cfg.torch_dtype.itemsize

    # warm-up on tiny shapes: kernels, thread pools and collectives allocate once, outside the figures
    small = SAEConfig(d_in=a.d_in, d_sae=64 * world, k=4)
    _train(ShardedTopK.init(small).to(device), x[:64], dead[: small.d_sae][ShardedTopK(small).local], 8)
    _train(make_sae(small).to(device), x[:64], dead[: small.d_sae], 8)

    results = {}
    with _Peak(device) as peak:
        shard = ShardedTopK.init(cfg, seed=0).to(device)
        figures = _train(shard, x, dead[shard.local], aux_k, peak)
        del shard
        gc.collect()
    results["sharded"] = {**figures, "dense pre": a.batch * (a.d_sae // world) * itemsize, "measured": peak.peak}
    dist.barrier()
    if rank == 0:
        with _Peak(device) as peak:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                sae = make_sae(cfg).to(device)
            figures = _train(sae, x, dead, aux_k, peak)
            del sae
            gc.collect()
        results["unsharded"] = {**figures, "dense pre": a.batch * a.d_sae * itemsize, "measured": peak.peak}
        for name in ("sharded", "unsharded"):
            results[name]["accounted"] = sum(results[name][key] for key in ("state", "saved", "dense pre"))
        where = "CUDA max_memory_allocated" if cuda else "peak RSS"
        print(f"d_in={a.d_in} d_sae={a.d_sae} k={a.k} batch={a.batch}, {world} latent ranks, {device.type}; MB per rank")
        print(f"{'':>10} {'state':>9} {'saved':>9} {'dense pre':>10} {'accounted':>10} {'measured':>9}  (measured: {where})")
        for name in ("sharded", "unsharded"):
            r = results[name]
            print(f"{name:>10} " + " ".join(f"{r[key] / 1e6:>{w}.1f}" for key, w in
                                           (("state", 9), ("saved", 9), ("dense pre", 10), ("accounted", 10), ("measured", 9))))
        s, u = results["sharded"], results["unsharded"]
        print(f"ratio sharded / unsharded: accounted {s['accounted'] / u['accounted']:.3f}x, "
              f"measured {s['measured'] / u['measured']:.3f}x (goal <= 0.6x)")
        if a.json:
            Path(a.json).write_text(json.dumps({"config": {k: v for k, v in vars(a).items() if k != "json"}, "backend": backend,
                                                "device": str(device), "measured_by": where, **results}, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    a = _args()
    if "LOCAL_RANK" in os.environ:
        _worker(a)
        return
    # The ranks get the arguments through the environment: torchrun's own parser would take some of
    # them (`--nproc` reads as an abbreviation of its `--nproc-per-node`).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.nproc}", __file__]
    env = {**os.environ, "OMP_NUM_THREADS": "1", ARGV_ENV: json.dumps(sys.argv[1:])}
    raise SystemExit(subprocess.call(cmd, env=env))


if __name__ == "__main__":
    main()

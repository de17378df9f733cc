"""SAE training throughput: our TopK step vs a dense backward, the matmul ceiling, and SAELens.

All figures come from one run on the same in-memory activations `(batch, d_in)`:

- ours:    `saes.train.Trainer.train_step` (sparse TopK kernels, Adam, unit-norm decoder upkeep)
- dense:   the same trainer and SAE, but the loss goes through dense `(batch, d_sae)` activations
           and plain autograd (what the sparse kernels replace)
- ceiling: this machine's dense matmul rate, measured on the encoder product
           `(batch, d_in) @ (d_in, d_sae)` (the faster of a fresh and a reused output), in float32, or in
           the `--autocast` dtype when given (the dtype the step's encoder product then runs in); a TopK step
           with a sparse backward costs that one product (2 * batch * d_in * d_sae FLOPs) plus
           O(batch * d_sae) selection and O(batch * k * d_in) sparse terms, so tokens/s at that rate
           is the step's ceiling
- SAELens: SAELens's `TopKTrainingSAE` trained with the body of its `SAETrainer._train_step`
           (forward, backward, grad-norm clip, Adam), run by the SAELens venv's python on the same
           activations (written to a temporary safetensors file). Skipped when the venv is absent.
- sparsify: EleutherAI's `SparseCoder` (eai-sparsify, its fused TopK encoder and sparse decoder)
           with the step of its trainer (fvu + AuxK on dead latents, backward, removal of the decoder
           gradient parallel to the decoder rows, Adam at our betas, unit-norm decoder), run by
           `.venv-sparsify`'s python (`bash benchmarks/sparsify_env.sh`), or this python when it can
           import `sparsify` (`--sparsify-python` names another), on the same activations. On CUDA its
           forward runs under its own bf16 autocast (`SparseCoder.forward` is decorated so).

`--autocast bfloat16` trains ours (and the dense variant) with `TrainConfig(autocast="bfloat16")`:
float32 master weights, the encoder product in bf16 (what a GPU run uses).

Ours and each baseline are timed in alternating rounds (`--rounds`) so all see the same load;
each figure is the best round.

Usage: python benchmarks/bench_sae_train.py [--device cuda] [--steps 5] [--threads 2] [--rounds 3]
       [--d-in 576 --d-sae 4608 --k 32 --batch 4096] [--autocast bfloat16] [--skip-dense] [--skip-saelens]
       [--skip-sparsify] [--sparsify-python PATH] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from saes.architectures import SAE, SAEConfig
from saes.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
SAELENS_PYTHON = ROOT / ".venv-saelens" / "bin" / "python"
SPARSIFY_PYTHON = ROOT / ".venv-sparsify" / "bin" / "python"

# What both scripts share: their arguments and the timing of `step` (run as `python -c SCRIPT ...`).
HEADER = """path, steps, k, device, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
batches = [b.to(device) for b in load_file(path).values()]
d_in = batches[0].shape[1]
d_sae = int(sys.argv[6])
"""
TIMING = """def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()

step(batches[0]); sync()
start = time.perf_counter()
for i in range(steps):
    step(batches[i % len(batches)])
sync()
elapsed = time.perf_counter() - start
print(json.dumps({"tokens_per_s": steps * batches[0].shape[0] / elapsed}))
"""

SAELENS_SCRIPT = (r"""
import json, sys, time
import torch
from safetensors.torch import load_file
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

{header}sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device=device))
opt = torch.optim.Adam(sae.parameters(), lr=2e-4, betas=(0.9, 0.999))
since_fired = torch.zeros(d_sae, device=device)

def step(x):
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=since_fired > 1e9, n_training_steps=0, is_logging_step=False))
    with torch.no_grad():
        fired = out.feature_acts.bool().float().sum(-2).bool()
        since_fired.add_(1)
        since_fired[fired] = 0
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    opt.zero_grad()

""").replace("{header}", HEADER) + TIMING


SPARSIFY_SCRIPT = (r"""
import json, sys, time
import torch
from safetensors.torch import load_file
from sparsify.config import SparseCoderConfig
from sparsify.sparse_coder import SparseCoder

{header}torch.manual_seed(0)
sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=device)
sae.b_dec.data = batches[0].mean(0)
opt = torch.optim.Adam(sae.parameters(), lr=2e-4, betas=(0.9, 0.999))
since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

def step(x):
    out = sae(x, dead_mask=since_fired > 10_000_000)
    loss = out.fvu + out.auxk_loss / 32
    loss.backward()
    with torch.no_grad():
        since_fired.add_(x.shape[0])
        since_fired[out.latent_indices.flatten()] = 0
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    opt.zero_grad()
    sae.set_decoder_norm_to_unit_norm()

""").replace("{header}", HEADER) + TIMING


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, batches, steps: int, device: torch.device) -> float:
    """Tokens/s of `step(batch)` over `steps` calls after one warm-up call."""
    step(batches[0])
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    _sync(device)
    return steps * batches[0].shape[0] / (time.perf_counter() - start)


def matmul_gflops(batch: int, d_in: int, d_sae: int, device: torch.device, repeats: int,
                  dtype: torch.dtype = torch.float32) -> float:
    """The faster of `a @ b` into a fresh tensor and into a reused one (no page faults on the output), in `dtype`."""
    a = torch.randn(batch, d_in, device=device, dtype=dtype)
    b = torch.randn(d_in, d_sae, device=device, dtype=dtype)
    out = a @ b
    best = 0.0
    for product in (lambda: a @ b, lambda: torch.mm(a, b, out=out)):
        product()
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            product()
        _sync(device)
        best = max(best, 2 * batch * d_in * d_sae * repeats / (time.perf_counter() - start) / 1e9)
    return best


def make_trainer(args, device: torch.device, sample: torch.Tensor) -> Trainer:
    cfg = SAEConfig(d_in=args.d_in, d_sae=args.d_sae, arch="topk", k=args.k)
    tcfg = TrainConfig(n_tokens=10**9, batch_size=args.batch, lr=2e-4, device=str(device), seed=0, autocast=args.autocast)
    trainer = Trainer(cfg, tcfg)
    trainer.initialise(sample)
    return trainer


def sparsify_python(given: str | None) -> Path:
    """The python that runs sparsify's step: `given`, else this one when it imports `sparsify`, else `.venv-sparsify`'s."""
    if given:
        return Path(given)
    if importlib.util.find_spec("sparsify") is not None:
        return Path(sys.executable)
    return SPARSIFY_PYTHON


def run_other(python: Path, script: str, name: str, acts: Path, args) -> float | None:
    """Tokens/s of another library's step, run by its own venv's python on the saved activations."""
    if not python.exists():
        return None
    cmd = [str(python), "-c", script, str(acts), str(args.steps), str(args.k), args.device, str(args.threads), str(args.d_sae)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{name} run failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return float("nan")
    return json.loads(proc.stdout.strip().splitlines()[-1])["tokens_per_s"]


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print its table; returns the figures (also written to `--json FILE`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds; the best of each is reported")
    parser.add_argument("--skip-saelens", action="store_true")
    parser.add_argument("--skip-sparsify", action="store_true")
    parser.add_argument("--skip-dense", action="store_true",
                        help="leave out the dense-autograd trainer (at large widths its memory churn slows the others)")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None,
                        help="train ours under torch.autocast in this dtype (fp32 master weights); the ceiling is measured in it too")
    parser.add_argument("--sparsify-python", default=None,
                        help="python that imports sparsify (default: this one if it can, else .venv-sparsify/bin/python)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    # activations with a decaying spectrum, like a residual stream, fixed in memory
    mix = torch.randn(args.d_in, args.d_in) * torch.logspace(0, -1.5, args.d_in)[:, None]
    batches = [(torch.randn(args.batch, args.d_in) @ mix + 0.5).to(device) for _ in range(2)]

    ours = make_trainer(args, device, batches[0])
    dense = None if args.skip_dense else make_trainer(args, device, batches[0])
    if dense is not None:
        dense.sae.training_loss = lambda x, **kw: SAE.training_loss(dense.sae, x, **kw)
    others = {} if args.skip_saelens else {"SAELens TopKTrainingSAE": (SAELENS_PYTHON, SAELENS_SCRIPT, "saelens_env.sh")}
    if not args.skip_sparsify:
        others["sparsify SparseCoder (eai-sparsify)"] = (sparsify_python(args.sparsify_python), SPARSIFY_SCRIPT, "sparsify_env.sh")
    rates: dict[str, list[float]] = {"ours": [], "dense": [], "ceiling": [], **{name: [] for name in others}}
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.torch import save_file

        acts = Path(tmp) / "acts.safetensors"
        save_file({f"b{i}": b.cpu().contiguous() for i, b in enumerate(batches)}, str(acts))
        for r in range(args.rounds):
            rates["ours"].append(time_steps(ours.train_step, batches, args.steps, device))
            if dense is not None:
                rates["dense"].append(time_steps(dense.train_step, batches, args.steps, device))
            dtype = getattr(torch, args.autocast) if args.autocast else torch.float32
            gflops = matmul_gflops(args.batch, args.d_in, args.d_sae, device, repeats=max(3, args.steps), dtype=dtype)
            rates["ceiling"].append(gflops * 1e9 / (2 * args.d_in * args.d_sae))
            for name, (python, script, _) in others.items():
                tps = run_other(python, script, name, acts, args)
                if tps is not None:
                    rates[name].append(tps)
            print(f"round {r}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in rates.items() if v), flush=True)
    best = {name: max(v) if v else None for name, v in rates.items()}
    ours_tps, ceiling_tps = best["ours"], best["ceiling"]
    rows = [
        ("ours (sparse TopK backward)", ours_tps, ""),
        ("dense autograd backward, same SAE", best["dense"] or float("nan"),
         f"ours/dense = {ours_tps / best['dense']:.2f}x" if best["dense"] else "skipped (--skip-dense)"),
        (f"ceiling: {args.autocast or 'float32'} matmul at {ceiling_tps * 2 * args.d_in * args.d_sae / 1e9:.1f} GFLOP/s", ceiling_tps,
         f"ours/ceiling = {ours_tps / ceiling_tps:.2f}"),
    ]
    if args.skip_saelens:
        rows.append(("SAELens TopKTrainingSAE", float("nan"), "skipped (--skip-saelens)"))
    for name, (python, _, env) in others.items():
        if best[name] is None:
            rows.append((name, float("nan"), f"skipped: no venv at {python} (create it with `bash benchmarks/{env}`)"))
        else:
            rows.append((name, best[name], f"ours/{name.split()[0]} = {ours_tps / best[name]:.2f}x"))

    print(f"\nSAE training throughput: TopK k={args.k}, d_in={args.d_in}, d_sae={args.d_sae}, batch={args.batch}, "
          f"device={args.device}, autocast={args.autocast}, threads={args.threads}, {args.steps} timed steps, "
          f"best of {args.rounds} rounds\n")
    print(f"{'path':<44}{'tokens/s':>14}  ratio")
    print("-" * 90)
    for name, tps, note in rows:
        print(f"{name:<44}{tps:>14,.0f}  {note}")
    result = {"config": {k: v for k, v in vars(args).items() if k != "json"},
              "tokens_per_s": best, "ceiling_gflops": ceiling_tps * 2 * args.d_in * args.d_sae / 1e9,
              "ours_over_ceiling": ours_tps / ceiling_tps,
              "skipped": {name: f"no python at {python}" for name, (python, _, _) in others.items() if best[name] is None}}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

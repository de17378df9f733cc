"""SAE quality at short budgets: our trainer vs a plain PyTorch TopK trainer, same data, same run.

Both train a TopK SAE (k=32, width 4608) on the first N stored activations of SmolLM2-135M at
`blocks.8.hook_resid_post` (the built-in corpus, harvested once into a store), for budgets of
50k, 100k, 300k and 1M tokens, in batches of 4096 drawn from one fixed permutation of those rows.

- ours:  `saes.train.train_sae` with its defaults (peak lr from `default_lr`, warm-up and decay
         as fractions of the run, AuxK, decoder-gradient projection, sparse kernels).
- plain: the trainer below, independent of `saes`: the same input scaling (mean norm sqrt(d_in)),
         `b_dec` at the data mean, `W_enc = W_dec.T`, dense autograd through a TopK activation,
         Adam at a constant lr (5e-4) with no warm-up or decay, decoder rows renormalised after
         each step.

Both SAEs are saved as safetensors, and held-out FVE is computed from the saved weights by
`heldout_fve` below (its own TopK encode), on stored rows that come after every training row
(contexts 8,000 onward; training uses at most the first 8,000 contexts). The script prints one
row per budget and PASS when ours is at least as good as plain at every budget.

    python benchmarks/bench_sae_budget.py                          # ~20 min on 2 CPU cores
    python benchmarks/bench_sae_budget.py --budgets 50000,100000   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
CTX_LEN = 128
TRAIN_CONTEXTS = 8000  # training rows come from these contexts; evaluation rows from later ones
STORE_CONTEXTS = 9000


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--hook", default="blocks.8.hook_resid_post")
    p.add_argument("--store", default=str(ROOT / "out" / "bench" / "store_l8"))
    p.add_argument("--out", default=str(ROOT / "out" / "bench" / "sae_budget"))
    p.add_argument("--budgets", default="50000,100000,300000,1000000")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--width", type=int, default=4608)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--plain-lr", type=float, default=5e-4)
    p.add_argument("--lr", type=float, default=None, help="our peak lr (default: default_lr)")
    p.add_argument("--eval-rows", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def open_store(args):
    """The store, harvested first if absent: STORE_CONTEXTS contexts of the built-in corpus."""
    from interp.store import ActivationStore, build_store

    path = Path(args.store)
    if (path / "manifest.json").exists() and ActivationStore(path).complete:
        return ActivationStore(path)
    from interp import load_model

    model = load_model(args.model, device="cpu")
    return build_store(model, args.hook, "builtin", STORE_CONTEXTS * (CTX_LEN - 1), path, ctx_len=CTX_LEN)


def training_batches(rows: torch.Tensor, n: int, batch: int, seed: int) -> list[torch.Tensor]:
    """The first `n` rows in one fixed random order, cut into batches (the last may be smaller)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    data = rows[:n][perm]
    return [data[i : i + batch] for i in range(0, n, batch)]


def input_scale(batches: list[torch.Tensor], sample_rows: int = 2**15) -> tuple[float, torch.Tensor]:
    """Scale giving the first `sample_rows` rows mean norm sqrt(d_in), and their scaled mean."""
    sample = torch.cat(batches)[:sample_rows].float()
    scale = math.sqrt(sample.shape[1]) / sample.norm(dim=1).mean().item()
    return scale, (sample * scale).mean(0)


def train_plain(batches: list[torch.Tensor], d_sae: int, k: int, lr: float, seed: int) -> dict[str, torch.Tensor]:
    """A plain TopK SAE trainer: dense autograd, constant-lr Adam. Returns weights for raw inputs."""
    d_in = batches[0].shape[1]
    scale, mean = input_scale(batches)
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.t().clone()
    W_dec.requires_grad_(True)
    W_enc.requires_grad_(True)
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = mean.clone().requires_grad_(True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)
    for x in batches:
        x = x.float() * scale
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        loss = (z @ W_dec + b_dec - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
    with torch.no_grad():  # fold the input scale: the same activations, in raw units
        return {"W_enc": W_enc.detach().clone(), "b_enc": b_enc.detach() / scale,
                "W_dec": W_dec.detach().clone(), "b_dec": b_dec.detach() / scale}


@torch.no_grad()
def heldout_fve(weights: dict[str, torch.Tensor], x: torch.Tensor, k: int, chunk: int = 8192) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 of a TopK SAE's saved weights on rows `x (n, d_in)`."""
    err = 0.0
    for i in range(0, x.shape[0], chunk):
        xb = x[i : i + chunk].double()
        pre = (xb - weights["b_dec"].double()) @ weights["W_enc"].double() + weights["b_enc"].double()
        vals, idx = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        err += float((z @ weights["W_dec"].double() + weights["b_dec"].double() - xb).pow(2).sum())
    xd = x.double()
    return 1.0 - err / float((xd - xd.mean(0)).pow(2).sum())


def train_ours(batches: list[torch.Tensor], args, out: Path, n: int) -> None:
    from saes.architectures import SAEConfig
    from saes.train import TrainConfig, train_sae

    cfg = SAEConfig(d_in=batches[0].shape[1], d_sae=args.width, arch="topk", k=args.k, hook_name=args.hook)
    tcfg = TrainConfig(n_tokens=n, batch_size=args.batch_size, lr=args.lr, seed=args.seed, checkpoint_minutes=None)
    train_sae(batches, cfg, tcfg, out, overwrite=True, progress=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    store = open_store(args)
    body = store.manifest["ctx_len"] - 1
    if max(budgets) > TRAIN_CONTEXTS * body:
        print(f"budgets must be at most {TRAIN_CONTEXTS * body:,} tokens (the training contexts)", file=sys.stderr)
        return 2
    rows = store.tensor(args.hook)
    held_out = rows[TRAIN_CONTEXTS * body :][: args.eval_rows].float().clone()
    out = Path(args.out)
    table = []
    for n in budgets:
        batches = training_batches(rows, n, args.batch_size, args.seed)
        start = time.perf_counter()
        train_ours(batches, args, out / f"ours_{n}", n)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        plain = train_plain(batches, args.width, args.k, args.plain_lr, args.seed)
        plain_s = time.perf_counter() - start
        save_file({k: v.contiguous() for k, v in plain.items()}, str(out / f"plain_{n}.safetensors"))
        ours_fve = heldout_fve(load_file(str(out / f"ours_{n}" / "sae_weights.safetensors")), held_out, args.k)
        plain_fve = heldout_fve(load_file(str(out / f"plain_{n}.safetensors")), held_out, args.k)
        ours_lr = json.loads((out / f"ours_{n}" / "training.json").read_text())["lr"]
        table.append({"tokens": n, "steps": len(batches), "ours_lr": ours_lr, "ours_fve": ours_fve, "plain_fve": plain_fve,
                      "ours_tokens_per_s": n / ours_s, "plain_tokens_per_s": n / plain_s})
        print(f"{n:>9,} tokens: ours {ours_fve:.4f}  plain {plain_fve:.4f}", flush=True)
    print(f"\nTopK k={args.k}, width {args.width}, {args.hook} of {store.manifest['model']}, batch {args.batch_size}; "
          f"plain constant lr {args.plain_lr:.2e}; held-out FVE on {held_out.shape[0]:,} rows")
    print(f"{'tokens':>9} {'steps':>5} {'ours lr':>8} {'ours FVE':>9} {'plain FVE':>9} {'ours-plain':>10} {'ours tok/s':>10} {'plain tok/s':>11}")
    for r in table:
        print(f"{r['tokens']:>9,} {r['steps']:>5} {r['ours_lr']:>8.2e} {r['ours_fve']:>9.4f} {r['plain_fve']:>9.4f} "
              f"{r['ours_fve'] - r['plain_fve']:>+10.4f} {r['ours_tokens_per_s']:>10,.0f} {r['plain_tokens_per_s']:>11,.0f}")
    ok = all(r["ours_fve"] >= r["plain_fve"] for r in table)
    print(f"\n{'PASS' if ok else 'MISS'}: ours at least as good as plain at every budget")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

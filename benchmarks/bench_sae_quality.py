"""SAE quality on real activations: our trainer vs SAELens's own `SAETrainer`, same data and budget.

Both train a TopK SAE (k=32, width 4608 by default) on the same stored activations of
SmolLM2-135M at `blocks.15.hook_resid_post` (1M tokens of the built-in corpus, harvested once
into a store), with the same batch size and learning rate. SAELens runs in its own venv
(`bash benchmarks/saelens_env.sh`) and reads the store's shards; its SAE is saved in its own
format and loaded here. Both are then evaluated by `saes.evaluate.evaluate_sae` on held-out
text (contexts after the training ones): fraction of variance explained, L0, and CE loss
recovered; dead latents are counted over the first `--dead-window` stored tokens.

    python benchmarks/bench_sae_quality.py                      # ~40 min on 2 CPU cores
    python benchmarks/bench_sae_quality.py --tokens 200000      # a quicker look
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from interp import load_model
from interp.activations import build_store
from saes.architectures import SAEConfig
from saes.evaluate import evaluate_sae
from saes.io import load_sae
from saes.train import TrainConfig, default_lr, train_sae

ROOT = Path(__file__).resolve().parents[1]
SAELENS_PYTHON = ROOT / ".venv-saelens" / "bin" / "python"

SAELENS_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

store, point, out, tokens, batch, k, d_sae, lr, threads = sys.argv[1:10]
tokens, batch, k, d_sae, lr, threads = int(tokens), int(batch), int(k), int(d_sae), float(lr), int(threads)
torch.set_num_threads(threads)
manifest = json.load(open(f"{store}/manifest.json"))
acts = torch.cat([torch.from_numpy(np.load(f"{store}/{point}/{s['file']}")) for s in manifest["shards"]])[:tokens]
acts = acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(0))]

def provider():
    while True:
        for i in range(0, acts.shape[0] - batch + 1, batch):
            yield acts[i : i + batch]

sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=d_sae, k=k, dtype="float32", device="cpu"))
cfg = SAETrainerConfig(total_training_samples=tokens, train_batch_size_samples=batch, lr=lr, lr_end=lr / 10, device="cpu")
start = time.perf_counter()
sae = SAETrainer(cfg, sae, provider()).fit()
seconds = time.perf_counter() - start
sae.save_inference_model(out)
print(json.dumps({"seconds": seconds, "tokens_per_s": tokens / seconds}))
"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--hook", default="blocks.15.hook_resid_post")
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--store", default=str(ROOT / "out" / "bench" / "store_l15"))
    p.add_argument("--out", default=str(ROOT / "out" / "bench" / "sae_quality"))
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--width", type=int, default=4608)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=None, help="both trainers (default: ours for this width)")
    p.add_argument("--eval-tokens", type=int, default=20_000)
    p.add_argument("--dead-window", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-saelens", action="store_true")
    return p.parse_args(argv)


def dead_fraction(sae, store, point: str, n_tokens: int) -> float:
    """Fraction of latents that never fire on the first `n_tokens` stored activations."""
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    seen = 0
    with torch.no_grad():
        for batch in store.batches(point, 4096, shuffle=False):
            fired |= (sae.encode(batch[: n_tokens - seen]) > 0).any(0)
            seen += batch.shape[0]
            if seen >= n_tokens:
                break
    return 1.0 - fired.float().mean().item()


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    model = load_model(args.model, device="cpu")
    store = build_store(model, args.hook, "builtin", args.tokens, args.store)
    layer = int(args.hook.split(".")[1])
    cfg = SAEConfig(d_in=store.d, d_sae=args.width, arch="topk", k=args.k, model_name=model.interp_name,
                    hook_name=args.hook, hook_layer=layer, context_size=store.manifest["ctx_len"], dataset="builtin")
    lr = args.lr or default_lr(cfg)
    saes, speed = {}, {}

    start = time.perf_counter()
    saes["interp"] = train_sae(store.batches(args.hook, args.batch_size, shuffle=True, seed=0, reuse=True), cfg,
                               TrainConfig(n_tokens=args.tokens, batch_size=args.batch_size, lr=lr, seed=0), out / "interp")
    speed["interp"] = args.tokens / (time.perf_counter() - start)

    if not args.skip_saelens and SAELENS_PYTHON.exists():
        target = out / "saelens"
        cmd = [str(SAELENS_PYTHON), "-c", SAELENS_SCRIPT, str(store.path), args.hook, str(target), str(args.tokens),
               str(args.batch_size), str(args.k), str(args.width), str(lr), str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        speed["saelens"] = json.loads(proc.stdout.strip().splitlines()[-1])["tokens_per_s"]
        saes["saelens"] = load_sae(target)
    elif not args.skip_saelens:
        print(f"SAELens skipped: no venv at {SAELENS_PYTHON} (bash benchmarks/saelens_env.sh)")

    skip = math.ceil(args.tokens / (store.manifest["ctx_len"] - 1)) + 1  # held-out: after the training contexts
    rows = {}
    for name, sae in saes.items():
        r = evaluate_sae(sae, model, "builtin", args.eval_tokens, point=args.hook, skip_contexts=skip, progress=False)
        rows[name] = {
            "fve": r["fve"], "l0": r["l0"], "ce_loss_recovered": r["ce_loss_recovered"],
            "loss_clean": r["ce_loss_clean"], "loss_spliced": r["ce_loss_spliced"], "loss_ablated": r["ce_loss_ablated"],
            "dead_fraction": dead_fraction(sae.cpu(), store, args.hook, args.dead_window),
            "train_tokens_per_s": speed[name],
        }
    print(f"\nTopK k={args.k}, width {args.width}, {args.tokens:,} tokens of {args.hook} ({model.interp_name}), "
          f"batch {args.batch_size}, lr {lr:.2e}; eval on {args.eval_tokens:,} held-out tokens, dead over {args.dead_window:,}")
    print(f"{'trainer':10} {'FVE':>7} {'L0':>6} {'dead':>7} {'CE rec':>7} {'loss clean/SAE/zero':>22} {'tok/s':>7}")
    for name, r in rows.items():
        print(f"{name:10} {r['fve']:7.4f} {r['l0']:6.1f} {r['dead_fraction']:7.2%} {r['ce_loss_recovered']:7.4f} "
              f"{r['loss_clean']:6.3f}/{r['loss_spliced']:6.3f}/{r['loss_ablated']:6.3f} {r['train_tokens_per_s']:7.0f}")
    if "saelens" in rows:
        print(f"\nours/SAELens: FVE {rows['interp']['fve'] / rows['saelens']['fve']:.3f}x, "
              f"CE recovered {rows['interp']['ce_loss_recovered'] - rows['saelens']['ce_loss_recovered']:+.4f}, "
              f"training speed {rows['interp']['train_tokens_per_s'] / rows['saelens']['train_tokens_per_s']:.2f}x")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "lr": lr, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SAE quality on real activations: our trainer vs SAELens's `SAETrainer`, each at its own best settings.

Both train a TopK SAE (k=32, width 4608) on the same stored activations of SmolLM2-135M at
`blocks.8.hook_resid_post`: the first 303,104 rows (74 batches of 4096) of a store of the
built-in corpus, in one fixed random order that both trainers read. Each trainer gets the
settings its own project recommends for a run this short, and a small learning-rate sweep:

- ours:    `train_sae` with its defaults (inputs scaled to mean norm sqrt(d_in), warm-up over the
           first 5% of steps, linear decay over the last 20%, AuxK with a dead window of a tenth
           of the run), at each lr of `--lrs`.
- SAELens: `TopKTrainingSAE` + `SAETrainer` with `normalize_activations="expected_average_only_in"`
           (its scale estimated on the same first 8 batches ours uses), a dead-feature window of
           the same number of tokens as ours (so AuxK engages within the run), linear decay over
           the last 20% of steps (`lr_decay_steps`), no warm-up (its default), its own AuxK
           coefficient and decoder-norm handling, at each lr of `--lrs`.

The lr of each trainer is chosen by FVE on validation rows (stored contexts 8,000-8,499, after
every training row); the chosen SAEs are then measured by `saes.evaluate.evaluate_sae` on text
after the whole store (contexts 9,000 on): FVE, L0, CE loss recovered. Dead latents are each
trainer's own counters at the end of training (not fired in the last `window` training tokens);
training tokens/s are measured in the same run. SAELens runs in `.venv-saelens`
(`bash benchmarks/saelens_env.sh`).

    python benchmarks/bench_sae_quality.py                  # ~25 min on 2 CPU cores
    python benchmarks/bench_sae_quality.py --lrs 2e-3       # one lr each
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SAELENS_PYTHON = ROOT / ".venv-saelens" / "bin" / "python"
VALIDATION_CONTEXTS = (8000, 8500)
TEST_CONTEXT = 9000

SAELENS_SCRIPT = r"""
import itertools, json, math, sys, time
import numpy as np, torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

job = json.loads(sys.argv[1])
torch.set_num_threads(job["threads"])
rows = torch.from_numpy(np.load(job["rows"]))
batch, n = job["batch"], rows.shape[0]
batches = [rows[i : i + batch] for i in range(0, n, batch)]
norm_batches = job["norm_batches"]
results = {}
for lr in job["lrs"]:
    # The scale estimate reads the first `norm_batches` batches; training then starts from batch 0.
    provider = itertools.chain(batches[:norm_batches], itertools.cycle(batches))
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=rows.shape[1], d_sae=job["d_sae"], k=job["k"], dtype="float32", device="cpu",
                                                normalize_activations="expected_average_only_in"))
    cfg = SAETrainerConfig(total_training_samples=n, train_batch_size_samples=batch, lr=lr, lr_end=lr, lr_decay_steps=job["decay_steps"],
                           dead_feature_window=job["dead_window_steps"], feature_sampling_window=len(batches),
                           n_batches_for_norm_estimate=norm_batches, device="cpu")
    trainer = SAETrainer(cfg, sae, provider)
    start = time.perf_counter()
    sae = trainer.fit()
    seconds = time.perf_counter() - start
    out = f"{job['out']}/saelens_lr{lr:g}"
    sae.save_inference_model(out)
    results[str(lr)] = {"path": out, "tokens_per_s": n / seconds, "steps": trainer.n_training_steps,
                        "dead_fraction": trainer.dead_neurons.float().mean().item(),
                        "window_tokens": job["dead_window_steps"] * batch}
print(json.dumps(results))
"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--hook", default="blocks.8.hook_resid_post")
    p.add_argument("--store", default=str(ROOT / "out" / "bench" / "store_l8"))
    p.add_argument("--out", default=str(ROOT / "out" / "bench" / "sae_quality"))
    p.add_argument("--tokens", type=int, default=74 * 4096)
    p.add_argument("--lrs", default="1e-3,2e-3,4e-3", help="learning rates tried with each trainer")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--width", type=int, default=4608)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--eval-tokens", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-saelens", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from bench_sae_budget import heldout_fve, open_store, training_batches
    from safetensors.torch import load_file

    from interp import load_model
    from saes.architectures import SAEConfig
    from saes.evaluate import evaluate_sae
    from saes.io import load_sae, read_training_record
    from saes.train import TrainConfig, train_sae

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    lrs = [float(v) for v in args.lrs.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = open_store(args)
    body = store.manifest["ctx_len"] - 1
    all_rows = store.tensor(args.hook)
    batches = training_batches(all_rows, args.tokens, args.batch_size, seed=0)
    validation = all_rows[VALIDATION_CONTEXTS[0] * body : VALIDATION_CONTEXTS[1] * body].float().clone()
    steps = len(batches)
    window_steps = max(1, round(args.tokens / 10 / args.batch_size))  # ours: a tenth of the run
    init_batches = math.ceil(2**15 / args.batch_size)
    runs: dict[str, dict[float, dict]] = {"interp": {}, "saelens": {}}

    for lr in lrs:
        cfg = SAEConfig(d_in=all_rows.shape[1], d_sae=args.width, arch="topk", k=args.k, hook_name=args.hook,
                        model_name=store.manifest["model"], context_size=body + 1, dataset="builtin")
        tcfg = TrainConfig(n_tokens=args.tokens, batch_size=args.batch_size, lr=lr, seed=0, checkpoint_minutes=None,
                           dead_after_tokens=window_steps * args.batch_size)
        folder = out / f"interp_lr{lr:g}"
        start = time.perf_counter()
        train_sae(batches, cfg, tcfg, folder, overwrite=True, progress=False)
        seconds = time.perf_counter() - start
        dead = read_training_record(folder)["dead_latents"]
        runs["interp"][lr] = {"path": str(folder), "tokens_per_s": args.tokens / seconds, "steps": steps,
                              "dead_fraction": dead["dead_fraction"], "window_tokens": dead["window_tokens"]}
        print(f"interp  lr {lr:g}: {args.tokens / seconds:,.0f} tok/s", flush=True)

    if not args.skip_saelens:
        if not SAELENS_PYTHON.exists():
            print(f"SAELens skipped: no venv at {SAELENS_PYTHON} (bash benchmarks/saelens_env.sh)")
        else:
            rows_path = out / "train_rows.npy"
            np.save(rows_path, torch.cat(batches).numpy())
            job = {"rows": str(rows_path), "batch": args.batch_size, "lrs": lrs, "d_sae": args.width, "k": args.k,
                   "threads": args.threads, "out": str(out), "norm_batches": init_batches,
                   "decay_steps": math.ceil(0.2 * steps), "dead_window_steps": window_steps}
            proc = subprocess.run([str(SAELENS_PYTHON), "-c", SAELENS_SCRIPT, json.dumps(job)], capture_output=True, text=True)
            rows_path.unlink()
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            for lr, r in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                runs["saelens"][float(lr)] = r
                print(f"saelens lr {float(lr):g}: {r['tokens_per_s']:,.0f} tok/s", flush=True)

    for name, by_lr in runs.items():
        for lr, r in by_lr.items():
            r["validation_fve"] = heldout_fve(load_file(str(Path(r["path"]) / "sae_weights.safetensors")), validation, args.k)
    model = load_model(args.model, device="cpu")
    rows = {}
    for name, by_lr in runs.items():
        if not by_lr:
            continue
        lr = max(by_lr, key=lambda v: by_lr[v]["validation_fve"])
        r = by_lr[lr]
        res = evaluate_sae(load_sae(r["path"]), model, "builtin", args.eval_tokens, point=args.hook, skip_contexts=TEST_CONTEXT,
                           progress=False)
        rows[name] = {"lr": lr, "fve": res["fve"], "l0": res["l0"], "ce_loss_recovered": res["ce_loss_recovered"],
                      "dead_fraction": r["dead_fraction"], "window_tokens": r["window_tokens"], "tokens_per_s": r["tokens_per_s"],
                      "validation_fve_by_lr": {str(v): by_lr[v]["validation_fve"] for v in by_lr}}

    print(f"\nTopK k={args.k}, width {args.width}, {args.tokens:,} tokens ({steps} steps of {args.batch_size}) of {args.hook}; "
          f"lr chosen from {args.lrs} by validation FVE; test: {args.eval_tokens:,} tokens after the store")
    print(f"{'trainer':8} {'lr':>7} {'FVE':>7} {'L0':>5} {'dead (window)':>18} {'CE rec':>7} {'tok/s':>7}   validation FVE by lr")
    for name, r in rows.items():
        sweep = ", ".join(f"{float(v):g}: {f:.4f}" for v, f in r["validation_fve_by_lr"].items())
        print(f"{name:8} {r['lr']:7.0e} {r['fve']:7.4f} {r['l0']:5.1f} {r['dead_fraction']:7.2%} ({r['window_tokens']:>7,}) "
              f"{r['ce_loss_recovered']:7.4f} {r['tokens_per_s']:7,.0f}   {sweep}")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

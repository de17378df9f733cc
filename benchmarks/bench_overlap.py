"""Harvest and SAE training overlapped by `interp.prefetch`: streamed training as a share of harvest alone.

Three runs over the same tokens of the built-in corpus at one hook point of SmolLM2-135M, in
one process, alternated over `--rounds` so all see the same machine load:

- harvest:     `harvest(...)` consumed and dropped (the model forward alone: the ceiling);
- sequential:  `train_sae(harvest(...))`, each SAE step waiting for the next forward and back;
- overlapped:  `train_sae(prefetch(harvest(...)))`, the forward in a background thread.

It prints tokens/s of each and overlapped / harvest (goal >= 0.90: training hidden behind the
harvest) and sequential / harvest (what overlapping saves). With `--threads 1` each of the two
threads gets a core of its own on a 2-core machine; on a GPU both run on the device.

    python benchmarks/bench_overlap.py                 # ~6 min on 2 CPU cores
    python benchmarks/bench_overlap.py --tokens 20000  # a quicker look

`--json FILE` also writes the figures (tokens/s of each run, the two ratios) to FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--hook", default="blocks.8.hook_resid_post")
    p.add_argument("--tokens", type=int, default=40_000)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096, help="SAE training batch (tokens; `interp sae train`'s default)")
    p.add_argument("--model-batch", type=int, default=8, help="contexts per model forward")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared by both threads)")
    p.add_argument("--device", default=None)
    p.add_argument("--data", default="builtin", help="text to harvest (as `interp sae train --data`)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from interp import load_model
    from interp.activations import harvest
    from interp.prefetch import prefetch
    from saes.architectures import SAEConfig
    from saes.train import TrainConfig, train_sae

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    d = int(model.cfg.d_model)
    device = str(next(model.parameters()).device)

    def source():
        batches = harvest(model, args.hook, args.data, args.tokens, ctx_len=128, batch_size=args.model_batch,
                          out_batch_size=args.batch_size, shuffle_buffer_tokens=8 * args.batch_size, device=device)
        return (batch[args.hook] for batch in batches)

    def train(batches) -> None:
        cfg = SAEConfig(d_in=d, d_sae=args.expansion * d, arch="topk", k=args.k, hook_name=args.hook)
        tcfg = TrainConfig(n_tokens=args.tokens, batch_size=args.batch_size, init_tokens=4 * args.batch_size,
                           checkpoint_minutes=None, device=device)
        with tempfile.TemporaryDirectory() as out:
            train_sae(batches, cfg, tcfg, out, overwrite=True, progress=False)

    runs = {
        "harvest": lambda: [None for _ in source()],
        "sequential": lambda: train(source()),
        "overlapped": lambda: train(prefetch(source(), depth=2)),
    }
    seconds = {name: [] for name in runs}
    runs["harvest"]()  # warm-up: weights paged in, kernels chosen
    for r in range(args.rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
            print(f"round {r} {name:10}: {args.tokens / seconds[name][-1]:,.0f} tok/s", flush=True)
    rate = {name: args.tokens / min(s) for name, s in seconds.items()}
    print(f"\n{args.hook} of {args.model}, {args.tokens:,} tokens, TopK k={args.k} x{args.expansion}, "
          f"batch {args.batch_size}, {args.threads} thread(s), device {device}; best of {args.rounds} rounds")
    for name, value in rate.items():
        print(f"  {name:10} {value:9,.0f} tok/s")
    share = rate["overlapped"] / rate["harvest"]
    print(f"overlapped / harvest alone: {share:.2f} (goal >= 0.90: {'PASS' if share >= 0.9 else 'MISS'}); "
          f"sequential / harvest alone: {rate['sequential'] / rate['harvest']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "tokens": args.tokens, "tokens_per_s": rate, "overlapped_over_harvest": share,
                       "sequential_over_harvest": rate["sequential"] / rate["harvest"]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time a 30-layer probe sweep on SmolLM2 as a ratio to one plain forward pass over the same data.

Four timings, all in this process on the same texts and batches:
- plain:  one forward per batch, no hooks (the floor);
- harvest: one forward per batch capturing all 30 points (pooled to the last token);
- sweep:  `probe_layers` over resid_post:all (one forward per batch capturing all 30 points,
          then 30 probes + 30 control probes + bootstrap intervals);
- naive:  one forward per layer per batch, each capturing a single point (stopped early after
          it), as a loop over layers would do, plus the same probe fits.

Plain, harvest and sweep run `--repeats` times and the fastest run counts (other processes on a
shared machine only ever add time); the naive loop runs once.

Usage: python benchmarks/bench_probe_sweep.py [--n 32] [--batch-size 16] [--model default]
"""

from __future__ import annotations

import argparse
import time

import torch

from interp import HookManager, load_model
from interp.data import load_labelled
from probes import harvest, probe_activations, probe_layers
from interp.readout import tokenize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="number of labelled texts (builtin sentiment set)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default="default")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each cheap timing; the fastest counts (naive runs once)")
    args = ap.parse_args()

    model = load_model(args.model, device="cpu")
    hm = HookManager(model)
    texts, labels = load_labelled("builtin:sentiment")
    texts, labels = texts[: args.n], labels[: args.n]
    points = hm.resolve("resid_post:all")
    tokens, lengths = tokenize(model, texts)
    order = torch.argsort(lengths, stable=True)
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]

    def plain() -> None:
        with torch.no_grad():
            for idx in batches:
                model(tokens[idx, : int(lengths[idx].max())])

    def timed(fn, repeats: int = args.repeats) -> tuple[float, object]:
        """Fastest of `repeats` runs (other processes on a shared machine only ever add time)."""
        best, out = float("inf"), None
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    plain()  # warm-up: first calls allocate
    t_plain, _ = timed(plain)
    t_sweep, result = timed(lambda: probe_layers(model, texts, labels, points=points, batch_size=args.batch_size,
                                                 n_bootstrap=args.bootstrap, progress=False))
    t_harvest, feats = timed(lambda: harvest(model, texts, points, batch_size=args.batch_size, progress=False))

    t0 = time.perf_counter()
    naive = {}
    for p in points:
        naive.update(harvest(model, texts, p, batch_size=args.batch_size, progress=False))
    probe_activations(naive, labels, n_bootstrap=args.bootstrap)
    t_naive = time.perf_counter() - t0
    for p in points:
        torch.testing.assert_close(naive[p], feats[p], atol=1e-4, rtol=1e-4)  # same features either way
    # The load drifts during a run: time the baseline again after the rest and keep the fastest.
    t_plain = min(t_plain, timed(plain)[0])

    n_tokens = int(lengths.sum())
    print(f"{args.model}: {len(texts)} texts, {n_tokens} tokens, {len(points)} points, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"plain forward pass          {t_plain:8.2f} s   1.00x")
    print(f"one-pass harvest (30 pts)   {t_harvest:8.2f} s   {t_harvest / t_plain:5.2f}x plain")
    print(f"probe sweep (harvest+fits)  {t_sweep:8.2f} s   {t_sweep / t_plain:5.2f}x plain")
    print(f"naive: a forward per layer  {t_naive:8.2f} s   {t_naive / t_plain:5.2f}x plain")
    print(f"sweep is {t_naive / t_sweep:.1f}x faster than the per-layer loop; "
          f"best point {result.best_point} accuracy {result.metrics[result.best_point]['accuracy']:.3f}")


if __name__ == "__main__":
    main()

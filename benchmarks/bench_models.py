"""Harvest throughput and capture overhead on both embedded models, measured in one run.

For each model (SmolLM2-135M, llama; Gemma 3 270M, gemma3_text) on the same number of random
token contexts:
- boot: seconds to load the de-quantized model from the cache through the bridge (the one-time
  de-quantization is not timed here; see docs/models.md);
- plain forward: tokens/s of a bridge forward with nothing attached (logits included: Gemma's
  262k-token unembedding is a large share of it);
- capture overhead: a forward capturing one mid-depth `resid_post` point against the plain
  forward, as a ratio within each round (goal <= 1.05);
- harvest: tokens/s of `token_activations` at mid depth (early stop, and the plain-HF fast path
  where it applies: SmolLM2 takes it, Gemma takes the bridge), and the path it took.

Rounds run the cases back to back in rotating order; each figure is the median over rounds.

    python benchmarks/bench_models.py                       # CPU, 8 x 128 tokens, 3 rounds
    python benchmarks/bench_models.py --device cuda --batch 32 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from interp import HookManager, fastpath, load_model
from interp.activations import token_activations

MODELS = ("smollm2-135m", "gemma3-270m")
CAPTURE_OVERHEAD_MAX = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, default=8, help="contexts per forward")
    p.add_argument("--ctx", type=int, default=128, help="tokens per context")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_model(spec: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    start = time.perf_counter()
    model = load_model(spec, device=device)
    boot = time.perf_counter() - start
    hm = HookManager(model)
    mid = model.cfg.n_layers // 2
    point = f"blocks.{mid}.hook_resid_post"
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, args.ctx), generator=gen).to(device)
    tokens[:, 0] = model.tokenizer.bos_token_id

    def plain():
        model(tokens)

    def capture():
        with hm.capture(point):
            model(tokens)

    def harvest():
        token_activations(hm, tokens, [point], torch.float32)

    cases = {"plain": plain, "capture": capture, "harvest": harvest}
    for fn in cases.values():  # warm-up
        _timed(fn, device)
    times: dict[str, list[float]] = {k: [] for k in cases}
    overheads = []
    for r in range(args.repeats):
        names = list(cases)
        order = names[r % len(names):] + names[: r % len(names)]
        got = {name: _timed(cases[name], device) for name in order}
        for name, t in got.items():
            times[name].append(t)
        overheads.append(got["capture"] / got["plain"] - 1)
    n = args.batch * args.ctx
    rows = args.batch * (args.ctx - 1)
    return {
        "model": spec, "layers": model.cfg.n_layers, "d_model": model.cfg.d_model, "d_vocab": model.cfg.d_vocab, "boot_s": boot,
        "plain_tok_s": n / statistics.median(times["plain"]), "capture_overhead": statistics.median(overheads),
        "harvest_point": point, "harvest_tok_s": rows / statistics.median(times["harvest"]),
        "harvest_path": "plain-HF fast path" if fastpath.applies(hm, [point]) else "bridge hooks",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [bench_model(spec, args) for spec in MODELS]
    print(f"{args.batch} x {args.ctx} tokens on {args.device}, median of {args.repeats} rounds")
    print(f"{'model':<14} {'layers':>6} {'d_model':>7} {'vocab':>7} {'boot s':>7} {'forward tok/s':>13} "
          f"{'capture overhead':>16} {'harvest point':>26} {'harvest tok/s':>13}  path")
    for r in results:
        print(f"{r['model']:<14} {r['layers']:>6} {r['d_model']:>7} {r['d_vocab']:>7} {r['boot_s']:>7.1f} {r['plain_tok_s']:>13.0f} "
              f"{r['capture_overhead']:>+15.1%} {r['harvest_point']:>26} {r['harvest_tok_s']:>13.0f}  {r['harvest_path']}")
    for r in results:
        verdict = "PASS" if r["capture_overhead"] <= CAPTURE_OVERHEAD_MAX else "MISS"
        print(f"{verdict}: {r['model']} capture overhead {r['capture_overhead']:+.1%} (goal <= {CAPTURE_OVERHEAD_MAX:.0%})")
    a, b = results
    print(f"harvest at mid depth: {b['model']} reaches {b['harvest_tok_s'] / a['harvest_tok_s']:.2f}x the tokens/s of {a['model']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

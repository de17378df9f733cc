"""Steered vs unsteered generation with the KV cache: time per new token, measured side by side.

Runs alternate (plain, steered, plain, steered, ...) in one process so both see the same machine
load; prints the median time per token of each and the steered/plain ratio (goal: <= 1.05) as the
ratio of medians, of minimums (the least disturbed by other load) and the median of paired runs.

    python benchmarks/bench_steer_generate.py                  # SmolLM2-135M, layer 15
    python benchmarks/bench_steer_generate.py --model DIR --layer 1 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from interp import load_model
from interp.steering import apply, from_direction


def timed_generate(model, tokens: torch.Tensor, n_new: int) -> float:
    """Seconds per new token for one greedy generation of exactly `n_new` tokens."""
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(tokens, max_new_tokens=n_new, do_sample=False, use_past_kv_cache=True,
                             verbose=False, return_type="tokens", stop_at_eos=False)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == tokens.shape[1] + n_new
    return elapsed / n_new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default=None)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device=args.device)
    point = f"blocks.{args.layer}.hook_resid_post"
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    vector = from_direction(direction / direction.norm(), point, model.interp_name)
    tokens = model.to_tokens("The meeting this morning was about the new budget, and everyone said that")

    def plain() -> float:
        return timed_generate(model, tokens, args.new_tokens)

    def steered() -> float:
        with apply(model, vector, alpha=4.0):
            return timed_generate(model, tokens, args.new_tokens)

    plain(), steered()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "steered": []}
    for _ in range(args.repeats):
        times["plain"].append(plain())
        times["steered"].append(steered())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {model.interp_name}, steering at {point}, {args.new_tokens} new tokens, {args.repeats} interleaved repeats, "
          f"device {next(model.parameters()).device}, {torch.get_num_threads()} threads")
    for k, v in times.items():
        print(f"  {k:8s} median {med[k] * 1e3:7.2f} ms/token  (min {min(v) * 1e3:.2f}, max {max(v) * 1e3:.2f})")
    pairs = sorted(s / p for p, s in zip(times["plain"], times["steered"]))
    print(f"  ratio steered/plain: {med['steered'] / med['plain']:.3f} of medians, {min(times['steered']) / min(times['plain']):.3f} "
          f"of minimums, {statistics.median(pairs):.3f} median of paired runs  (goal <= 1.05)")


if __name__ == "__main__":
    main()

"""Patching speed on SmolLM2 (the Eiffel Tower / Colosseum pair), as ratios measured in one run.

Goals (ratios, never absolute times):
1. attribution patching of every residual site (resid_pre, resid_post, attn_out, mlp_out at every
   layer and position: one forward of [clean, corrupted] and one backward) costs <= 3x one plain
   forward pass of the clean prompt;
2. batched activation patching of every site (those four kinds and every head's output `z`;
   `batch_tokens // prompt length` patched copies per forward) is >= 3x faster than one forward
   per site (each site patched with `HookManager.patch` / `edit` in its own single-row forward).
   The per-site loop runs on `--sample-sites` evenly spaced sites each round; its time per site
   times the number of sites is its cost for all of them.

Each round times the four cases back to back in rotating order; a ratio is the median over rounds
of the ratio within a round. On a busy shared CPU, `--threads 1 --clock cpu` counts only the work
this process does.

    python benchmarks/bench_patching.py                        # SmolLM2-135M, CPU, 3 rounds
    python benchmarks/bench_patching.py --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from interp import HookManager, load_model
from interp.attribution import attribution_patching
from interp.patching import DEFAULT_HOOKS, RESID_HOOKS, activation_patching, enumerate_sites
from interp.prompt_pairs import PromptPair, logit_diff_metric, tokenize_pairs

ATTRIBUTION_MAX = 3.0
BATCHED_MIN = 3.0
PAIR = PromptPair("The Eiffel Tower is in the city of", "The Colosseum is in the city of", " Paris", " Rome")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M, 30 layers)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds")
    p.add_argument("--sample-sites", type=int, default=60, help="sites timed one forward each per round (goal 2's baseline)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="tokens per forward of batched activation patching")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine; CPU device only)")
    return p.parse_args(argv)


def one_forward_per_site(hm: HookManager, clean: dict, corrupted: torch.Tensor, metric, sites) -> list[float]:
    """The naive loop: each site patched in its own single-row forward."""
    n_heads = int(hm.model.cfg.n_heads)
    out = []
    for site in sites:
        act = clean[site.point]
        if site.head is None:
            ctx = hm.patch(site.point, act[:, site.position], positions=site.position)
        else:
            def write(a: torch.Tensor, act=act, head=site.head) -> torch.Tensor:
                d = a.shape[-1] // n_heads
                a = a.clone()
                a[..., head * d:(head + 1) * d] = act[..., head * d:(head + 1) * d]
                return a
            ctx = hm.edit(site.point, write)
        with torch.no_grad(), ctx:
            out.append(float(metric(hm.forward(corrupted))))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.device != "cpu":
        raise SystemExit("--clock cpu measures CPU work only: use --clock wall with a GPU")
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    cuda = args.device.startswith("cuda")

    def timed(fn: Callable[[], object]) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = now()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return now() - start

    model = load_model(args.model, device=args.device)
    hm = HookManager(model)
    toks = tokenize_pairs(model, [PAIR])
    clean_tokens, corrupted = toks.clean.to(args.device), toks.corrupted.to(args.device)
    metric = logit_diff_metric(toks.answer, toks.wrong)
    n_pos = clean_tokens.shape[1]
    all_sites = enumerate_sites(hm, DEFAULT_HOOKS, n_pos)
    n_resid = len(enumerate_sites(hm, RESID_HOOKS, n_pos))
    step = max(1, len(all_sites) // args.sample_sites)
    sample = all_sites[::step][: args.sample_sites]
    with torch.no_grad():
        clean_acts = hm.collect(clean_tokens, list(dict.fromkeys(s.point for s in all_sites)), device=None)

    def plain_forward() -> None:
        with torch.no_grad():
            model(clean_tokens)

    cases: dict[str, Callable[[], object]] = {
        "forward": plain_forward,
        "attribution": lambda: attribution_patching(model, [PAIR], hooks=RESID_HOOKS),
        "batched": lambda: activation_patching(model, [PAIR], hooks=DEFAULT_HOOKS, batch_tokens=args.batch_tokens),
        "per_site_sample": lambda: one_forward_per_site(hm, clean_acts, corrupted, metric, sample),
    }
    print(f"{model.interp_name}, {n_pos} tokens; {n_resid} residual sites, {len(all_sites)} sites in all "
          f"({args.batch_tokens // n_pos} patched copies per forward); per-site baseline on {len(sample)} sites; "
          f"{args.repeats} rounds, {args.clock} clock, {torch.get_num_threads()} threads", flush=True)
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(args.repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(cases[name]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()), flush=True)
    per_site = [t / len(sample) * len(all_sites) for t in times["per_site_sample"]]
    attribution = statistics.median(a / f for a, f in zip(times["attribution"], times["forward"]))
    speedup = statistics.median(p / b for p, b in zip(per_site, times["batched"]))
    print(f"attribution patching of {n_resid} residual sites / one forward: {attribution:.2f}x "
          f"(goal <= {ATTRIBUTION_MAX:.0f}x) {'PASS' if attribution <= ATTRIBUTION_MAX else 'MISS'}")
    print(f"one forward per site / batched activation patching, {len(all_sites)} sites: {speedup:.2f}x faster "
          f"(goal >= {BATCHED_MIN:.0f}x) {'PASS' if speedup >= BATCHED_MIN else 'MISS'}")
    print(f"(median seconds: forward {statistics.median(times['forward']):.3f}, attribution {statistics.median(times['attribution']):.3f}, "
          f"batched {statistics.median(times['batched']):.2f}, one forward per site {statistics.median(per_site):.2f} extrapolated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

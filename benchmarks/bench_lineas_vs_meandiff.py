"""LinEAS against a mean-difference vector at matched strength, on SmolLM2's sentiment.

Both are fitted on the shipped sentiment pairs (negative -> positive) at the same layers
(default resid_post 6-12, pool mean). Strength is matched by the shift each causes: the mean
norm of (steered - clean) activation at the last fitted layer over the prompts' tokens (BOS
left out). For each LinEAS strength the mean-difference alpha with the same shift is found by
interpolating over a grid of alphas. Every condition generates `--max-new-tokens` tokens from
each of `--prompts` builtin prompts x `--seeds` seeds (temperature `--temperature`), scored by

- the project's sentiment probe at `--probe-point` (fitted on held-out labelled sentences;
  its held-out accuracy is printed): mean P(positive);
- the lexicon scorer (positive minus negative words);
- fluency: the unsteered model's loss on the continuation (lower is more fluent).

Writes `results.json` and `report.html` (P(positive) and fluency against shift, both methods)
to `--out`. This is a quality comparison, not a speed benchmark: it prints a table, no PASS/MISS.

    python benchmarks/bench_lineas_vs_meandiff.py --out out/bench_lineas          # ~80 min on 2 CPU cores
    python benchmarks/bench_lineas_vs_meandiff.py --maps steer/lineas --out ...   # reuse fitted maps (~60 min)
    python benchmarks/bench_lineas_vs_meandiff.py --quick --out out/bench_lineas_quick   # ~2 min: plumbing only

The full default run (layers 6-12, 100 steps, lambda_group = lambda_l1 = 0.05, 6 prompts x 2 seeds
x 30 tokens) took 847 s to fit and ~63 min to evaluate on 2 shared CPU cores; its figures are in
docs/steering_methods.md.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

MD_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", default="6-12", help="resid_post layers of both methods, e.g. 6-12")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--lambda-group", type=float, default=0.05)
    ap.add_argument("--lambda-l1", type=float, default=0.05)
    ap.add_argument("--pool", default="mean")
    ap.add_argument("--maps", type=Path, default=None, help="LinEAS folder to reuse instead of fitting")
    ap.add_argument("--strengths", default="0.5,1.0,1.5", help="LinEAS strengths; mean-diff is matched to each")
    ap.add_argument("--prompts", type=int, default=6, help="first N builtin prompts")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--probe-point", default="blocks.20.hook_resid_post")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="layer 6, 10 steps, 2 prompts x 1 seed x 10 tokens: checks the plumbing")
    ap.add_argument("--out", type=Path, default=Path("out/bench_lineas"))
    args = ap.parse_args()
    if args.quick:
        args.layers, args.steps, args.prompts, args.seeds, args.max_new_tokens = "6", 10, 2, 1, 10
        args.strengths = "0.5,1.0"
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from interp import HookManager, load_model, readout
    from interp.reports import html_table, write_report
    from interp.steering import (BUILTIN_PROMPTS, LexiconScorer, apply, continuation_loss, fit_sentiment_probe, generate_ids,
                                 load_builtin_pairs, mean_diff)
    from interp.steering.lineas import LinEASMaps, apply_lineas, fit_lineas

    t_start = time.time()
    model = load_model(args.model, device=args.device)
    pos, neg = load_builtin_pairs()
    points = f"resid_post:{args.layers}"
    if args.maps is not None:
        maps = LinEASMaps.load(args.maps)
        fit_seconds = maps.params.get("fit_seconds")
    else:
        t0 = time.time()
        maps = fit_lineas(model, neg, pos, points, pool=args.pool, steps=args.steps, lr=args.lr,
                          lambda_group=args.lambda_group, lambda_l1=args.lambda_l1, progress=True)
        fit_seconds = time.time() - t0
        maps.params["fit_seconds"] = fit_seconds
        maps.save(args.out / "lineas")
    names = maps.points
    print(f"LinEAS at {names}: loss {maps.params['loss_before']:.3f} -> {maps.params['loss_after']:.3f}, "
          f"active dims {maps.active_dims()}, fit {fit_seconds or float('nan'):.0f} s", flush=True)
    md = mean_diff(model, pos, neg, names, pool=args.pool, progress=False)
    probe = fit_sentiment_probe(model, args.probe_point, md)
    lexicon = LexiconScorer()
    print(f"probe at {args.probe_point}: held-out accuracy {probe.test_accuracy_:.3f}", flush=True)
    prompts, seeds = BUILTIN_PROMPTS[: args.prompts], list(range(args.seeds))
    strengths = [float(s) for s in args.strengths.split(",")]
    last = names[-1]

    def steering(kind: str, s: float):
        if kind == "unsteered" or s == 0:
            return nullcontext()
        return apply_lineas(model, maps, strength=s) if kind == "lineas" else apply(model, md, alpha=s)

    hm = HookManager(model)
    tokens, lengths = readout.tokenize(model, prompts)
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    real[:, 0] = False  # BOS
    clean = readout.capture(hm, tokens, [last])[last]

    def shift(kind: str, s: float) -> float:
        """Mean norm of (steered - clean) at the last fitted point over the prompts' tokens."""
        with steering(kind, s):
            steered = hm.collect(tokens, [last])[last]
        return float((steered - clean).norm(dim=-1)[real].mean())

    md_shift = {a: shift("mean-diff", a) for a in MD_GRID}
    lin_shift = {s: shift("lineas", s) for s in strengths}
    matched = [float(np.interp(lin_shift[s], list(md_shift.values()), list(md_shift))) for s in strengths]
    conditions = [("unsteered", 0.0)] + [("lineas", s) for s in strengths] + [("mean-diff", round(a, 4)) for a in matched]
    rows = []
    for kind, s in conditions:
        texts, losses, by_seed = [], [], {sd: [] for sd in seeds}
        for prompt in prompts:
            ids = model.to_tokens(prompt, prepend_bos=True)[0].cpu()
            for sd in seeds:
                with steering(kind, s):
                    new = generate_ids(model, ids, None, 0.0, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=sd)
                texts.append(model.tokenizer.decode(new.tolist(), skip_special_tokens=True))
                by_seed[sd].append(len(texts) - 1)
                losses.append(continuation_loss(model, ids, new))
        p_pos, lex = probe(texts), lexicon(texts)
        row = {"method": kind, "strength": s, "shift": shift(kind, s) if s else 0.0, "p_positive": float(np.mean(p_pos)),
               "lexicon": float(np.mean(lex)), "fluency_loss": float(np.nanmean(losses)),
               "p_positive_by_seed": {sd: float(np.mean([p_pos[i] for i in idx])) for sd, idx in by_seed.items()},
               "samples": texts[:2]}
        rows.append(row)
        print(f"{kind:>10} {s:<6g} shift {row['shift']:6.1f}  P(positive) {row['p_positive']:.2f}  lexicon {row['lexicon']:.2f}  "
              f"fluency loss {row['fluency_loss']:.2f}", flush=True)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "probe_point": args.probe_point, "probe_test_accuracy": probe.test_accuracy_, "lineas": maps.describe(),
              "mean_diff_norms": md.norms, "mean_diff_shift_grid": md_shift, "rows": rows, "seconds": time.time() - t_start}
    from interp.atomic import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", result)
    write_report(args.out / "report.html", "LinEAS vs mean difference at matched shift", figures=[figure(rows, last)],
                 sections=[html_table([{k: v for k, v in r.items() if k not in ("samples", "p_positive_by_seed")} for r in rows])],
                 intro=f"Layers {names}; {len(prompts)} prompts x {len(seeds)} seeds x {args.max_new_tokens} tokens at temperature "
                       f"{args.temperature}; probe at {args.probe_point} (held-out accuracy {probe.test_accuracy_:.3f}).")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.html'} ({time.time() - t_start:.0f} s)")


def figure(rows: list[dict], point: str):
    """P(positive) and fluency loss against the shift at `point`, one line per method (unsteered at shift 0 in both)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("probe P(positive)", "fluency loss (unsteered model)"))
    base = [r for r in rows if r["method"] == "unsteered"]
    for kind, color in (("lineas", "#1f77b4"), ("mean-diff", "#d62728")):
        pts = base + sorted((r for r in rows if r["method"] == kind), key=lambda r: r["shift"])
        for col, key in ((1, "p_positive"), (2, "fluency_loss")):
            fig.add_scatter(x=[r["shift"] for r in pts], y=[r[key] for r in pts], mode="lines+markers", name=kind,
                            line=dict(color=color), showlegend=col == 1, row=1, col=col,
                            text=[f"strength {r['strength']:g}" for r in pts])
    fig.update_xaxes(title_text=f"mean shift norm at {point}")
    return fig


if __name__ == "__main__":
    main()

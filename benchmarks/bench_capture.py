"""Capture and harvest speed of `HookManager` against plain forwards, measured in one run.

Goals (ratios, never absolute times):
1. capturing one point during a full forward costs <= 5% over a plain bridge forward;
2. harvesting at layer 5 of 30 with early stop is >= 3x faster than `run_with_cache`
   filtered to that point (which runs the whole model);
3. harvesting at layer L reaches >= 95% of the throughput of a plain HuggingFace forward
   truncated after layer L (embeddings + rotary + `model.model.layers[:L+1]` by hand), with
   the attention implementation the bridge uses; HF `sdpa` is shown for information.
   `token_activations` serves residual points of proven architectures from the plain
   HuggingFace modules (`interp.fastpath`); the bridge-hook path (`HookManager.collect`) is
   shown beside it for information.

Every case runs once on one context to warm up, then `--repeats` rounds in which the cases
of a goal run back to back in rotating order; a ratio is the median over rounds of the ratio
within a round, so slow drifts in machine load cancel out. On a busy shared CPU,
`--threads 1 --clock cpu` counts only the work this process does.

    python benchmarks/bench_capture.py                      # SmolLM2-135M, CPU, 8 x 128 tokens
    python benchmarks/bench_capture.py --device cuda --batch 32 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from interp import HookManager, fastpath, load_model
from interp.activations import token_activations
from interp.models import model_source, resolve_device

CAPTURE_OVERHEAD_MAX = 0.05
EARLY_STOP_MIN = 3.0
TRUNCATED_MIN = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="model spec (default: SmolLM2-135M, 30 layers)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, default=8, help="contexts per forward")
    p.add_argument("--ctx", type=int, default=128, help="tokens per context")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per goal")
    p.add_argument("--capture-layer", type=int, default=15, help="layer of the point captured in goal 1")
    p.add_argument("--early-layer", type=int, default=5, help="layer harvested in goal 2")
    p.add_argument("--layers", default="5,15,29", help="layers harvested in goal 3 (comma list; negative counts from the end)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine; CPU device only)",
    )
    return p.parse_args(argv)


class Timer:
    """Times zero-argument callables, synchronising CUDA around each call.

    `clock="cpu"` counts the CPU time of this process instead of elapsed time: time spent
    waiting for a core that other programs hold is left out.
    """

    def __init__(self, device: torch.device, clock: str = "wall"):
        self.cuda = device.type == "cuda"
        if clock == "cpu" and self.cuda:
            raise SystemExit("--clock cpu measures CPU work only: use --clock wall with --device cuda")
        self.now = time.process_time if clock == "cpu" else time.perf_counter

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        start = self.now()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return self.now() - start


def interleaved(
    timer: Timer, cases: dict[str, Callable[[torch.Tensor], object]], tokens: torch.Tensor, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each case on `tokens`: a warm-up call each on one context, then
    `repeats` rounds in rotating order."""
    names = list(cases)
    for name in names:
        cases[name](tokens[:1])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timer(lambda: cases[name](tokens)))
    return times


def round_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of times[num] / times[den]."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def hf_truncated(hf: torch.nn.Module, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """Residual stream after decoder layer `layer` of a plain HF Llama-style model: `(batch, pos, d)`.

    Mirrors `LlamaModel.forward` (transformers 5.x) up to that layer: embeddings, causal mask,
    rotary position embeddings, then the decoder layers called one by one.
    """
    from transformers.masking_utils import create_causal_mask

    body = hf.model
    hidden = body.embed_tokens(tokens)
    position_ids = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
    mask = create_causal_mask(
        config=body.config, inputs_embeds=hidden, attention_mask=None, past_key_values=None, position_ids=position_ids
    )
    position_embeddings = body.rotary_emb(hidden, position_ids=position_ids)
    for decoder_layer in body.layers[: layer + 1]:
        hidden = decoder_layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, position_ids=position_ids)
    return hidden


def load_hf(spec: str, attn: str, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    source = model_source(spec)[0]
    model = AutoModelForCausalLM.from_pretrained(source, attn_implementation=attn, dtype=torch.float32)
    return model.to(device).eval()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    timer = Timer(device, args.clock)
    torch.manual_seed(0)

    bridge = load_model(args.model, device=device)
    hm = HookManager(bridge)
    n_layers = hm.n_layers
    attn = bridge.original_model.config._attn_implementation
    hf_same = load_hf(args.model, attn, device)
    hf_sdpa = load_hf(args.model, "sdpa", device) if attn != "sdpa" else hf_same

    tokens = torch.randint(0, bridge.cfg.d_vocab, (args.batch, args.ctx), device=device)
    tokens[:, 0] = bridge.tokenizer.bos_token_id if bridge.tokenizer.bos_token_id is not None else 0
    n_tok = tokens.numel()
    print(
        f"model {bridge.interp_name} ({n_layers} layers, d_model {hm.d_model}), device {device}, "
        f"{args.batch} x {args.ctx} tokens per forward, {args.repeats} rounds, torch threads {torch.get_num_threads()}, "
        f"{args.clock} clock, bridge attention: {attn}"
    )
    rows: list[tuple[str, str, str, str]] = []
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    def tps(seconds: list[float]) -> float:
        return n_tok / statistics.median(seconds)

    with torch.no_grad():
        # Goal 1: one captured point during a full forward vs a plain forward.
        point = f"blocks.{args.capture_layer % n_layers}.hook_resid_post"

        def plain(x: torch.Tensor) -> object:
            return bridge(x)

        def captured(x: torch.Tensor) -> object:
            with hm.capture(point, device=None) as cap:
                hm.forward(x)
            return cap

        t = interleaved(timer, {"plain": plain, "capture": captured}, tokens, args.repeats)
        overhead = round_ratio(t, "capture", "plain") - 1
        rows += [
            ("bridge forward, no hooks", f"{tps(t['plain']):,.0f}", "", ""),
            (f"bridge forward, capture {point}", f"{tps(t['capture']):,.0f}", f"{overhead:+.1%} time", f"<= +{CAPTURE_OVERHEAD_MAX:.0%}"),
        ]
        report(f"{verdict(overhead <= CAPTURE_OVERHEAD_MAX)}  capture overhead {overhead:+.1%} (goal <= +{CAPTURE_OVERHEAD_MAX:.0%})")

        # Goal 2: early-stopped harvest vs run_with_cache filtered to the same point.
        early = f"blocks.{args.early_layer % n_layers}.hook_resid_post"

        def harvest_early(x: torch.Tensor) -> object:
            return token_activations(hm, x, [early], torch.float32, device=device)

        def rwc(x: torch.Tensor) -> object:
            return bridge.run_with_cache(x, names_filter=[early])

        t = interleaved(timer, {"harvest": harvest_early, "rwc": rwc}, tokens, args.repeats)
        speedup = round_ratio(t, "rwc", "harvest")
        rows += [
            (f"run_with_cache(names_filter={early})", f"{tps(t['rwc']):,.0f}", "", ""),
            (f"harvest {early} (early stop)", f"{tps(t['harvest']):,.0f}", f"{speedup:.2f}x faster", f">= {EARLY_STOP_MIN:.0f}x"),
        ]
        report(f"{verdict(speedup >= EARLY_STOP_MIN)}  early-stop harvest at layer {args.early_layer % n_layers}: {speedup:.2f}x run_with_cache (goal >= {EARLY_STOP_MIN:.0f}x)")

        # Goal 3: harvest at layer L vs a plain HF forward truncated after L.
        for layer in (int(x) % n_layers for x in args.layers.split(",")):
            name = f"blocks.{layer}.hook_resid_post"
            fast = fastpath.applies(hm, [name])
            path = "plain-HF fast path" if fast else "bridge hooks"
            ours = token_activations(hm, tokens, [name], torch.float32, device=device)[name]
            ref = hf_truncated(hf_same, tokens, layer)[:, 1:].reshape(-1, ours.shape[-1])
            diff = (ours - ref).abs().max().item()
            cases = {
                "harvest": lambda x, name=name: token_activations(hm, x, [name], torch.float32, device=device),
                f"hf_{attn}": lambda x, layer=layer: hf_truncated(hf_same, x, layer),
            }
            if fast:
                cases["bridge"] = lambda x, name=name: hm.collect(x, [name], positions=slice(1, None), device=device)
            if hf_sdpa is not hf_same:
                cases["hf_sdpa"] = lambda x, layer=layer: hf_truncated(hf_sdpa, x, layer)
            t = interleaved(timer, cases, tokens, args.repeats)
            ratio = round_ratio(t, f"hf_{attn}", "harvest")
            rows += [
                (f"HF {attn}, layers[:{layer + 1}] by hand", f"{tps(t[f'hf_{attn}']):,.0f}", "", ""),
                (f"harvest {name}, {path} (max |diff| vs HF {diff:.1e})", f"{tps(t['harvest']):,.0f}", f"{ratio:.1%} of HF {attn}", f">= {TRUNCATED_MIN:.0%}"),
            ]
            if fast:
                info = round_ratio(t, f"hf_{attn}", "bridge")
                rows.append(("bridge hooks, same point (information)", f"{tps(t['bridge']):,.0f}", f"{info:.1%} of HF {attn}", ""))
            if "hf_sdpa" in cases:
                info = round_ratio(t, "hf_sdpa", "harvest")
                rows.append((f"HF sdpa, layers[:{layer + 1}] (information)", f"{tps(t['hf_sdpa']):,.0f}", f"harvest = {info:.1%} of it", ""))
            report(f"{verdict(ratio >= TRUNCATED_MIN)}  harvest at layer {layer} ({path}): {ratio:.1%} of truncated HF {attn} throughput (goal >= {TRUNCATED_MIN:.0%})")

    widths = [max(len(r[i]) for r in rows + [("case", "tokens/s", "ratio", "goal")]) for i in range(4)]
    header = ("case", "tokens/s", "ratio", "goal")
    print()
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

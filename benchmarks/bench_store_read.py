"""Read speed of an activation store against an in-memory copy of the same bytes, in one run.

Goal: reading a store back (`ActivationStore.tensor`, `.batches(shuffle=False)`,
`.batches(shuffle=True)`) reaches >= 50% of the throughput of `dst.copy_(src)` on an
in-memory tensor of the same size. The store is read once before timing, so the files are
in the page cache: this measures the reading code, not the disk.

Read speed does not depend on the model, so unless `--store DIR` names an existing store, a
one-layer random model with d_model 576 (SmolLM2-135M's width) harvests 200k tokens from the
built-in corpus at `blocks.0.hook_resid_pre` (the forward stops at the first block, so this
takes seconds) into a temporary folder first.

A second baseline, `src.clone()`, copies the same bytes into freshly allocated memory, as any
read that returns new tensors must; it is shown for information, since on some machines
(virtual machines especially) first-touch page faults cost more than the copy itself.

    python benchmarks/bench_store_read.py
    python benchmarks/bench_store_read.py --store out/demo/store --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from interp import load_model, make_tiny_model
from interp.store import ActivationStore, build_store

READ_MIN = 0.50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=None, help="an existing store to read (default: build one in a temp folder)")
    p.add_argument("--point", default=None, help="point to read (default: the store's first)")
    p.add_argument("--tokens", type=int, default=200_000, help="rows to harvest when building the store")
    p.add_argument("--d-model", type=int, default=576, help="width of the random model that builds the store")
    p.add_argument("--data", default="builtin", help="text source for building the store")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per batch read from the store")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds")
    p.add_argument("--device", default="cpu", help="device of the model that builds the store (reads are on the CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def make_store(args: argparse.Namespace, root: Path) -> ActivationStore:
    model_dir = make_tiny_model(root / "model", n_layers=1, d_model=args.d_model, n_heads=4)
    model = load_model(str(model_dir), device=args.device)
    return build_store(model, "blocks.0.hook_resid_pre", args.data, args.tokens, root / "store", batch_size=32)


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each case, `repeats` rounds in rotating order (after one warm-up each)."""
    names = list(cases)
    for name in names:
        cases[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    return times


def drain(batches) -> int:
    """Consume an iterator of batches; returns the bytes it yielded."""
    total = 0
    for b in batches:
        total += b.numel() * b.element_size()
    return total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        if args.store:
            store = ActivationStore(args.store)
        else:
            start = time.perf_counter()
            store = make_store(args, Path(tmp))
            print(f"built a store of {store.n_tokens:,} x {store.d} in {time.perf_counter() - start:.1f} s")
        point = args.point or store.points[0]
        src = store.tensor(point)  # also the warm read: every shard is now in the page cache
        dst = torch.empty_like(src)
        n_bytes = src.numel() * src.element_size()
        reread = torch.empty_like(src)
        for shuffle in (False, True):
            for reuse in (False, True):
                if drain(store.batches(point, args.batch_size, shuffle=shuffle, reuse=reuse)) != n_bytes:
                    raise SystemExit(f"store.batches(shuffle={shuffle}, reuse={reuse}) did not yield every row once")
        cases = {
            "memcpy": lambda: dst.copy_(src),
            "clone": lambda: src.clone(),
            "tensor": lambda: store.tensor(point),
            "tensor_out": lambda: store.tensor(point, out=reread),
            "batches": lambda: drain(store.batches(point, args.batch_size, shuffle=False)),
            "batches_shuffled": lambda: drain(store.batches(point, args.batch_size, shuffle=True)),
            "batches_reuse": lambda: drain(store.batches(point, args.batch_size, shuffle=False, reuse=True)),
            "batches_shuffled_reuse": lambda: drain(store.batches(point, args.batch_size, shuffle=True, reuse=True)),
        }
        t = interleaved(cases, args.repeats)

    print(
        f"store {store.n_tokens:,} rows x {store.d} ({store.manifest['dtype']}) at {point}: {n_bytes / 1e9:.3f} GB, "
        f"{len(store.manifest['shards'])} shards, page cache warm; {args.repeats} rounds, torch threads {torch.get_num_threads()}"
    )
    labels = {
        "memcpy": "dst.copy_(src), in memory (baseline)",
        "clone": "src.clone(), fresh memory (information)",
        "tensor": "store.tensor(point)",
        "tensor_out": "store.tensor(point, out=buffer)",
        "batches": f"store.batches(point, {args.batch_size}, shuffle=False)",
        "batches_shuffled": f"store.batches(point, {args.batch_size}, shuffle=True)",
        "batches_reuse": f"store.batches(point, {args.batch_size}, shuffle=False, reuse=True)",
        "batches_shuffled_reuse": f"store.batches(point, {args.batch_size}, shuffle=True, reuse=True)",
    }
    rows = []
    lines = []
    for name, label in labels.items():
        gbs = n_bytes / statistics.median(t[name]) / 1e9
        if name == "memcpy":
            rows.append((label, f"{gbs:.2f}", "", ""))
            continue
        ratio = statistics.median(a / b for a, b in zip(t["memcpy"], t[name]))
        vs_clone = statistics.median(a / b for a, b in zip(t["clone"], t[name]))
        if name == "clone":
            rows.append((label, f"{gbs:.2f}", f"{ratio:.1%} of memcpy", ""))
            continue
        rows.append((label, f"{gbs:.2f}", f"{ratio:.1%} of memcpy, {vs_clone:.0%} of clone", f">= {READ_MIN:.0%} of memcpy"))
        lines.append(f"{'PASS' if ratio >= READ_MIN else 'MISS'}  {label}: {ratio:.1%} of memcpy throughput (goal >= {READ_MIN:.0%})")
    header = ("case", "GB/s", "ratio", "goal")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    print()
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

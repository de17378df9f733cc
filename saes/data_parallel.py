"""Data-parallel SAE training: one SAE, W ranks, the semantics of one process.

The group, its timeouts and the one-line `PeerLost` come from `interp.distributed`; this module
holds what is about SAEs.

Data: every rank opens the same deterministic stream and cuts it into the same global batches of
`TrainConfig.batch_size` rows; rank r trains on the r-th contiguous slice of each (`local_rows`),
so W ranks consume the global batches of one process, in its order. A step all-reduces, in one
collective (`reduce_step`), the gradients weighted by each slice's share of the global batch, the
fired mask (summed, so OR), floating buffers (averaged: BatchTopK's threshold) and the logged
statistics. Every rank then applies the same Adam step, decoder-gradient projection, decoder
renormalisation and dead-latent counter update to the same numbers, and the weights stay equal.
Initialisation (input scale, `b_dec`, active subspace) uses the global sample, which every rank
holds, and `broadcast_state` copies rank 0's `Trainer.state_dict()` to all ranks after it and after a resume.

Writes: only rank 0 writes (`interp.distributed.on_main`). Step and token counts are global, so a
checkpoint resumes under any world size that divides the global batch.
"""

from __future__ import annotations

from typing import Any

import torch

from interp import distributed
from interp.distributed import World


def local_rows(batch: Any, w: World) -> Any:
    """Rank `w.rank`'s contiguous slice of a global batch `(n, d)` or `{point: (n, d)}`.

    Slices have `ceil(n / size)` rows (the last ones fewer, possibly none), so a full batch of
    `size * B` rows gives every rank exactly `B`.
    """
    from saes.stream import rows, slice_rows

    if not w.parallel:
        return batch
    n = rows(batch)
    per = -(-n // w.size)
    return slice_rows(batch, min(n, w.rank * per), min(n, (w.rank + 1) * per))


def reduce_step(sae: torch.nn.Module, fired: torch.Tensor, n_local: int, n_global: int,
                stats: torch.Tensor | None, group: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All-reduce one step over `group` (None: every rank) in one collective; gradients are replaced
    by their global value.

    Gradients are weighted `n_local / n_global` and summed (the gradient of the mean loss over the
    global batch); `fired (d_sae,)` bool is OR-ed; floating buffers are averaged; `stats` (already
    weighted by the caller so that sums are global) are summed. Returns the global fired mask and stats.
    """
    params = list(sae.parameters())
    buffers = [b for b in sae.buffers() if b.is_floating_point()]
    weight = n_local / n_global
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() * weight for p in params]
    parts += [b.reshape(-1).float() / distributed.world(group).size for b in buffers]
    parts.append(fired.float())
    if stats is not None:
        parts.append(stats.float())
    flat = distributed.all_reduce(torch.cat(parts), group=group)
    at = 0
    for t in params + buffers:
        piece = flat[at : at + t.numel()].view_as(t).to(t.dtype)
        at += t.numel()
        if isinstance(t, torch.nn.Parameter):
            t.grad = piece
        else:
            t.copy_(piece)
    fired = flat[at : at + fired.numel()] > 0
    at += fired.numel()
    return fired, (flat[at:] if stats is not None else None)


def broadcast_state(trainer: Any, w: World) -> None:
    """Copy rank 0's whole training state (`trainer.state_dict()`: weights, Adam moments, counters, step,
    scale) to every rank, through `load_state_dict` on the others.

    For a replicated SAE only: a latent-sharded trainer holds a different shard on every rank.
    """
    if not w.parallel:
        return
    state = trainer.state_dict() if w.is_main else None
    layout = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in state["tensors"].items()} if state else None
    meta, layout = distributed.share((state["meta"] if state else None, layout), w)
    device = distributed.comm_device()
    tensors = {}
    with torch.no_grad():
        for name, (shape, dtype) in layout.items():
            # by logical layout: a tensor may be strided differently on two ranks, and a broadcast copies memory
            t = state["tensors"][name].contiguous().to(device) if state else torch.empty(shape, dtype=getattr(torch, dtype), device=device)
            tensors[name] = distributed.broadcast(t)
    if not w.is_main:
        trainer.load_state_dict({"tensors": tensors, "meta": meta})

"""Activation harvesting: one model forward, token rows at several hook points, streamed shuffled.

Rows are the activations of individual tokens at a hook point, `(n_tokens, width)`; BOS
positions are left out (their activations are outliers that carry no text). Several points are
harvested from one forward pass, which stops after the deepest point. A point's activation must
be `(batch, pos, *shape)`: each token's `shape` (e.g. `(d_model,)`, or `(heads, d_head)`) is
flattened into one row of `width = prod(shape)`, so row i of every point is the same token.
`harvest` streams shuffled batches of them; `interp.store` writes them to disk.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interp import distributed
from interp.data import bos_id, token_batches
from interp.distributed import World
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.models import model_device, resolve_device
from interp.readout import token_activations



def point_shapes(model_or_hm: Any, points: str | Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The per-token activation shape at each point: `{point: shape}`, e.g. `(d_model,)` or `(heads, d_head)`.

    Two tiny forward passes (2 contexts of 2, then of 3 tokens) tell the axes apart: a point is
    usable when its activation is `(batch, pos, *shape)` with only `pos` following the input
    length. Anything else (an attention pattern `(batch, heads, pos, pos)`, a rotary
    `(batch, heads, pos, d_head)`, a point the forward never reaches) raises InterpError.
    """
    hm = model_or_hm if isinstance(model_or_hm, HookManager) else HookManager(model_or_hm)
    names = hm.resolve(points)
    tok = getattr(hm.model, "tokenizer", None)
    first = bos_id(tok) if tok is not None else 0
    device = model_device(hm.model)
    short = hm.collect(torch.full((2, 2), first, device=device), names)
    longer = hm.collect(torch.full((2, 3), first, device=device), names)
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        if name not in short or name not in longer:
            raise InterpError(f"hook point {name} is not reached by a forward pass of this model: choose another point")
        a, b = tuple(short[name].shape), tuple(longer[name].shape)
        if len(a) < 3 or len(a) != len(b) or a[:2] != (2, 2) or b[:2] != (2, 3) or a[2:] != b[2:]:
            axes = ", ".join("pos" if x != y else str(x) for x, y in zip(a, b)) if len(a) == len(b) else str(a)
            raise InterpError(
                f"hook point {name} gives activations of shape ({axes}) for 2 contexts, not (batch, pos, d) "
                "or (batch, pos, heads, d_head), so it has no row per token: choose another point"
            )
        shapes[name] = a[2:]
    return shapes


def token_rows(hm: HookManager, tokens: torch.Tensor, names: Sequence[str], widths: dict[str, int], dtype: torch.dtype,
               device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """One forward of `tokens (batch, ctx)`: `{point: (batch*(ctx-1), width)}` on `device`, one row per non-BOS token.

    Grad mode is off for the forward only; callers that are generators must not hold it across a `yield`.
    """
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    with torch.no_grad():
        acts = token_activations(hm, tokens, names, dtype, device=device)
    # A (batch, pos, heads, d_head) point comes back as rows of d_head in (token, head) order, so
    # regrouping by token gives each token's heads side by side: (tokens, heads * d_head).
    return {p: acts[p].reshape(n, widths[p]) for p in names}


def _block_generator(seed: int, block: int) -> torch.Generator:
    """The generator that shuffles block `block`: a function of (seed, block) alone."""
    state = np.random.SeedSequence([seed % 2**64, block]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _item_rows(hm: HookManager, item: torch.Tensor, names: Sequence[str], widths: dict[str, int], dtype: torch.dtype,
               batch_size: int, ranks: World, group: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """Rows of the contexts `item (n, ctx)` in order, on `device`: `{point: (n*(ctx-1), width)}`.

    Over several ranks, rank r runs the model on contexts r, r+W, ... only, and the ranks exchange
    their rows (an all-gather), so every rank ends with all of them for 1/W of the model's work.
    """
    mine = item[ranks.rank :: ranks.size]
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for start in range(0, mine.shape[0], batch_size):
        acts = token_rows(hm, mine[start : start + batch_size], names, widths, dtype, device)
        for n in names:
            parts[n].append(acts[n])
    per_context = item.shape[1] - 1
    local = {n: torch.cat(parts[n]) if parts[n] else torch.empty((0, widths[n]), dtype=dtype, device=device) for n in names}
    if ranks.size == 1:
        return local
    most = -(-item.shape[0] // ranks.size)  # contexts of rank 0, the most any rank holds
    out = {}
    for n in names:
        padded = torch.zeros((most * per_context, widths[n]), dtype=dtype, device=device)
        padded[: len(local[n])] = local[n]
        gathered = distributed.all_gather(padded.to(distributed.comm_device(group)), group=group)
        # (rank, context of rank, ...) -> context r + W * i is rank r's i-th: interleave, drop padding
        stacked = torch.stack([g.to(device).view(most, per_context, widths[n]) for g in gathered], dim=1)
        out[n] = stacked.reshape(-1, widths[n])[: item.shape[0] * per_context]
    return out


def _joined(parts: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`{point: rows}` from each point's pieces; a block that came as one piece is not copied again."""
    return {n: ps[0] if len(ps) == 1 else torch.cat(ps) for n, ps in parts.items()}


def _blocks(
    hm: HookManager, names: Sequence[str], widths: dict[str, int], dtype: torch.dtype,
    contexts: Iterable[torch.Tensor], block_contexts: int, batch_size: int, ranks: World, group: Any, device: torch.device,
) -> Iterator[dict[str, torch.Tensor]]:
    """Rows of each block of contexts in data order, on `device`: `{point: (block rows, width)}`.

    `contexts` gives one block per item (`token_batches` with `batch_size=block_contexts`), except
    that a short last context comes as an item of its own. Forward passes take `batch_size`
    contexts counted from the block's start, so a block's rows do not depend on where a harvest began.
    """
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    held = 0
    for block in contexts:
        acts = _item_rows(hm, block, names, widths, dtype, batch_size, ranks, group, device)
        for n in names:
            parts[n].append(acts[n])
        held += block.shape[0]
        if held >= block_contexts:
            yield _joined(parts)
            parts, held = {n: [] for n in names}, 0
    if held:
        yield _joined(parts)


def harvest(
    model: Any,
    points: str | Sequence[str],
    source: str,
    n_tokens: int,
    ctx_len: int = 128,
    batch_size: int = 8,
    out_batch_size: int = 4096,
    shuffle_buffer_tokens: int = 2**17,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    text_field: str = "text",
    progress: bool = False,
    skip_tokens: int = 0,
    split_over: Any = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield `{point: (out_batch_size, width)}` batches of shuffled token activations, `n_tokens` rows in all.

    Block-wise shuffle: the contexts are read in blocks of `max(1, shuffle_buffer_tokens //
    (ctx_len - 1))` contexts (every context gives `ctx_len - 1` rows, BOS left out); each block's
    rows are permuted by a generator seeded from `(seed, block index)` and emitted in full before
    the next block is read. One permutation serves all points, so row i of every point is the
    same token. Batches run across block ends; only the last batch may be smaller.

    `skip_tokens` resumes exactly: the output equals the rows from `skip_tokens` on of a harvest
    without it (same other arguments). Whole blocks before the skip point are passed over without
    running the model; the block holding it is harvested and its rows before it dropped.
    `width` is `point_shapes(model, point)` flattened; `device` is where the batches are put
    (default: the model's). Blocks are gathered and shuffled there too: on a GPU the rows go from
    the forward to the batches without a round trip through host memory (a block takes
    `shuffle_buffer_tokens * width` values per point of that device's memory).

    `split_over`: a process group (`interp.distributed.new_group()`, or the default group) whose W
    ranks all call `harvest` with the same arguments: each rank runs the model on 1/W of every
    block's contexts and the ranks all-gather the rows, so every rank yields the stream one process
    yields, for 1/W of the model's work (data-parallel SAE training then takes each rank's slice of
    every batch). None (or a group of one): every forward runs here.
    """
    if n_tokens <= 0:
        raise InterpError(f"token count must be positive, got {n_tokens}")
    if ctx_len < 2:
        raise InterpError(f"context length must be at least 2, got {ctx_len}")
    if not 0 <= skip_tokens <= n_tokens:
        raise InterpError(f"skip_tokens must be between 0 and the token count {n_tokens}, got {skip_tokens}")
    hm = HookManager(model)
    names = hm.resolve(points)
    widths = {n: math.prod(s) for n, s in point_shapes(hm, names).items()}
    out_device = model_device(model) if device is None else resolve_device(device)
    block_contexts = max(1, shuffle_buffer_tokens // (ctx_len - 1))
    block_rows = block_contexts * (ctx_len - 1)
    first = skip_tokens // block_rows
    drop = skip_tokens - first * block_rows
    if skip_tokens == n_tokens:
        return
    contexts = token_batches(model, source, ctx_len, block_contexts, n_tokens, text_field, skip_contexts=first * block_contexts)
    carry = {n: torch.empty((0, widths[n]), dtype=dtype, device=out_device) for n in names}
    with tqdm(total=n_tokens, initial=skip_tokens, unit="tok", desc="harvest", disable=not progress) as bar:
        ranks = distributed.world(split_over) if split_over is not None else World()
        blocks = _blocks(hm, names, widths, dtype, contexts, block_contexts, batch_size, ranks, split_over, out_device)
        for index, rows in enumerate(blocks, start=first):
            perm = torch.randperm(rows[names[0]].shape[0], generator=_block_generator(seed, index)).to(out_device)
            if index == first:
                perm = perm[drop:]
            ready = {n: torch.cat([carry[n], rows[n][perm]]) if len(carry[n]) else rows[n][perm] for n in names}
            bar.update(len(perm))
            full = len(ready[names[0]]) - len(ready[names[0]]) % out_batch_size
            for start in range(0, full, out_batch_size):
                yield {n: t[start : start + out_batch_size] for n, t in ready.items()}
            carry = {n: t[full:] for n, t in ready.items()}
        if len(carry[names[0]]):
            yield carry

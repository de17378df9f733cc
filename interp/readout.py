"""The one way from texts to activations: tokenise, pad, run once per batch, pool per text.

Probes, CAVs, TCAV, steering vectors, the steering evaluator's probe scorer and the token-level
harvest all read activations here, so the same texts give them the same numbers.

Tokenisation. Each text is tokenised without special tokens and the model's BOS id is put in
front (`interp.data.bos_id`: the tokenizer's BOS, else its EOS), which is what
`model.to_tokens(text, prepend_bos=True)` gives and how packed contexts start.

BOS rule. The BOS position is never part of a readout. `last` is the text's last token, `mean`
and `max` run over the text's tokens after BOS, an integer position counts from the first token
after BOS (`0`) or back from the last (`-1`), token-level readouts leave BOS out, and the mean
norms recorded for steering are taken over the same tokens. A text with no token after BOS (an
empty string) is an error.

Padding rule. Texts are right-padded (with the tokenizer's pad id, else EOS, else 0); no
attention mask is needed because a causal model's real positions never attend to later ones,
and pooling reads only real positions. The tokenizer's own `padding_side` is ignored. Texts are
sorted by length before batching (less padding) and results come back in input order, so the
batch size does not change them beyond float rounding.

Capture. Each batch runs one forward through `HookManager.collect` capturing every requested point
and stopping after the deepest (where exact, through the plain HuggingFace modules: `interp.fastpath`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.data import bos_id
from interp.errors import InterpError
from interp.forward import Positions
from interp.hooks import HookManager
from interp.models import model_device

Pool = str | int
POOLS = ("last", "mean", "max")


# ------------------------------------------------------------------------ identity
def text_hash(text: str) -> str:
    """A 16-hex-digit sha256 of one text, surrounding whitespace stripped."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def texts_fingerprint(texts: Sequence[str]) -> str:
    """A 16-hex-digit sha256 of an ordered list of texts (the manifest's `data_fingerprint`)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def as_hook_manager(model_or_hm: Any) -> HookManager:
    """A `HookManager` for a model (bridge or plain module), or the manager itself."""
    return model_or_hm if isinstance(model_or_hm, HookManager) else HookManager(model_or_hm)


# ---------------------------------------------------------------------- tokenising
def pad_id(tokenizer: Any) -> int:
    """The id that fills padded positions (masked or after the end, so never read): the tokenizer's
    pad token, else its EOS token, else 0."""
    ids = (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
    return int(next((i for i in ids if i is not None), 0))


def tokenize(model: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS + tokens of each text, right-padded.

    Returns `tokens` `(n, max_len)` (column 0 is BOS) and `lengths` `(n,)`, the number of real
    positions per text, BOS included (so at least 2).
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InterpError("texts must be a list of strings")
    if not texts:
        raise InterpError("no texts given: pass at least one text")
    tok = model.tokenizer
    bos = bos_id(tok)
    rows = [[bos, *ids] for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]
    empty = [i for i, r in enumerate(rows) if len(r) < 2]
    if empty:
        raise InterpError(f"text {empty[0]} ({texts[empty[0]]!r}) has no tokens: remove empty texts ({len(empty)} in all)")
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    tokens = torch.full((len(rows), int(lengths.max())), pad_id(tok), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens, lengths


# ------------------------------------------------------------------------- pooling
def check_pool(pool: Pool, lengths: torch.Tensor | None = None, start: int = 1) -> None:
    """Raise InterpError for an unknown pool, or an int position outside some text of `lengths` `(n,)`."""
    if isinstance(pool, (int, np.integer)) and not isinstance(pool, bool):
        if lengths is not None:
            index = lengths + int(pool) if pool < 0 else torch.full_like(lengths, start + int(pool))
            if bool((index < start).any()) or bool((index >= lengths).any()):
                raise InterpError(f"pool position {pool} falls outside some example (shortest has {int(lengths.min()) - start} tokens)")
    elif pool not in POOLS:
        raise InterpError(f"unknown pool {pool!r}: use last, mean, max or an integer position")


def pool_tokens(
    acts: torch.Tensor | np.ndarray,
    lengths: torch.Tensor | np.ndarray | None = None,
    pool: Pool = "last",
    start: int = 1,
) -> torch.Tensor:
    """Reduce token activations `(n, pos, d)` to one vector per example `(n, d)`.

    `lengths` `(n,)`: real positions per example in a right-padded batch (None: all). Positions
    before `start` are never read (`start=1` leaves BOS out). `pool`: `last` (last real position),
    `mean` / `max` over positions `start..length-1`, or an int: `start + p` for `p >= 0`,
    `length + p` for `p < 0`.
    """
    acts = torch.as_tensor(acts)
    if acts.ndim != 3:
        raise InterpError(f"token activations must be (n, pos, d); got shape {tuple(acts.shape)}")
    n, n_pos, _ = acts.shape
    lengths = torch.full((n,), n_pos, dtype=torch.long) if lengths is None else torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
    if lengths.numel() != n:
        raise InterpError(f"lengths has {lengths.numel()} entries but there are {n} examples")
    if bool((lengths <= start).any()) or bool((lengths > n_pos).any()):
        raise InterpError(f"lengths must lie in {start + 1}..{n_pos} (real positions after the first {start}); "
                          f"got {lengths.min().item()}..{lengths.max().item()}")
    check_pool(pool, lengths, start)
    rows = torch.arange(n)
    if isinstance(pool, (int, np.integer)) and not isinstance(pool, bool):
        return acts[rows, lengths + int(pool) if pool < 0 else torch.full((n,), start + int(pool), dtype=torch.long)]
    if pool == "last":
        return acts[rows, lengths - 1]
    positions = torch.arange(n_pos)
    mask = ((positions[None, :] < lengths[:, None]) & (positions[None, :] >= start)).unsqueeze(-1)
    if pool == "mean":
        return (acts * mask).sum(1) / mask.sum(1).to(acts.dtype)
    return acts.masked_fill(~mask, float("-inf")).amax(1)


# ------------------------------------------------------------------------- capture
def capture(
    hm: HookManager,
    tokens: torch.Tensor,
    names: Sequence[str],
    positions: Positions = None,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | None = torch.float32,
) -> dict[str, torch.Tensor]:
    """One forward of `tokens` `(batch, pos)` capturing `names`: `{name: (batch, pos, d)}`, float32 by default.

    `HookManager.collect`, which stops after the deepest point and takes the exact fast path itself.
    """
    return hm.collect(tokens, names, positions=positions, device=device, dtype=dtype)


def token_activations(
    hm: HookManager, tokens: torch.Tensor, names: Sequence[str], dtype: torch.dtype, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Activations of every non-BOS token of packed contexts `tokens (batch, ctx)` (BOS at column 0).

    Returns `{name: (batch*(ctx-1), d)}`, rows in (context, position) order.
    """
    acts = capture(hm, tokens, names, positions=slice(1, None), device=device, dtype=dtype)
    return {name: acts[name].reshape(-1, acts[name].shape[-1]) for name in names}


class Readout(dict):
    """`{point: (n, d)}` pooled activations, plus `mean_norms` `{point: float}`: the mean L2 norm of
    the token activations read (every non-BOS token of every text) and `n_tokens`, their count."""

    mean_norms: dict[str, float]
    n_tokens: int


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if batch_size < 1:
        raise InterpError(f"batch size must be at least 1, got {batch_size}")
    return [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]


def read(
    model_or_hm: Any,
    inputs: Sequence[str] | torch.Tensor,
    points: str | Sequence[str],
    pool: Pool = "last",
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "activations",
) -> Readout:
    """Pooled activations of each input at each point, `{point: (n, d)}` float32 on CPU.

    On a transformer bridge, `inputs` are texts, tokenised, padded and pooled by the rules in
    the module docstring (BOS never read). On a plain `nn.Module`, `inputs` is a tensor
    `(n, ...)` and each point's output is flattened to `(n, d)` (`pool` is not used).
    One forward per batch captures every point.
    """
    hm = as_hook_manager(model_or_hm)
    names = hm.resolve(points)
    check_pool(pool)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    norm_sum = {name: 0.0 for name in names}
    if hm.is_bridge:
        tokens, lengths = tokenize(hm.model, inputs)
        check_pool(pool, lengths)  # before any forward
        order = torch.argsort(lengths, stable=True)
        for idx in tqdm(_batches(order, batch_size), desc=desc, disable=not progress, leave=False):
            lens = lengths[idx]
            cap = capture(hm, tokens[idx, : int(lens.max())], names)
            real = (torch.arange(cap[names[0]].shape[1])[None, :] < lens[:, None])
            real[:, 0] = False
            for name in names:
                parts[name].append(pool_tokens(cap[name], lens, pool, start=1))
                norm_sum[name] += float(cap[name].norm(dim=-1)[real].sum())
        inverse = torch.argsort(order)
        out = Readout({name: torch.cat(chunks)[inverse] for name, chunks in parts.items()})
        out.n_tokens = int((lengths - 1).sum())
    else:
        inputs = tensor_inputs(inputs)
        for idx in tqdm(_batches(torch.arange(len(inputs)), batch_size), desc=desc, disable=not progress, leave=False):
            cap = hm.collect(inputs[idx].to(model_device(hm.model)), names, dtype=torch.float32)
            for name in names:
                flat = cap[name].reshape(len(idx), -1)
                parts[name].append(flat)
                norm_sum[name] += float(flat.norm(dim=-1).sum())
        out = Readout({name: torch.cat(chunks) for name, chunks in parts.items()})
        out.n_tokens = len(inputs)
    out.mean_norms = {name: norm_sum[name] / max(out.n_tokens, 1) for name in names}
    return out


def read_tokens(
    model_or_hm: Any,
    texts: Sequence[str],
    points: str | Sequence[str],
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Token-level readout of texts (BOS left out), for token-level probes.

    Returns `({point: (n_tokens, d)}, text_index (n_tokens,), token_ids (n_tokens,))`: rows in
    text order, then position order; `text_index[r]` is the text row r came from and
    `token_ids[r]` its token (use them as the word types of a control task).
    """
    hm = as_hook_manager(model_or_hm)
    names = hm.resolve(points)
    tokens, lengths = tokenize(hm.model, texts)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for idx in tqdm(_batches(torch.arange(len(texts)), batch_size), desc="token activations", disable=not progress, leave=False):
        lens = lengths[idx]
        cap = capture(hm, tokens[idx, : int(lens.max())], names)
        for name in names:
            parts[name].extend(cap[name][k, 1 : int(lens[k])] for k in range(len(idx)))
    text_index = torch.repeat_interleave(torch.arange(len(texts)), lengths - 1)
    token_ids = torch.cat([tokens[i, 1 : int(lengths[i])] for i in range(len(texts))])
    return {name: torch.cat(chunks) for name, chunks in parts.items()}, text_index, token_ids


def tensor_inputs(inputs: Any) -> torch.Tensor:
    """Inputs of a plain module as a tensor `(n, ...)`; texts are refused (no tokenizer)."""
    if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
        raise InterpError("texts need a transformer with a tokenizer; for a plain torch module pass a tensor (n, ...)")
    return torch.as_tensor(inputs)

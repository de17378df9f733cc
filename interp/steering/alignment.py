"""Paired activations of two models on the same texts, aligned by character offsets.

Two models with different tokenizers cut the same text at different places, so their token
positions do not correspond. A position does correspond where both tokenizations end a token at
the same character: there each model has read exactly the same prefix of the text (a causal model's
activation at a token summarises the text up to that token's end). `aligned_activations` keeps
those positions, typically word ends, and returns one row per shared boundary from each model.

Token offsets come from the tokenizers' offset mappings (`return_offsets_mapping=True`, fast
tokenizers only); texts are tokenised without special tokens and the model's BOS is put in front,
as `interp.readout` does, and the BOS position is never paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from interp import readout
from interp.data import bos_id
from interp.errors import InterpError
from interp.hooks import HookManager


@dataclass
class AlignedActivations:
    """`source (n, d_source)` and `target (n, d_target)`: row r of each is the same text prefix;
    `text_index (n,)` the text each row came from."""

    source: torch.Tensor
    target: torch.Tensor
    text_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.source.shape[0])


def token_ends(tokenizer: Any, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each text (no special tokens) and the character offset where each token ends."""
    if not getattr(tokenizer, "is_fast", False):
        raise InterpError("aligning two models needs fast tokenizers (offset mappings): load the models with their tokenizer.json")
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [[int(end) for _, end in offsets] for offsets in enc["offset_mapping"]]


def shared_boundaries(ends_a: Sequence[int], ends_b: Sequence[int]) -> list[tuple[int, int]]:
    """Index pairs `(i, j)` where token i of A and token j of B end at the same character.

    Where several tokens of one side end at the same character (a zero-width token), the last
    one is used: it is the one that has read the whole prefix.
    """
    last_b: dict[int, int] = {}
    for j, end in enumerate(ends_b):
        last_b[end] = j
    last_a: dict[int, int] = {}
    for i, end in enumerate(ends_a):
        last_a[end] = i
    return [(i, last_b[end]) for end, i in sorted(last_a.items()) if end > 0 and end in last_b]


def _rows(hm: HookManager, ids: list[list[int]], point: str, picks: list[list[int]], batch_texts: int) -> torch.Tensor:
    """Activations at `point` of each text's positions `picks[t]` (token indices, BOS not counted)."""
    bos = bos_id(hm.model.tokenizer)
    out: list[torch.Tensor] = []
    for lo in range(0, len(ids), batch_texts):
        chunk = ids[lo : lo + batch_texts]
        width = 1 + max(len(r) for r in chunk)
        tokens = torch.zeros((len(chunk), width), dtype=torch.long)  # right-padded; padding is never read
        for k, row in enumerate(chunk):
            tokens[k, : 1 + len(row)] = torch.tensor([bos, *row])
        acts = readout.capture(hm, tokens, [point])[point]
        for k in range(len(chunk)):
            out.append(acts[k, [1 + i for i in picks[lo + k]]])
    return torch.cat(out) if out else torch.empty(0)


def aligned_activations(
    source_model: Any,
    target_model: Any,
    texts: Sequence[str],
    source_point: str,
    target_point: str,
    batch_texts: int = 8,
    progress: bool = False,
) -> AlignedActivations:
    """Activations of both models at their points on `texts`, one row per shared token boundary.

    Returns source rows `(n, d_source)` and target rows `(n, d_target)`, float32 on CPU.
    """
    if isinstance(texts, str) or not texts:
        raise InterpError("give at least one text to align the two models on")
    hm_a, hm_b = HookManager(source_model), HookManager(target_model)
    point_a, point_b = hm_a.resolve(source_point), hm_b.resolve(target_point)
    if len(point_a) != 1 or len(point_b) != 1:
        raise InterpError(f"a map joins one point of each model; got {point_a} and {point_b}")
    ids_a, ends_a = token_ends(source_model.tokenizer, texts)
    ids_b, ends_b = token_ends(target_model.tokenizer, texts)
    pairs = [shared_boundaries(a, b) for a, b in zip(ends_a, ends_b)]
    keep = [t for t, p in enumerate(pairs) if p]
    if not keep:
        raise InterpError("the two tokenizers share no token boundary on these texts: give longer texts of ordinary prose")
    parts_a, parts_b = [], []
    steps = range(0, len(keep), 64)
    for lo in tqdm(steps, desc="aligned activations", disable=not progress, leave=False):
        part = keep[lo : lo + 64]
        parts_a.append(_rows(hm_a, [ids_a[t] for t in part], point_a[0], [[i for i, _ in pairs[t]] for t in part], batch_texts))
        parts_b.append(_rows(hm_b, [ids_b[t] for t in part], point_b[0], [[j for _, j in pairs[t]] for t in part], batch_texts))
    text_index = torch.cat([torch.full((len(pairs[t]),), t, dtype=torch.long) for t in keep])
    return AlignedActivations(torch.cat(parts_a).float(), torch.cat(parts_b).float(), text_index)

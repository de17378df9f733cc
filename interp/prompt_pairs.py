"""Prompt pairs for patching: a clean and a corrupted prompt of one token length, and two answer tokens.

The metric is the logit difference at the last position, `LD = logit(answer) - logit(wrong)`.
Prompts are tokenised as everywhere in the project: the model's BOS id, then the text's tokens
(`interp.data.bos_id`); pairs are not padded, so every prompt of a run must have the same length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from interp.errors import InterpError

Metric = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class PromptPair:
    """A clean prompt whose next token should be `answer`, and a corrupted one of the same length."""

    clean: str
    corrupted: str
    answer: str
    wrong: str


PAIR_FIELDS = ("clean", "corrupted", "answer", "wrong")


@dataclass
class PairTokens:
    """Token ids of n pairs: `clean`, `corrupted` `(n, pos)` (BOS first), `answer`, `wrong` `(n,)`."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor
    clean_tokens: list[str] = field(default_factory=list)
    corrupted_tokens: list[str] = field(default_factory=list)


def read_pairs(path: str | Path) -> list[PromptPair]:
    """Prompt pairs from a JSONL file: one `{"clean", "corrupted", "answer", "wrong"}` object per line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InterpError(f"pairs file {path} does not exist: give a .jsonl file with one "
                          '{"clean": ..., "corrupted": ..., "answer": ..., "wrong": ...} per line')
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InterpError(f"{path} line {n} is not JSON ({exc.msg}): write one JSON object per line") from None
        missing = [k for k in PAIR_FIELDS if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise InterpError(f"{path} line {n} lacks {', '.join(missing)}: each line needs the strings {', '.join(PAIR_FIELDS)}")
        pairs.append(PromptPair(*(row[k] for k in PAIR_FIELDS)))
    if not pairs:
        raise InterpError(f"pairs file {path} is empty: give at least one pair")
    return pairs


def _single_token(tok: Any, text: str, what: str, pair: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tok.convert_ids_to_tokens(ids)
        raise InterpError(f"{pair}{what} {text!r} is {len(ids)} tokens {pieces}: give one token (often with a leading space, e.g. ' Paris')")
    return int(ids[0])


def tokenize_pairs(model: Any, pairs: Sequence[PromptPair]) -> PairTokens:
    """Tokenize prompt pairs (BOS + tokens); every prompt must have the same number of tokens."""
    from interp.data import bos_id

    if not pairs:
        raise InterpError("no prompt pairs given: give --clean/--corrupted/--answer/--wrong or a --pairs file")
    tok = model.tokenizer
    bos = bos_id(tok)
    clean, corrupted, answer, wrong = [], [], [], []
    for i, pair in enumerate(pairs):
        where = f"pair {i + 1}: " if len(pairs) > 1 else ""
        rows = []
        for name, text in (("clean", pair.clean), ("corrupted", pair.corrupted)):
            if not text.strip():
                raise InterpError(f"{where}the {name} prompt is empty: give a prompt with at least one token")
            rows.append([bos, *tok(text, add_special_tokens=False)["input_ids"]])
        if len(rows[0]) != len(rows[1]):
            raise InterpError(f"{where}the clean prompt has {len(rows[0])} tokens and the corrupted prompt {len(rows[1])} "
                              "(BOS included): patching pairs positions, so reword one to the same length")
        if clean and len(rows[0]) != len(clean[0]):
            raise InterpError(f"{where}its prompts have {len(rows[0])} tokens but pair 1's have {len(clean[0])}: "
                              "every pair in a file must have the same length")
        a = _single_token(tok, pair.answer, "the answer", where)
        w = _single_token(tok, pair.wrong, "the wrong answer", where)
        if a == w:
            raise InterpError(f"{where}the answer and the wrong answer are the same token {pair.answer!r}: give two different tokens")
        clean.append(rows[0])
        corrupted.append(rows[1])
        answer.append(a)
        wrong.append(w)
    return PairTokens(torch.tensor(clean), torch.tensor(corrupted), torch.tensor(answer), torch.tensor(wrong),
                      [tok.decode([t]) for t in clean[0]], [tok.decode([t]) for t in corrupted[0]])


def logit_diff_metric(answer: torch.Tensor, wrong: torch.Tensor) -> Metric:
    """`logits (R, pos, vocab) -> (R,)`: logit(answer) - logit(wrong) at the last position.

    `answer`, `wrong` `(1,)` (every row the same pair) or `(R,)` (one per row).
    """
    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        a, w = answer.to(last.device), wrong.to(last.device)
        if a.numel() == 1:
            return last[:, a[0]] - last[:, w[0]]
        rows = torch.arange(last.shape[0], device=last.device)
        return last[rows, a] - last[rows, w]

    return metric

"""Texts for building and evaluating steering vectors: the shipped contrast pairs and prompts, and
readers for the user's own files."""

from __future__ import annotations

import json
from pathlib import Path

from interp.errors import InterpError

DATA_DIR = Path(__file__).resolve().parent.parent / "datasets"

# Neutral openings for evaluation; none of them appears in the contrast pairs.
BUILTIN_PROMPTS = [
    "I went to the cinema last night and the film was",
    "Yesterday we tried the new restaurant downtown. The meal was",
    "My weekend at the lake was",
    "The new phone I bought last week is",
    "Today at work, my boss told me that",
    "When I opened the package, I felt",
    "The review of the hotel said that the rooms were",
    "I think the book I just finished is",
    "Our trip to the city turned out to be",
    "The first day at my new school was",
    "After the concert, everyone said it was",
    "My neighbour's garden looks",
]


def load_builtin_pairs() -> tuple[list[str], list[str]]:
    """The shipped contrast pairs `interp/datasets/sentiment_pairs.jsonl`: (positive, negative) lists."""
    pos, neg = [], []
    for line in (DATA_DIR / "sentiment_pairs.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            pos.append(rec["positive"])
            neg.append(rec["negative"])
    return pos, neg


def read_texts(source: str, text_field: str = "text") -> list[str]:
    """Texts from a `.txt` file (one per line) or a `.jsonl` file (field `text_field`); never empty."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise InterpError(f"text file {source} does not exist: give a .txt (one text per line) or .jsonl file")
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        texts = []
        for i, ln in enumerate(lines, 1):
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                raise InterpError(f"{source} line {i} is not JSON: write one JSON object per line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                raise InterpError(f"{source} line {i} has no string field {text_field!r}: add it or pass the field name")
            texts.append(rec[text_field])
    else:
        texts = [ln.strip() for ln in lines]
    if not texts:
        raise InterpError(f"{source} holds no texts: write at least one non-empty line")
    return texts


def load_labelled_texts(source: str | Path) -> tuple[list[str], list[int]]:
    """(texts, 0/1 labels) from a labelled file (`.jsonl/.csv/.tsv/.parquet` with text, label) or `builtin:NAME`."""
    from interp.data import load_labelled

    texts, labels = load_labelled(str(source))
    try:
        labels = [int(label) for label in labels]
    except (TypeError, ValueError):
        raise InterpError(f"labels in {source} must be 0 or 1 (1 = positive)") from None
    if set(labels) != {0, 1}:
        raise InterpError(f"{source} needs both labels 0 and 1 (and no others) to train a sentiment probe")
    return [str(t) for t in texts], labels

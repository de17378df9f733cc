"""Small input -> output tasks (antonyms, translation, country -> capital, ...) and their prompts.

A task file is JSON lines `{"input": str, "output": str, "split": "train" | "test"}`; the shipped
ones live in `interp/datasets/tasks/` (`builtin:NAME` or just `NAME`). Function vectors and linear
relational concepts read them here, so both use the same items, prompts and answer tokens.

Prompts follow Todd et al. (2024): each demonstration is `Q: {input}\\nA: {output}\\n\\n` and the
query ends with `Q: {input}\\nA:`; the answer is read as the first token of `" " + output` (the
model's next token after the prompt), so accuracy is top-1 agreement on that token.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from interp.errors import InterpError

TASK_DIR = Path(__file__).resolve().parent / "datasets" / "tasks"
SPLITS = ("train", "test")
DEMO = "Q: {input}\nA: {output}\n\n"
QUERY = "Q: {input}\nA:"


@dataclass
class Task:
    """Items of one task: parallel lists `inputs`, `outputs`, `splits` (each `train` or `test`)."""

    name: str
    inputs: list[str]
    outputs: list[str]
    splits: list[str]

    def pairs(self, split: str | None = None) -> list[tuple[str, str]]:
        """(input, output) pairs of one split (None: all)."""
        return [(x, y) for x, y, s in zip(self.inputs, self.outputs, self.splits) if split is None or s == split]

    @property
    def train(self) -> list[tuple[str, str]]:
        return self.pairs("train")

    @property
    def test(self) -> list[tuple[str, str]]:
        return self.pairs("test")


def builtin_tasks() -> list[str]:
    """Names of the shipped tasks."""
    return sorted(p.stem for p in TASK_DIR.glob("*.jsonl"))


def load_task(spec: str) -> Task:
    """A task from `builtin:NAME`, a shipped name, or a `.jsonl` file of input/output/split records."""
    name = spec.split(":", 1)[1] if spec.startswith("builtin:") else spec
    path = TASK_DIR / f"{name}.jsonl"
    if not path.is_file():
        path = Path(spec).expanduser()
        if not path.is_file() or path.suffix != ".jsonl":
            raise InterpError(f"unknown task {spec!r}: use one of {', '.join(builtin_tasks())} or a .jsonl file with "
                              "input, output and split (train|test) on each line")
        name = path.stem
    inputs, outputs, splits = [], [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise InterpError(f"{path} line {i} is not JSON: write one object per line") from None
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) and rec[k].strip() for k in ("input", "output")):
            raise InterpError(f"{path} line {i} needs non-empty string fields 'input' and 'output'")
        split = rec.get("split", "train")
        if split not in SPLITS:
            raise InterpError(f"{path} line {i} has split {split!r}: use train or test")
        inputs.append(rec["input"].strip())
        outputs.append(rec["output"].strip())
        splits.append(split)
    task = Task(name, inputs, outputs, splits)
    if len(task.train) < 2 or not task.test:
        raise InterpError(f"task {spec!r} needs at least 2 train and 1 test items (has {len(task.train)} and {len(task.test)})")
    return task


def icl_prompt(demos: Sequence[tuple[str, str]], query: str) -> str:
    """Demonstrations then the query: `Q: x1\\nA: y1\\n\\n ... Q: query\\nA:` (no demos: zero-shot)."""
    return "".join(DEMO.format(input=x, output=y) for x, y in demos) + QUERY.format(input=query)


def answer_token(tokenizer, output: str) -> int:
    """The token id the model should predict first: the first token of `" " + output`."""
    ids = tokenizer(" " + output, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InterpError(f"answer {output!r} has no tokens")
    return int(ids[0])


@dataclass
class PromptSet:
    """Prompts with their answers: `texts`, `answers` (token ids `(n,)`), and how they were made."""

    texts: list[str]
    answers: torch.Tensor
    queries: list[str]
    outputs: list[str]


def make_prompts(
    tokenizer,
    queries: Sequence[tuple[str, str]],
    demo_pool: Sequence[tuple[str, str]],
    n_demos: int,
    rng: random.Random,
    shuffle_labels: bool = False,
) -> PromptSet:
    """One prompt per query: `n_demos` demonstrations drawn from `demo_pool` (never the query itself),
    then the query. `shuffle_labels` permutes the demonstrations' outputs among themselves (the
    corrupted prompts of Todd et al.: same inputs and outputs, broken mapping)."""
    texts, answers = [], []
    for x, y in queries:
        pool = [p for p in demo_pool if p[0] != x]
        if n_demos > len(pool):
            raise InterpError(f"{n_demos} demonstrations asked for but only {len(pool)} training items are available")
        demos = rng.sample(pool, n_demos)
        if shuffle_labels and n_demos > 1:
            outs = [d[1] for d in demos]
            perm = _derangement(len(outs), rng)
            demos = [(d[0], outs[j]) for d, j in zip(demos, perm)]
        texts.append(icl_prompt(demos, x))
        answers.append(answer_token(tokenizer, y))
    return PromptSet(texts, torch.tensor(answers, dtype=torch.long), [q[0] for q in queries], [q[1] for q in queries])


def _derangement(n: int, rng: random.Random) -> list[int]:
    """A random permutation of range(n) with no fixed point (n >= 2)."""
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm

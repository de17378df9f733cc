"""Semantic entropy (Farquhar et al., 2024) and semantic-entropy probes (Kossen et al., 2024).

Semantic entropy. For each question, `N` answers are sampled (temperature > 0, seeded, several
questions in one batch) and grouped into meaning clusters by an equivalence relation: each answer
joins the first cluster whose first member it is equivalent to, else opens a new one. This module uses
the DISCRETE variant: cluster probabilities are cluster frequencies, `p_c = |c| / N`, and

    SE = - sum_c p_c log p_c        (natural log; 0 when every answer means the same,
                                     log N when no two do)

so it needs no token probabilities. The default equivalence is normalised exact match of the
answers' first sentence (lower-case, punctuation, the articles a/an/the and extra whitespace
removed); pass `equivalent(a, b) -> bool` for anything else (e.g. an entailment model both ways,
as Farquhar et al. do). A non-transitive relation makes the clusters depend on answer order.

Probes. A semantic-entropy probe reads SE off the hidden state of the question alone, before any
answer is generated: the last prompt token at each point (`interp.readout`, `pool="last"`).
As Kossen et al. do, SE is binarised into high and low with the threshold that best splits it,
the one minimising the summed squared deviation from each side's mean (`threshold="best-split"`;
`"median"` or a number also work), and a logistic `LinearProbe` is trained per point
(`task="regression"` fits ridge on SE itself). Scores are out-of-fold over stratified k-fold
cross-validation, so every question is scored by a probe that never saw it: AUROC and accuracy
(R² and Pearson r for regression), next to the same probe trained on many permutations of the
targets (their mean, 95th percentile, and a permutation-test p-value).
"""

from __future__ import annotations

import json
import os
import re
import string
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold
from tqdm.auto import tqdm

from interp import readout
from interp.atomic import write_json
from interp.data import builtin_dataset_path
from interp.errors import InterpError
from interp.manifest import make_manifest
from interp.models import model_name
from interp.readout import as_hook_manager
from interp.reports import html_table, write_report
from interp.steering import generate_batch_ids
from probes.linear import LinearProbe

Equivalence = Callable[[str, str], bool]
THRESHOLDS = ("best-split", "median")
PROMPT = ("Answer each question in a few words.\nQ: What is the capital of Portugal?\nA: Lisbon\n"
          "Q: Who wrote Pride and Prejudice?\nA: Jane Austen\nQ: {question}\nA:")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


# ------------------------------------------------------------------ answers and clusters
def normalize_answer(text: str) -> str:
    """Lower-case; drop punctuation, the articles a/an/the and extra whitespace ("The Paris." -> "paris")."""
    text = "".join(" " if unicodedata.category(ch).startswith("P") or ch in string.punctuation else ch for ch in text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(a: str, b: str) -> bool:
    """The default equivalence: equal after `normalize_answer`."""
    return normalize_answer(a) == normalize_answer(b)


def first_sentence(generation: str) -> str:
    """The answer in a generation: its first non-empty line, up to the end of its first sentence."""
    line = next((ln.strip() for ln in generation.splitlines() if ln.strip()), "")
    return _SENTENCE_END.split(line, maxsplit=1)[0].strip()


def cluster_answers(answers: Sequence[str], equivalent: Equivalence | None = None) -> list[int]:
    """Cluster id of each answer `(N,)`: it joins the first cluster whose first member it is equivalent to."""
    same = equivalent or exact_match
    firsts: list[str] = []
    ids = []
    for answer in answers:
        cid = next((c for c, rep in enumerate(firsts) if same(rep, answer)), None)
        if cid is None:
            cid = len(firsts)
            firsts.append(answer)
        ids.append(cid)
    return ids


def entropy_of_clusters(cluster_ids: Sequence[int]) -> float:
    """Discrete semantic entropy of cluster assignments: `-sum_c p_c log p_c`, `p_c` the frequencies."""
    if len(cluster_ids) == 0:
        raise InterpError("no answers to measure: sample at least one answer per question")
    _, counts = np.unique(np.asarray(cluster_ids), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def semantic_entropy(answers: Sequence[str], equivalent: Equivalence | None = None) -> float:
    """Discrete semantic entropy (nats) of a list of answers under `equivalent` (default `exact_match`)."""
    return entropy_of_clusters(cluster_answers(answers, equivalent))


# ------------------------------------------------------------------------- sampling
def load_questions(path: str | os.PathLike = "builtin") -> list[dict[str, Any]]:
    """Questions from a `.jsonl` file with a `question` field per line (`"builtin"`: the shipped set)."""
    path = builtin_dataset_path("questions.jsonl") if str(path) == "builtin" else Path(path).expanduser()
    if not path.is_file():
        raise InterpError(f"questions file {path} does not exist: give a .jsonl file with a 'question' field per line, or builtin")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InterpError(f"{path} is not JSON lines ({type(exc).__name__}): write one JSON object per line") from None
    if not rows or any(not isinstance(r, dict) or "question" not in r for r in rows):
        raise InterpError(f"{path}: every line must be a JSON object with a 'question' field")
    return rows


def sample_answers(
    model: Any,
    prompts: Sequence[str],
    n_samples: int = 5,
    max_new_tokens: int = 12,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    batch_size: int = 32,
) -> list[list[str]]:
    """`n_samples` generations per prompt, as text (`interp.steering.generate_batch_ids`).

    Prompts are sampled together, as many whole prompts as fit in `batch_size` rows (at least one);
    the group starting at prompt `q` draws from seed `seed + q`, so every draw is reproducible for
    the same prompts, settings and batch size, and no two groups share their random numbers.
    """
    if temperature <= 0:
        raise InterpError(f"temperature {temperature}: semantic entropy needs sampling, use a temperature above 0 (e.g. 1.0)")
    if n_samples < 2:
        raise InterpError(f"n_samples={n_samples}: entropy needs at least 2 answers per question (5 to 10 is usual)")
    tok = model.tokenizer
    per_group = max(1, batch_size // n_samples)
    out = []
    bar = tqdm(total=len(prompts), desc="sampling answers", disable=not progress, leave=False)
    for q in range(0, len(prompts), per_group):
        group = prompts[q : q + per_group]
        ids = generate_batch_ids(model, [p for p in group for _ in range(n_samples)], max_new_tokens=max_new_tokens,
                                 temperature=temperature, seed=seed + q)
        out.extend([tok.decode(i.tolist(), skip_special_tokens=True) for i in ids[j * n_samples : (j + 1) * n_samples]]
                   for j in range(len(group)))
        bar.update(len(group))
    bar.close()
    return out


# --------------------------------------------------------------------------- probing
def binarize(entropies: Sequence[float], threshold: str | float = "best-split") -> tuple[np.ndarray, float]:
    """High (1) / low (0) labels `(n,)` for SE values above / at or below the threshold, and the threshold.

    `best-split`: among cuts between distinct values, the one minimising the summed squared
    deviation of each side from its mean (Kossen et al.); `median`; or a number.
    """
    h = np.asarray(entropies, dtype=np.float64)
    if isinstance(threshold, str):
        values = np.unique(h)
        if len(values) < 2:
            raise InterpError(f"every question has the same semantic entropy ({values[0]:.3g}): nothing to probe; "
                              "sample more answers, raise the temperature or use more varied questions")
        if threshold == "median":
            cut = float(np.median(h))
            cut = cut if (h > cut).any() else float(values[-2])
        elif threshold == "best-split":
            cuts = (values[:-1] + values[1:]) / 2
            sse = [((h[h <= c] - h[h <= c].mean()) ** 2).sum() + ((h[h > c] - h[h > c].mean()) ** 2).sum() for c in cuts]
            cut = float(cuts[int(np.argmin(sse))])
        else:
            raise InterpError(f"unknown threshold {threshold!r}: use best-split, median or a number")
    else:
        cut = float(threshold)
    return (h > cut).astype(int), cut


def _out_of_fold(X: np.ndarray, y: np.ndarray, task: str, n_folds: int, seed: int, C: float, alpha: float) -> np.ndarray:
    """Out-of-fold decision scores (classification) or predictions (regression), `(n,)`."""
    if task == "classification":
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(X, y)
    else:
        folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(X)
    out = np.zeros(len(y))
    for train, test in folds:
        probe = LinearProbe(task=task, C=C, alpha=alpha, random_state=seed).fit(X[train], y[train])
        out[test] = probe.decision_function(X[test]) if task == "classification" else probe.predict(X[test])
    return out


def _metrics(y: np.ndarray, scores: np.ndarray, task: str) -> dict[str, float]:
    if task == "classification":
        return {"auroc": float(roc_auc_score(y, scores)), "accuracy": float(((scores > 0).astype(int) == y).mean())}
    r = np.corrcoef(y, scores)[0, 1] if scores.std() > 0 else 0.0
    return {"r2": float(r2_score(y, scores)), "pearson": float(r)}


def probe_entropy(
    features: Mapping[str, torch.Tensor | np.ndarray],
    entropies: Sequence[float],
    task: str = "classification",
    threshold: str | float = "best-split",
    n_folds: int = 5,
    n_shuffles: int = 20,
    seed: int = 0,
    C: float = 1.0,
    alpha: float = 1.0,
) -> dict[str, Any]:
    """Cross-validated semantic-entropy probes on `features` `{point: (n, d)}` for `entropies` `(n,)`.

    Returns `{"task", "threshold", "labels" (n,) or None, "n_high", "n_low", "per_point": {point:
    metrics}}`. Classification metrics are `auroc` and `accuracy` (out-of-fold, threshold 0 on the
    decision score), regression metrics `r2` and `pearson`. The null: the same cross-validated probe
    on targets permuted `n_shuffles` times (seeded); `shuffled_<metric>` is the mean over
    permutations, `shuffled_<metric>_p95` their 95th percentile, and `p_value` the permutation test
    of the main metric, `(1 + #{shuffled >= real}) / (1 + n_shuffles)`. With a few dozen questions
    one permutation's score swings by +-0.2, hence many.
    """
    if task not in ("classification", "regression"):
        raise InterpError(f"unknown task {task!r}: use classification or regression")
    if n_shuffles < 1:
        raise InterpError(f"n_shuffles={n_shuffles}: the chance level needs at least one permutation (20+ is better)")
    h = np.asarray(entropies, dtype=np.float64)
    if not features:
        raise InterpError("no hook points to probe")
    if any(len(v) != len(h) for v in features.values()):
        raise InterpError(f"got {len(h)} entropies but features of lengths {sorted({len(v) for v in features.values()})}")
    if task == "classification":
        y, cut = binarize(h, threshold)
        smallest = int(min(y.sum(), len(y) - y.sum()))
        if smallest < 2:
            raise InterpError(f"the {threshold} threshold {cut:.3g} leaves {smallest} question(s) on one side: "
                              "give more questions, another threshold, or the regression task")
        folds = min(n_folds, smallest)
    else:
        y, cut, folds = h, None, min(n_folds, len(h) // 2)
    if folds < 2:
        raise InterpError(f"{len(h)} questions are too few for cross-validation: give at least 4")
    rng = np.random.default_rng(seed)
    permuted = [rng.permutation(y) for _ in range(n_shuffles)]
    main = "auroc" if task == "classification" else "r2"
    per_point = {}
    for point, feats in features.items():
        X = np.asarray(torch.as_tensor(feats).float().numpy(), dtype=np.float64)
        real = _metrics(y, _out_of_fold(X, y, task, folds, seed, C, alpha), task)
        null = [_metrics(yp, _out_of_fold(X, yp, task, folds, seed, C, alpha), task) for yp in permuted]
        stats = {}
        for key in real:
            values = np.array([m[key] for m in null])
            stats[f"shuffled_{key}"] = float(values.mean())
            stats[f"shuffled_{key}_p95"] = float(np.percentile(values, 95))
        exceed = sum(m[main] >= real[main] for m in null)
        per_point[point] = {**real, **stats, "p_value": (1 + exceed) / (1 + n_shuffles)}
    return {
        "task": task, "threshold": cut, "threshold_rule": threshold if task == "classification" else None, "n_folds": folds,
        "n_shuffles": n_shuffles, "labels": y.tolist() if task == "classification" else None,
        "n_high": int(y.sum()) if task == "classification" else None,
        "n_low": int(len(y) - y.sum()) if task == "classification" else None,
        "per_point": per_point,
    }


def semantic_entropy_probe(
    model: Any,
    questions: Sequence[str] | str = "builtin",
    points: str | Sequence[str] = "resid_post:all",
    n_samples: int = 5,
    max_new_tokens: int = 12,
    temperature: float = 0.5,
    equivalent: Equivalence | None = None,
    prompt_template: str = PROMPT,
    task: str = "classification",
    threshold: str | float = "best-split",
    n_folds: int = 5,
    n_shuffles: int = 20,
    seed: int = 0,
    C: float = 1.0,
    batch_size: int = 16,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Sample answers, measure semantic entropy per question, and probe it from the question's hidden states.

    `questions`: texts (or rows `{"question": ..., ...}` as `load_questions` returns), or `"builtin"` (`interp/datasets/questions.jsonl`) or a `.jsonl` path.
    Each is put into `prompt_template` (`{question}`); answers are the first sentence of each of
    `n_samples` generations of `max_new_tokens` tokens. The probe reads the prompt's last token
    at `points` (`interp.readout.read`). Returns a JSON-ready dict: the probe results
    (`probe_entropy`), `best_point`, and per question its answers, cluster ids and entropy.
    With `out_dir`, writes `results.json` and `report.html` there (`write_semantic_entropy`).
    """
    rows = (load_questions(questions) if isinstance(questions, (str, os.PathLike))
            else [dict(q) if isinstance(q, Mapping) else {"question": q} for q in questions])
    if len(rows) < 4:
        raise InterpError(f"{len(rows)} questions are too few to train and test a probe: give at least 4 (40+ is better)")
    hm = as_hook_manager(model)
    names = hm.resolve(points)
    prompts = [prompt_template.format(question=r["question"]) for r in rows]
    generations = sample_answers(model, prompts, n_samples, max_new_tokens, temperature, seed, progress)
    answers = [[first_sentence(g) for g in gens] for gens in generations]
    clusters = [cluster_answers(a, equivalent) for a in answers]
    entropies = [entropy_of_clusters(c) for c in clusters]
    feats = readout.read(hm, prompts, names, pool="last", batch_size=batch_size, progress=progress, desc="question states")
    probe = probe_entropy(feats, entropies, task=task, threshold=threshold, n_folds=n_folds, n_shuffles=n_shuffles,
                          seed=seed, C=C)
    key = "auroc" if task == "classification" else "r2"
    result = {
        "method": "semantic-entropy probes (Kossen et al., 2024) on discrete semantic entropy (Farquhar et al., 2024)",
        "model": model_name(hm.model), "points": names, "n_questions": len(rows), "n_samples": n_samples,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "prompt_template": prompt_template,
        "equivalence": "normalised exact match" if equivalent is None else getattr(equivalent, "__name__", "callable"),
        "entropy": "discrete: -sum_c p_c ln p_c, p_c = cluster frequency", "hidden_state": "last prompt token",
        **probe,
        "best_point": max(names, key=lambda p: probe["per_point"][p][key]),
        "questions": [{**r, "generations": g, "answers": a, "clusters": c, "entropy": h}
                      for r, g, a, c, h in zip(rows, generations, answers, clusters, entropies)],
        "manifest": make_manifest(model_name(hm.model), {p: int(feats[p].shape[1]) for p in names}, readout.texts_fingerprint(prompts)),
    }
    for q, label in zip(result["questions"], probe["labels"] or [None] * len(rows)):
        q["high_entropy"] = label
    if out_dir is not None:
        write_semantic_entropy(result, out_dir)
    return result


def write_semantic_entropy(result: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write `results.json` and `report.html` (probe score per point with its shuffled-target baseline)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", dict(result))
    key, name = ("auroc", "AUROC") if result["task"] == "classification" else ("r2", "R²")
    pts = result["points"]
    fig = go.Figure([go.Scatter(x=pts, y=[result["per_point"][p][key] for p in pts], mode="lines+markers", name="probe"),
                     go.Scatter(x=pts, y=[result["per_point"][p][f"shuffled_{key}"] for p in pts], mode="lines+markers",
                                name="shuffled targets (mean)", line=dict(dash="dot", color="gray")),
                     go.Scatter(x=pts, y=[result["per_point"][p][f"shuffled_{key}_p95"] for p in pts], mode="lines",
                                name="shuffled targets (95th percentile)", line=dict(dash="dash", color="lightgray"))])
    fig.update_layout(title=f"Semantic-entropy probe, out-of-fold {name} per point", xaxis_title="hook point", yaxis_title=name)
    rows = [{"question": q["question"], "entropy": q["entropy"], "high": q.get("high_entropy"),
             "answers": " | ".join(q["answers"])} for q in result["questions"]]
    split = (f" Binarised at {result['threshold']:.3g} ({result['threshold_rule']}): {result['n_high']} high, {result['n_low']} low."
             if result["task"] == "classification" else "")
    intro = (f"{result['n_questions']} questions, {result['n_samples']} answers each (temperature {result['temperature']}, "
             f"{result['max_new_tokens']} new tokens), clustered by {result['equivalence']}; entropy {result['entropy']}.{split} "
             f"Probes read the {result['hidden_state']}, scored out-of-fold over {result['n_folds']} folds, "
             f"against the same probe on {result['n_shuffles']} permutations of the targets.")
    write_report(out / "report.html", "Semantic-entropy probe", figures=[fig], sections=[html_table(rows)], intro=intro)
    return out

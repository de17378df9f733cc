"""Measuring what a steering vector does: scorers that are not the vector, sweeps, reports.

Scorers map a list of texts to one number each: `LexiconScorer` (mean word score from
`interp/datasets/sentiment_lexicon.txt`) and `ProbeScorer` (a scikit-learn logistic regression
on the unsteered model's activations, trained on labelled sentences the vector was not built
from). Fluency is the mean per-token loss of a continuation under the unsteered model.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Callable, Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.models import model_device
from interp.steering import SteeringVector, generate_ids, pooled_activations, text_hash

DATA_DIR = Path(__file__).parent / "datasets"
Scorer = Callable[[Sequence[str]], list[float]]

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


# ------------------------------------------------------------------------- data
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


# ---------------------------------------------------------------------- scorers
class LexiconScorer:
    """Mean lexicon score of the words of a text that are in the lexicon (0 when none are).

    The shipped lexicon scores words from -4 (very negative) to +4 (very positive).
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else DATA_DIR / "sentiment_lexicon.txt"
        self.scores: dict[str, float] = {}
        for ln in self.path.read_text().splitlines():
            if ln.strip() and not ln.startswith("#"):
                word, score = ln.split("\t")
                self.scores[word.lower()] = float(score)

    def score(self, text: str) -> float:
        hits = [self.scores[w] for w in re.findall(r"[a-z']+", text.lower()) if w in self.scores]
        return sum(hits) / len(hits) if hits else 0.0

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return [self.score(t) for t in texts]


class ProbeScorer:
    """P(positive) from a logistic-regression probe on the unsteered model's pooled activations.

    `fit(texts, labels)` trains on 1 - `test_size` of the data and records `test_accuracy_` on the
    rest; calling the scorer reads `(n, d_model)` mean-pooled activations at `point` (no steering
    active) and returns the probe's probabilities.
    """

    def __init__(self, model, point: str, C: float = 1.0, test_size: float = 0.25, seed: int = 0):
        self.model, self.point, self.C, self.test_size, self.seed = model, point, C, test_size, seed

    def _features(self, texts: Sequence[str]) -> torch.Tensor:
        acts, _ = pooled_activations(self.model, list(texts), [self.point], pool="mean", progress=False)
        return acts[self.point]

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> "ProbeScorer":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        order = list(range(len(texts)))
        random.Random(self.seed).shuffle(order)
        n_test = max(1, int(len(order) * self.test_size))
        test, train = order[:n_test], order[n_test:]
        x = self._features(texts).numpy()
        y = [int(label) for label in labels]
        self.pipeline_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=2000))
        self.pipeline_.fit(x[train], [y[i] for i in train])
        self.test_accuracy_ = float(self.pipeline_.score(x[test], [y[i] for i in test]))
        self.n_train_, self.n_test_ = len(train), len(test)
        return self

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return self.pipeline_.predict_proba(self._features([t if t.strip() else "." for t in texts]).numpy())[:, 1].tolist()


def fit_sentiment_probe(model, point: str, vector: SteeringVector | None = None,
                        labelled: str | Path | None = None, seed: int = 0) -> ProbeScorer:
    """A `ProbeScorer` trained on `interp/datasets/sentiment.jsonl` (or `labelled`), leaving out every
    text the vector was built from (matched by the text hashes in its metadata)."""
    texts, labels = load_labelled_texts(labelled or "builtin:sentiment")
    used = set(vector.source.get("text_hashes", [])) if vector is not None else set()
    keep = [i for i, t in enumerate(texts) if text_hash(t) not in used]
    if len(keep) < 8:
        raise InterpError("fewer than 8 labelled texts are left once the vector's build texts are removed: give more labelled data")
    return ProbeScorer(model, point, seed=seed).fit([texts[i] for i in keep], [labels[i] for i in keep])


def continuation_loss(model, prompt_ids: torch.Tensor, new_ids: torch.Tensor) -> float:
    """Mean next-token loss (nats) of `new_ids` `(n_new,)` after `prompt_ids` `(n_prompt,)`, unsteered."""
    if new_ids.numel() == 0:
        return float("nan")
    tokens = torch.cat([prompt_ids.reshape(-1).cpu(), new_ids.reshape(-1).cpu()]).unsqueeze(0)
    with torch.no_grad():
        losses = model(tokens.to(model_device(model)), return_type="loss", loss_per_token=True)
    return float(losses[0, -new_ids.numel():].mean())


# ------------------------------------------------------------------- evaluation
def _steered_runs(model, vector, prompts, alphas, seeds, gen_kwargs, progress, desc):
    """Yield (alpha, prompt, seed, prompt_ids, new_ids) for every combination, steering per run."""
    jobs = [(a, p, s) for a in alphas for p in prompts for s in seeds]
    for a, p, s in tqdm(jobs, desc=desc, disable=not progress, leave=False):
        prompt_ids = model.to_tokens(p, prepend_bos=True)[0].cpu()
        new = generate_ids(model, prompt_ids, vector if a != 0 else None, a, seed=s, **gen_kwargs)
        yield a, p, s, prompt_ids, new


def evaluate(
    model,
    vector: SteeringVector,
    prompts: Sequence[str] = BUILTIN_PROMPTS,
    alphas: Sequence[float] = (-8, -4, 0, 4, 8),
    scorers: dict[str, Scorer] | None = None,
    seeds: Sequence[int] = (0,),
    max_new_tokens: int = 30,
    temperature: float = 0.7,
    top_p: float | None = None,
    positions: str = "all",
    norm_preserve: bool = False,
    alpha_unit: str = "vector",
    progress: bool = True,
) -> dict:
    """Generate after each prompt at each alpha (same seeds), score the continuations, measure fluency.

    Returns `{"curve": [{alpha, <scorer>: mean, fluency: mean loss}], "samples": [{prompt, seed,
    texts: {alpha: continuation}}], "settings": {...}}`. alpha 0 is the unsteered baseline.
    """
    scorers = scorers if scorers is not None else {"lexicon": LexiconScorer()}
    gen_kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, positions=positions,
                      norm_preserve=norm_preserve, alpha_unit=alpha_unit)
    texts: dict[float, list[str]] = {a: [] for a in alphas}
    losses: dict[float, list[float]] = {a: [] for a in alphas}
    samples: dict[tuple[str, int], dict] = {}
    for a, p, s, prompt_ids, new in _steered_runs(model, vector, prompts, alphas, seeds, gen_kwargs, progress, "steer eval"):
        text = model.tokenizer.decode(new.tolist(), skip_special_tokens=True)
        texts[a].append(text)
        losses[a].append(continuation_loss(model, prompt_ids, new))
        samples.setdefault((p, s), {"prompt": p, "seed": s, "texts": {}})["texts"][str(a)] = text
    curve = []
    for a in alphas:
        row = {"alpha": float(a)}
        for name, scorer in scorers.items():
            vals = scorer(texts[a])
            row[name] = sum(vals) / len(vals)
        finite = [x for x in losses[a] if x == x]
        row["fluency_loss"] = sum(finite) / len(finite) if finite else float("nan")
        curve.append(row)
    settings = {**gen_kwargs, "seeds": list(seeds), "alphas": [float(a) for a in alphas], "n_prompts": len(prompts)}
    return {"curve": curve, "samples": list(samples.values()), "settings": settings}


def eval_figure(curve: Sequence[dict], title: str = "steering effect") -> go.Figure:
    """Scorer means (left axis) and fluency loss (right axis) against alpha."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    alphas = [r["alpha"] for r in curve]
    for key in curve[0]:
        if key not in ("alpha", "fluency_loss"):
            fig.add_trace(go.Scatter(x=alphas, y=[r[key] for r in curve], mode="lines+markers", name=key), secondary_y=False)
    fig.add_trace(go.Scatter(x=alphas, y=[r["fluency_loss"] for r in curve], mode="lines+markers", name="fluency loss",
                             line={"dash": "dot"}), secondary_y=True)
    fig.update_layout(title=title, xaxis_title="alpha")
    fig.update_yaxes(title_text="score", secondary_y=False)
    fig.update_yaxes(title_text="loss under unsteered model (nats/token)", secondary_y=True)
    return fig


def write_eval_report(result: dict, out: str | Path, title: str = "Steering evaluation") -> Path:
    """`results.json` and `report.html` (curves + side-by-side samples) in `out`."""
    from interp.atomic import write_json
    from interp.reports import html_table, write_report

    out = Path(out)
    write_json(out / "results.json", result)
    alphas = [str(a) for a in result["settings"]["alphas"]]
    rows = [{"prompt": s["prompt"], "seed": s["seed"], **{f"alpha {a}": s["texts"].get(a, "") for a in alphas}}
            for s in result["samples"]]
    sections = ["<h2>Means per alpha</h2>", html_table(result["curve"]), "<h2>Samples (same seed across alphas)</h2>",
                html_table(rows).replace("<td>", "<td style='text-align:left;vertical-align:top'>")]
    intro = (f"Vector: {result.get('vector', {}).get('method', '?')} at {', '.join(result.get('vector', {}).get('points', []))}; "
             f"alpha unit: {result['settings']['alpha_unit']}. Scores come from scorers independent of the vector; "
             "fluency loss is the unsteered model's mean per-token loss on each continuation (lower is more fluent).")
    write_report(out / "report.html", title, figures=[eval_figure(result["curve"])], sections=sections, intro=intro)
    return out


def layer_sweep(
    model,
    vectors: dict[str, SteeringVector] | Callable[[str], SteeringVector],
    prompts: Sequence[str],
    scorer: Scorer,
    alphas: Sequence[float] = (-1.0, 0.0, 1.0),
    points: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    max_new_tokens: int = 20,
    temperature: float = 0.7,
    alpha_unit: str = "norm",
    progress: bool = True,
) -> list[dict]:
    """How strongly steering at each point moves `scorer`, to pick a layer.

    `vectors` is `{point: vector}` or a builder `point -> vector` (with `points`). Returns one row
    per point and alpha: `{point, layer, alpha, score, fluency_loss, slope}`, where `slope` is the
    least-squares slope of score against alpha at that point (the same for all its rows).
    """
    if callable(vectors) and not isinstance(vectors, dict):
        if not points:
            raise InterpError("layer_sweep with a vector builder needs points=[...]")
        vectors = {p: vectors(p) for p in points}
    rows = []
    gen_kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, alpha_unit=alpha_unit)
    for point, vec in vectors.items():
        by_alpha: dict[float, tuple[list[str], list[float]]] = {a: ([], []) for a in alphas}
        for a, _, _, prompt_ids, new in _steered_runs(model, vec, prompts, alphas, seeds, gen_kwargs, progress, point):
            by_alpha[a][0].append(model.tokenizer.decode(new.tolist(), skip_special_tokens=True))
            by_alpha[a][1].append(continuation_loss(model, prompt_ids, new))
        point_rows = []
        for a, (txts, loss) in by_alpha.items():
            vals = scorer(txts)
            finite = [x for x in loss if x == x]
            point_rows.append({"point": point, "layer": vec.layers[0], "alpha": float(a), "score": sum(vals) / len(vals),
                               "fluency_loss": sum(finite) / len(finite) if finite else float("nan")})
        xs = torch.tensor([r["alpha"] for r in point_rows], dtype=torch.float64)
        ys = torch.tensor([r["score"] for r in point_rows], dtype=torch.float64)
        slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum().clamp_min(1e-12))
        rows.extend({**r, "slope": slope} for r in point_rows)
    return rows


def layer_sweep_figure(rows: Sequence[dict]) -> go.Figure:
    """Score against point (layer) for each alpha, from `layer_sweep` rows."""
    fig = go.Figure()
    for a in sorted({r["alpha"] for r in rows}):
        sel = [r for r in rows if r["alpha"] == a]
        fig.add_trace(go.Scatter(x=[r["layer"] if r["layer"] is not None else r["point"] for r in sel],
                                 y=[r["score"] for r in sel], mode="lines+markers", name=f"alpha {a:g}"))
    fig.update_layout(title="steering effect by layer", xaxis_title="layer", yaxis_title="score")
    return fig

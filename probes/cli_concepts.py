"""`interp concepts nmf`, and the output of `interp tcav --global` and `interp probe --target semantic-entropy`.

Mistakes a user can make raise `InterpError`; `interp.cli.main` prints it on one line and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional

import typer
from rich.table import Table

from interp.cli_common import DEVICE_HELP, MODEL_HELP, SEED_HELP, TEXT_FIELD_HELP, console, wide_console
from interp.errors import InterpError
from probes.inputs import parse_target, read_examples

app = typer.Typer(
    help="Concepts found without labels: NMF concepts (ICE / NCAV) with their importance for a target.",
    no_args_is_help=True,
    add_completion=False,
)


def print_gcav(result: Mapping[str, Any], target: str, out: Path) -> None:
    """The `interp tcav --global` table: per point TCAV before/after fusion, then the global score and its test."""
    table = Table(title=f"GCAV of '{result['concept']}' for target {target!r} ({result['n_class_inputs']} inputs, "
                        f"{result['n_runs']} runs): layer CAV (before) vs decoded global CAV (after)")
    for col in ("point", "before", "var before", "after", "var after", "attention", "cos(global, layer)", "CAV acc"):
        table.add_column(col, justify="left" if col == "point" else "right", no_wrap=col == "point")
    for p in result["points"]:
        s = result["per_point"][p]
        table.add_row(p, f"{s['mean_before']:.3f}", f"{s['var_before']:.4f}", f"{s['mean_after']:.3f}", f"{s['var_after']:.4f}",
                      f"{s['attention_weight']:.3f}", f"{s['cosine_with_layer_cav']:.3f}", f"{s['cav_accuracy_mean']:.3f}")
    wide_console().print(table)
    g = result["global"]
    console.print(f"cross-layer variance of TCAV scores: {result['cross_layer_variance_before']:.4g} before, "
                  f"{result['cross_layer_variance_after']:.4g} after; run variance {result['run_variance_before']:.4g} before, "
                  f"{result['run_variance_after']:.4g} after", soft_wrap=True)
    console.print(f"global TCAV score {g['mean']:.3f} +- {g['std']:.3f} vs random {g['random_mean']:.3f} +- {g['random_std']:.3f}: "
                  f"p = {g['p_value']:.3g} ({'significant' if g['significant'] else 'not significant'} at {g['alpha']})", soft_wrap=True)
    console.print(f"Wrote {out / 'results.json'}, {out / 'directions.safetensors'}, {out / 'report.html'}", soft_wrap=True)


def _budget(hm: Any, texts: list[str], max_texts: Optional[int], max_tokens: Optional[int]) -> list[str]:
    """The first texts, up to `max_texts` of them and until they hold `max_tokens` tokens (BOS not counted)."""
    if max_texts is not None:
        if max_texts < 1:
            raise InterpError(f"--max-texts must be at least 1, got {max_texts}")
        texts = texts[:max_texts]
    if max_tokens is None:
        return texts
    if max_tokens < 1:
        raise InterpError(f"--max-tokens must be at least 1, got {max_tokens}")
    kept, total = [], 0
    for text in texts:
        if total >= max_tokens:
            break
        kept.append(text)
        total += len(hm.model.tokenizer(text, add_special_tokens=False)["input_ids"])  # as interp.readout counts them
    return kept


@app.command("nmf")
def nmf(
    hook: str = typer.Option(..., "--hook", help="one hook point, e.g. blocks.12.mlp.hook_post or resid_post:12"),
    data: List[str] = typer.Option(..., "--data", help="texts: .txt (one per line), .jsonl/.csv/.parquet (--text-field), "
                                   "or builtin:sports|food|weather|random; repeat --data to pool several"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    n_concepts: int = typer.Option(10, "--n-concepts", help="number of concepts"),
    nonneg: str = typer.Option("split", "--nonneg", help="how activations become non-negative: split (lossless: positive "
                               "and negative parts side by side), clip, shift or none"),
    level: str = typer.Option("token", "--level", help="token (one row per token) or text (one row per text, mean over tokens)"),
    target: Optional[str] = typer.Option(None, "--target", help="importance: directional derivative of this single-token string "
                                         "(e.g. ' game') or output index along each concept"),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="class inputs for the importance (default: the --data texts)"),
    max_texts: Optional[int] = typer.Option(None, "--max-texts", help="use only the first N texts"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="use texts (in order) until they hold N tokens"),
    top_n: int = typer.Option(10, "--top-n", help="top examples kept per concept"),
    max_iter: int = typer.Option(500, "--max-iter", help="NMF iterations at most"),
    text_field: str = typer.Option("text", "--text-field", help=TEXT_FIELD_HELP),
    out: Path = typer.Option(Path("out/nmf"), "--out", "-o", help="folder for results.json, directions.safetensors, report.html"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    batch_texts: int = typer.Option(16, "--batch-texts", help="texts per forward pass"),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
) -> None:
    """Factorise a layer's activations into k non-negative concepts; show each one's top tokens and its importance."""
    from interp import load_model
    from interp.readout import as_hook_manager

    from probes.nmf_concepts import LEVELS, NONNEG, nmf_concepts, write_nmf_concepts

    if nonneg not in NONNEG:
        raise InterpError(f"unknown --nonneg {nonneg!r}: use {', '.join(NONNEG)}")
    if level not in LEVELS:
        raise InterpError(f"unknown --level {level!r}: use {' or '.join(LEVELS)}")
    if n_concepts < 1:
        raise InterpError(f"--n-concepts must be at least 1, got {n_concepts}")
    if inputs is not None and target is None:
        raise InterpError("--inputs is only used with --target (the importance is the target's derivative on them)")
    texts = [t for source in data for t in _read_texts(source, text_field)]
    class_texts = read_examples(inputs, "inputs") if inputs is not None else None
    bridge = load_model(model, device=device)
    hm = as_hook_manager(bridge)
    texts = _budget(hm, texts, max_texts, max_tokens)
    n_rows = len(texts) if level == "text" else None
    if n_rows is not None and n_rows < n_concepts:
        raise InterpError(f"{n_rows} texts are fewer than --n-concepts {n_concepts}: give more texts or fewer concepts")
    result = nmf_concepts(bridge, texts, hook, k=n_concepts, target=parse_target(target) if target is not None else None,
                          class_inputs=class_texts, nonneg=nonneg, level=level, top_n=top_n, max_iter=max_iter, seed=seed,
                          batch_size=batch_texts, progress=True)
    write_nmf_concepts(result, out)
    print_nmf(result, out)


def _read_texts(source: str, text_field: str) -> list[str]:
    from interp.data import iter_texts

    if source.startswith("builtin:") or Path(source).suffix in (".txt", ""):
        return read_examples(source, "data")
    if not Path(source).expanduser().is_file():
        raise InterpError(f"data file {source} does not exist: give a .txt (one text per line) or a .jsonl/.csv/.parquet file")
    return list(iter_texts(source, text_field))


def print_nmf(result: Mapping[str, Any], out: Path) -> None:
    """The `interp concepts nmf` table: concept, share, top tokens / texts, importance."""
    has_target = result["target"] is not None
    table = Table(title=f"{result['k']} NMF concepts at {result['point']} ({result['n_rows']} {result['level']} rows, "
                        f"nonneg {result['nonneg']})" + (f"; importance for target {result['target']!r}" if has_target else ""))
    cols = ["concept", "share", "top tokens", "top texts"] + (["TCAV", "mean deriv."] if has_target else [])
    for col in cols:
        table.add_column(col, justify="right" if col in ("concept", "share", "TCAV", "mean deriv.") else "left")
    for c in result["concepts"]:
        tokens = ", ".join(repr(t["token"]) for t in c["top"][:5]) if "token" in c["top"][0] else ""
        texts = " | ".join((t.get("text") or str(t["input"]))[:40] for t in c["top_texts"][:2])
        row = [str(c["index"]), f"{c['share']:.3f}", tokens, texts]
        if has_target:
            row += [f"{c['tcav_score']:.3f}", f"{c['mean_derivative']:.3g}"]
        table.add_row(*row)
    wide_console().print(table)
    console.print(f"fraction of variance explained: {result['fve_activation']:.4f} in activation space "
                  f"({result['fve']:.4f} in the non-negative space)", soft_wrap=True)
    console.print(f"Wrote {out / 'results.json'}, {out / 'directions.safetensors'}, {out / 'report.html'}", soft_wrap=True)


def semantic_entropy_command(model: str, questions: str, points: str, samples: int, max_new_tokens: int, temperature: float,
                             task: Optional[str], strength: Optional[float], limit: Optional[int], out: Path,
                             device: Optional[str], batch_size: int, seed: int, target: str,
                             threshold: str = "best-split") -> None:
    """`interp probe --target semantic-entropy`: sample, measure semantic entropy, probe it per point, print a table."""
    from interp import load_model

    from probes.semantic_entropy import THRESHOLDS, load_questions, semantic_entropy_probe

    if target != "semantic-entropy":
        raise InterpError(f"unknown --target {target!r}: the one probe target is semantic-entropy "
                          "(omit --target to probe labels from --data)")
    if temperature <= 0:
        raise InterpError(f"--temperature {temperature}: semantic entropy needs sampling, use a temperature above 0 (e.g. 1.0)")
    if samples < 2:
        raise InterpError(f"--samples {samples}: entropy needs at least 2 answers per question (5 to 10 is usual)")
    if max_new_tokens < 1:
        raise InterpError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if strength is not None and not strength > 0:
        raise InterpError(f"--C must be positive, got {strength}")
    task = task or "classification"
    if task not in ("classification", "regression"):
        raise InterpError(f"unknown --task {task!r}: use classification or regression")
    cut: str | float = threshold
    if threshold not in THRESHOLDS:
        try:
            cut = float(threshold)
        except ValueError:
            raise InterpError(f"unknown --threshold {threshold!r}: use best-split, median or a number") from None
    rows = load_questions(questions)
    if limit is not None:
        rows = rows[:limit]
    if len(rows) < 4:
        raise InterpError(f"{len(rows)} questions are too few to train and test a probe: give at least 4 (40+ is better)")
    bridge = load_model(model, device=device)
    result = semantic_entropy_probe(bridge, rows, points=points, n_samples=samples, max_new_tokens=max_new_tokens,
                                    temperature=temperature, task=task, threshold=cut, seed=seed, C=1.0 if strength is None else strength,
                                    batch_size=batch_size, progress=True)
    from probes.semantic_entropy import write_semantic_entropy

    write_semantic_entropy(result, out)
    key = "auroc" if task == "classification" else "r2"
    ent = [q["entropy"] for q in result["questions"]]
    split = (f"; high/low split at {result['threshold']:.3g}: {result['n_high']} high, {result['n_low']} low"
             if task == "classification" else "")
    table = Table(title=f"semantic-entropy probe: {result['n_questions']} questions x {samples} answers "
                        f"(mean entropy {sum(ent) / len(ent):.3f} nats{split}); out-of-fold {key.upper()}")
    for col in ("point", key, "shuffled", "shuffled p95", "p"):
        table.add_column(col, justify="left" if col == "point" else "right", no_wrap=col == "point")
    for p in result["points"]:
        m = result["per_point"][p]
        table.add_row(p + (" *" if p == result["best_point"] else ""), f"{m[key]:.3f}", f"{m[f'shuffled_{key}']:.3f}",
                      f"{m[f'shuffled_{key}_p95']:.3f}", f"{m['p_value']:.3g}")
    wide_console().print(table)
    console.print(f"best: {result['best_point']} (*). Wrote {out / 'results.json'}, {out / 'report.html'}", soft_wrap=True)


def register(app_: typer.Typer) -> None:
    """Add the `concepts` command group to `app_`."""
    app_.add_typer(app, name="concepts")

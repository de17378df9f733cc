"""`interp probe`, `interp tcav` and `interp concepts`: `register(app)` adds them to the `interp` command
(the `interp.commands` entry point of this package)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from interp.cli_common import DEVICE_HELP, HOOKS_HELP, MODEL_HELP, SEED_HELP, console, wide_console
from interp.errors import InterpError
from probes import cli_concepts
from probes.inputs import parse_pool, parse_target, read_examples

def _fmt_ci(ci: list[float]) -> str:
    return f"{ci[0]:.3f}-{ci[1]:.3f}"


def probe(
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option("builtin:sentiment", "--data", help="labelled .jsonl/.csv/.tsv/.parquet file, or builtin:sentiment / builtin:facts"),
    text_field: str = typer.Option("text", "--text-field", help="column holding the texts"),
    label_field: str = typer.Option("label", "--label-field", help="column holding the labels"),
    type_field: Optional[str] = typer.Option(None, "--type-field", help="column giving each example's type for the control task (default: lexical clusters of the texts)"),
    hooks: str = typer.Option("resid_post:all", "--hooks", help=HOOKS_HELP),
    pool: str = typer.Option("last", "--pool", help="last, mean, max, or a token position (0 = first token after BOS)"),
    out: Path = typer.Option(Path("out/probe"), "--out", "-o", help="folder for results.json, directions.safetensors, report.html"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    test_size: float = typer.Option(0.25, "--test-size", help="fraction of examples held out for testing"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="bootstrap resamples for the confidence intervals"),
    task: Optional[str] = typer.Option(None, "--task", help="classification or regression (default: from the labels)"),
    strength: Optional[float] = typer.Option(None, "--C", help="fixed regularisation strength (C, or alpha for regression); default: chosen per point by cross-validation on the training split"),
    cv_folds: int = typer.Option(5, "--cv-folds", help="folds of the cross-validation that chooses C"),
    cluster_size: int = typer.Option(4, "--cluster-size", help="texts per lexical cluster (the control task's types)"),
    max_texts: Optional[int] = typer.Option(None, "--max-texts", help="use only the first N texts (examples or questions)"),
    batch_texts: int = typer.Option(16, "--batch-texts", help="texts per forward pass"),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    target: Optional[str] = typer.Option(None, "--target", help="semantic-entropy: probe the semantic entropy of sampled answers "
                                         "(Kossen et al.) from the question's hidden states instead of labels from --data"),
    questions: str = typer.Option("builtin", "--questions", help="with --target semantic-entropy: builtin (82 shipped questions) "
                                  "or a .jsonl file with a 'question' field per line"),
    samples: int = typer.Option(5, "--samples", help="with --target semantic-entropy: answers sampled per question"),
    max_new_tokens: int = typer.Option(12, "--max-new-tokens", help="with --target semantic-entropy: tokens per answer"),
    temperature: float = typer.Option(0.5, "--temperature", help="with --target semantic-entropy: sampling temperature (> 0; at 1.0 a 135M model answers mostly noise)"),
    threshold: str = typer.Option("best-split", "--threshold", help="with --target semantic-entropy: where entropy splits into "
                                  "high/low: best-split, median or a number (classification only)"),
) -> None:
    """Probe every hook point in one pass; report held-out accuracy, control-task accuracy, selectivity and the chosen C.

    With --target semantic-entropy: sample answers to each question, measure their semantic
    entropy, and probe it from the question's last-token hidden state (out-of-fold AUROC per point).
    """
    from interp import load_model
    from interp.data import load_labelled

    from probes.sweep import check_split, infer_task, probe_layers

    if target is not None:
        cli_concepts.semantic_entropy_command(model=model, questions=questions, points=hooks, samples=samples,
                                              max_new_tokens=max_new_tokens, temperature=temperature, task=task,
                                              strength=strength, limit=max_texts, out=out, device=device,
                                              batch_size=batch_texts, seed=seed, target=target, threshold=threshold)
        return
    texts, labels = load_labelled(data, text_field, label_field)
    types = load_labelled(data, text_field, type_field)[1] if type_field else None
    if max_texts is not None:
        texts, labels, types = texts[:max_texts], labels[:max_texts], types[:max_texts] if types is not None else None
    task = task or infer_task(labels)
    check_split(labels, len(texts), task, test_size)  # before the model loads: bad data fails fast
    if strength is not None and not strength > 0:
        raise InterpError(f"--C must be positive, got {strength}")
    if cv_folds < 2:
        raise InterpError(f"--cv-folds must be at least 2, got {cv_folds}")
    bridge = load_model(model, device=device)
    fixed = {"alpha" if task == "regression" else "C": strength}
    result = probe_layers(bridge, texts, labels, points=hooks, pool=parse_pool(pool), test_size=test_size,
                          n_bootstrap=bootstrap, seed=seed, batch_size=batch_texts, task=task, cv_folds=cv_folds,
                          types=types, cluster_size=cluster_size, **fixed)
    result.save(out)
    control = result.control
    table = Table(title=f"probe sweep: {len(texts)} examples from {data} ({result.metric}, {result.n_test} held out; "
                        f"control task: {control['n_types']} types, {control['n_types_both_sides']} in both splits)")
    for col in ("point", result.metric, "95% CI", result.strength, "control", "select.", "select. 95% CI", "shuffled"):
        table.add_column(col, justify="left" if col == "point" else "right", no_wrap=col == "point")
    for p in result.points:
        m = result.metrics[p]
        table.add_row(p + (" *" if p == result.best_point else ""), f"{m['accuracy']:.3f}", _fmt_ci(m["accuracy_ci"]),
                      f"{m[result.strength]:g}", f"{m['control_accuracy']:.3f}", f"{m['selectivity']:.3f}",
                      _fmt_ci(m["selectivity_ci"]), f"{m['shuffled_accuracy']:.3f}")
    wide_console().print(table)
    console.print("control = control task (one random label per input type); select. = score - control; "
                  "shuffled = shuffled-label baseline (chance by construction)", soft_wrap=True)
    console.print(f"best: {result.best_point} (*). Wrote {out / 'results.json'}, {out / 'directions.safetensors'}, {out / 'report.html'}", soft_wrap=True)


def tcav_command(
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    concept: str = typer.Option(..., "--concept", help="concept examples: .txt file (one per line) or builtin:sports|food|weather"),
    random: str = typer.Option("builtin", "--random", help="random counterexamples: .txt file (one per line) or builtin"),
    inputs: str = typer.Option(..., "--inputs", help="inputs of the class to explain: .txt file, one per line"),
    target: str = typer.Option(..., "--target", help="a single-token string (e.g. ' good') or an integer output index / token id"),
    hooks: str = typer.Option("resid_post:all", "--hooks", help=HOOKS_HELP),
    runs: int = typer.Option(10, "--runs", help="CAVs per point (and as many random-vs-random CAVs)"),
    out: Path = typer.Option(Path("out/tcav"), "--out", "-o", help="folder for results.json and report.html"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    correction: str = typer.Option("bonferroni", "--correction", help="multiple-testing correction across points: bonferroni or holm"),
    significance: float = typer.Option(0.05, "--significance", help="significance level of the t-test, after correction"),
    set_size: Optional[int] = typer.Option(None, "--set-size", help="examples per random set (default: as many as concept examples)"),
    batch_texts: int = typer.Option(16, "--batch-texts", help="texts per forward pass"),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    global_cav: bool = typer.Option(False, "--global", help="GCAV (He et al., 2025): fuse the CAVs of every point in --hooks into "
                                    "one global CAV; report per-point TCAV before/after and the global score with its t-test"),
) -> None:
    """TCAV: does the concept raise the target? Scores per point with a t-test against random concepts.

    With --global: one global CAV fused across the points (GCAV/TGCAV); the t-test compares the
    concept's global scores with random concepts' (one test, so --correction does not apply).
    """
    from interp import load_model

    from probes.tcav import builtin_random_texts, tcav

    concept_texts = read_examples(concept, "concept")
    random_texts = builtin_random_texts() if random == "builtin" else read_examples(random, "random")
    class_texts = read_examples(inputs, "inputs")
    if global_cav and runs < 2:
        raise InterpError(f"--runs {runs}: the t-test needs at least 2 runs (10 or more is usual)")
    bridge = load_model(model, device=device)
    parsed = parse_target(target)
    name = concept.split(":", 1)[1] if concept.startswith("builtin:") else Path(concept).stem
    if global_cav:
        from probes.gcav import gcav, write_gcav

        result = gcav(bridge, concept_texts, random_texts, class_texts, parsed, hooks, n_runs=runs, set_size=set_size,
                      seed=seed, batch_size=batch_texts, alpha=significance, concept=name, progress=True)
        write_gcav(result, out)
        cli_concepts.print_gcav(result, target, out)
        return
    result = tcav(bridge, concept_texts, random_texts, class_texts, parsed, hooks, n_runs=runs, set_size=set_size,
                  seed=seed, batch_size=batch_texts, correction=correction, alpha=significance, concept=name)
    result.save(out)
    table = Table(title=f"TCAV of '{name}' for target {target!r} ({len(class_texts)} inputs, {runs} runs; "
                        f"p adj: {correction}; sig: p adj < {significance})")
    for col in ("point", "score", "std", "random", "p", "p adj", "sig", "CAV acc"):
        table.add_column(col, justify="left" if col == "point" else "right", no_wrap=col == "point")
    for p in result.points:
        s = result.stats[p]
        table.add_row(p, f"{s['mean']:.3f}", f"{s['std']:.3f}", f"{s['random_mean']:.3f}", f"{s['p_value']:.2g}",
                      f"{s['p_value_corrected']:.2g}", "yes" if s["significant"] else "no", f"{s['cav_accuracy_mean']:.3f}")
    wide_console().print(table)
    console.print(f"Wrote {out / 'results.json'}, {out / 'report.html'}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `probe`, `tcav` and `concepts` commands to `app`."""
    app.command("probe")(probe)
    app.command("tcav")(tcav_command)
    cli_concepts.register(app)

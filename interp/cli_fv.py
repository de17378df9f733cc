"""`interp fv build|apply`, `interp lrc` and `interp grains build`: reading the model through function
vectors, linear relational concepts and attribution-guided steering vectors.

`register(app)` adds the three to a typer app. Every command checks its inputs before the model
loads, writes its folder atomically (`results.json`, `report.html` and the artifact) and prints
where it went; mistakes a user can make raise `InterpError` (one line, exit 1, nothing written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli_common import parse_number
from interp.errors import InterpError

MODEL_HELP = "'default' (embedded SmolLM2-135M-Instruct), a local HF model directory, or a hub name"
DEVICE_HELP = "cpu, cuda, cuda:N (default: cuda if present)"

fv_app = typer.Typer(help="Function vectors (Todd et al.): find the heads that carry an in-context task, sum them, add them "
                     "to zero-shot prompts.", no_args_is_help=True, add_completion=False)
grains_app = typer.Typer(help="GrAInS steering vectors: integrated-gradient token attributions -> ablation shifts -> one "
                         "direction per layer (apply with `interp steer generate --vector DIR`).", no_args_is_help=True,
                         add_completion=False)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InterpError(f"--out {out} is a file: give a folder to write into")


def _load(model: str, device: Optional[str]):
    from interp.models import load_model

    return load_model(model, device=device)


def _layer(text: Optional[str], n_layers: int, what: str) -> Optional[int]:
    from interp.hooks import parse_layers

    if text is None or text == "auto":
        return None
    layers = parse_layers(text, n_layers)
    if len(layers) != 1:
        raise InterpError(f"{what} takes one layer (N or -N), got {text!r}")
    return layers[0]


# ------------------------------------------------------------------ function vectors
@fv_app.command("build")
def fv_build(
    task: str = typer.Option(..., "--task", help="a shipped task (antonyms, english_french, country_capital, present_past, "
                             "city_country) or a .jsonl file of input/output/split records"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for function_vector.safetensors/.json, results.json, report.html"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    n_prompts: int = typer.Option(16, "--n-prompts", help="clean and corrupted (shuffled-label) in-context prompts"),
    n_demos: int = typer.Option(5, "--n-demos", help="demonstrations per in-context prompt"),
    n_heads: int = typer.Option(10, "--n-heads", help="top heads (by average indirect effect) summed into the vector"),
    layer: str = typer.Option("auto", "--layer", help="layer after which the vector is added: N, or auto (best zero-shot "
                              "accuracy on training items)"),
    head_layers: str = typer.Option("all", "--head-layers", help="layers whose heads are measured: all, A-B, or a list"),
    sweep_layers: str = typer.Option("all", "--sweep-layers", help="with --layer auto: the layers tried"),
    batch_texts: int = typer.Option(90, "--batch-texts", help="texts per forward pass (prompts, or patched rows of prompts)"),
    seed: int = typer.Option(0, "--seed", help="seed of the prompt sampling"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Measure every head's indirect effect on a task and save the function vector of the top heads."""
    from interp import function_vectors as fvs
    from interp.atomic import write_json
    from interp.fv_reports import fv_build_report
    from interp.hooks import parse_layers
    from interp.tasks import load_task

    data = load_task(task)
    for name, value in (("--n-prompts", n_prompts), ("--n-demos", n_demos), ("--n-heads", n_heads), ("--batch-texts", batch_texts)):
        if value < 1:
            raise InterpError(f"{name} must be at least 1, got {value}")
    if n_demos >= len(data.train):
        raise InterpError(f"--n-demos {n_demos} needs more training items than the task has ({len(data.train)})")
    _check_out(out)
    lm = _load(model, device)
    fixed = _layer(layer, lm.cfg.n_layers, "--layer")
    measured = parse_layers(head_layers, lm.cfg.n_layers)
    fv = fvs.build_function_vector(lm, data, n_prompts=n_prompts, n_demos=n_demos, n_top_heads=n_heads, layer=fixed,
                                   layers=measured, sweep_layers=parse_layers(sweep_layers, lm.cfg.n_layers),
                                   batch_texts=batch_texts, seed=seed)
    fv.params["model_spec"] = model
    fv.save(out)
    result = {**fv.describe(), "effects": [[None if v != v else float(v) for v in row] for row in fv.effects.tolist()]}
    write_json(out / "results.json", result)
    fv_build_report(result, out / "report.html")
    heads = ", ".join(f"L{l}H{h} {e:+.3f}" for l, h, e in fv.heads[:5])
    typer.echo(f"{data.name}: clean ICL accuracy {fv.params['clean_accuracy']:.2f}, shuffled-label {fv.params['corrupted_accuracy']:.2f}; "
               f"top heads {heads}; vector |v|={float(fv.vector.norm()):.3g} added after layer {fv.layer}")
    typer.echo(f"wrote {out}/function_vector.safetensors, function_vector.json, results.json and report.html")


@fv_app.command("apply")
def fv_apply(
    vector: Path = typer.Option(..., "--vector", help="function-vector folder (from `interp fv build`)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for results.json and report.html"),
    task: Optional[str] = typer.Option(None, "--task", help="task whose held-out items are scored (default: the vector's)"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    n_demos: int = typer.Option(5, "--n-demos", help="demonstrations in the few-shot prompts"),
    alpha: str = typer.Option("1.0", "--alpha", help="steering strength: alpha times the vector is added"),
    batch_texts: int = typer.Option(32, "--batch-texts", help="texts (prompts) per forward pass"),
    seed: int = typer.Option(0, "--seed", help="seed of the demonstration sampling"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Held-out accuracy, zero-shot and few-shot, without and with the function vector."""
    from interp import function_vectors as fvs
    from interp.atomic import write_json
    from interp.fv_reports import fv_apply_report
    from interp.tasks import load_task

    strength = parse_number(alpha, "--alpha")
    fv = fvs.FunctionVector.load(vector)
    data = load_task(task or fv.task)
    if n_demos < 1 or n_demos >= len(data.train):
        raise InterpError(f"--n-demos must lie in 1..{len(data.train) - 1} (the task's training items), got {n_demos}")
    _check_out(out)
    lm = _load(model, device)
    result = fvs.evaluate_function_vector(lm, fv, data, n_demos=n_demos, alpha=strength, batch_texts=batch_texts, seed=seed)
    result["vector"] = {k: v for k, v in fv.describe().items() if k != "manifest"}
    result["vector_dir"] = str(vector)
    write_json(out / "results.json", result)
    fv_apply_report(result, out / "report.html")
    z, f = result["zero_shot"], result["few_shot"]
    typer.echo(f"{data.name} held-out ({result['n_test']} items): zero-shot {z['base']:.2f} -> {z['fv']:.2f} with the vector; "
               f"{n_demos}-shot {f['base']:.2f} -> {f['fv']:.2f}")
    typer.echo(f"wrote {out}/results.json and {out}/report.html")


# -------------------------------------------------------------------------- LRC
def lrc(
    relation: str = typer.Option("city_country", "--relation", help="a shipped many-to-one relation (city_country) or a "
                                 ".jsonl file of input (subject) / output (object) / split records"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for concepts.safetensors, results.json, report.html"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    template: Optional[str] = typer.Option(None, "--template", help="prompt with {subject}, e.g. '{subject} is a city in the "
                                           "country of' (default: the relation's own)"),
    subject_layer: int = typer.Option(8, "--subject-layer", help="layer whose residual stream holds the subject (and the concepts)"),
    object_layer: int = typer.Option(-1, "--object-layer", help="layer of the object representation (-1: the last)"),
    rank: int = typer.Option(64, "--rank", help="rank of the LRE's pseudo-inverse"),
    n_lre: int = typer.Option(8, "--n-lre", help="training prompts whose Jacobians are averaged into the LRE"),
    alpha: str = typer.Option("1.0", "--alpha", help="steering strength of the causal edits: alpha * |s| * (v_target - v_source)"),
    seed: int = typer.Option(0, "--seed", help="seed of the LRE prompt choice and the edit targets"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Linear relational concepts (Chanin et al.): LRE from Jacobians, inverted into one direction per object;
    held-out classification against a logistic-regression probe, and causal edits with both."""
    from interp.atomic import write_json
    from interp.fv_reports import lrc_report
    from interp.lrc_eval import run_lrc
    from interp.relations import TEMPLATES
    from interp.tasks import load_task

    strength = parse_number(alpha, "--alpha")
    data = load_task(relation)
    prompt = template or TEMPLATES.get(data.name)
    if prompt is None:
        raise InterpError(f"relation {data.name!r} has no shipped template: give --template with {{subject}}")
    if "{subject}" not in prompt:
        raise InterpError(f"--template {prompt!r} has no {{subject}} slot")
    if rank < 1 or n_lre < 1:
        raise InterpError(f"--rank and --n-lre must be at least 1 (got {rank} and {n_lre})")
    _check_out(out)
    lm = _load(model, device)
    result, tensors = run_lrc(lm, data, prompt, subject_layer, object_layer, rank, n_lre, strength, seed)
    from interp.atomic import write_safetensors

    write_safetensors(out / "concepts.safetensors", tensors, metadata={"format": "interp.lrc"})
    write_json(out / "results.json", result)
    lrc_report(result, out / "report.html")
    acc = result["accuracy"]
    typer.echo(f"{data.name}: {result['n_train']} train / {result['n_test']} held-out prompts the model answers; held-out "
               f"accuracy LRC {acc['lrc']:.2f} vs probe {acc['probe']:.2f}; causal edits LRC {result['edits']['lrc']:.2f} "
               f"vs probe {result['edits']['probe']:.2f}")
    typer.echo(f"wrote {out}/concepts.safetensors, results.json and report.html")


# ------------------------------------------------------------------------ GrAInS
@grains_app.command("build")
def grains_build(
    out: Path = typer.Option(..., "--out", "-o", help="steering-vector folder to write (vector.safetensors + vector.json), plus "
                             "results.json and report.html"),
    positive: str = typer.Option("builtin:sentiment", "--positive", help="positive texts: .txt / .jsonl, or builtin:sentiment"),
    negative: Optional[str] = typer.Option(None, "--negative", help="negative texts (omit with builtin:sentiment)"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    layer: Optional[str] = typer.Option(None, "--layer", help="layer(s) whose resid_post to steer: N, A-B or A,B"),
    hooks: Optional[str] = typer.Option(None, "--hooks", help="hook point(s) instead of --layer: names or selectors SITE:LAYERS"),
    n_tokens: int = typer.Option(3, "--n-tokens", help="tokens ablated on each side (largest positive / negative attributions)"),
    steps: int = typer.Option(16, "--ig-steps", help="integrated-gradient steps (midpoint rule)"),
    aggregate: str = typer.Option("pca", "--aggregate", help="pca (first principal component of the shifts) or mean"),
    frame: str = typer.Option("{text} Overall, it was", "--frame", help="prompt around each text; {text} is the text"),
    targets: str = typer.Option(" good, bad", "--targets", help="preferred and dispreferred next tokens, comma-separated"),
    text_field: str = typer.Option("text", "--text-field", help="field holding the text in .jsonl files"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Build a GrAInS steering vector from two contrast sets."""
    from interp.atomic import write_json
    from interp.fv_reports import grains_report
    from interp.hooks import HookManager
    from interp.steering import mean_diff
    from interp.steering.grains import AGGREGATES, grains_vector

    if aggregate not in AGGREGATES:
        raise InterpError(f"unknown --aggregate {aggregate!r}: use pca or mean")
    pair = targets.split(",")
    if len(pair) != 2 or not all(p.strip() for p in pair):
        raise InterpError(f"--targets needs two comma-separated tokens such as ' good, bad', got {targets!r}")
    pair = [" " + p.strip() for p in pair]
    if "{text}" not in frame:
        raise InterpError(f"--frame {frame!r} has no {{text}} slot")
    if n_tokens < 1 or steps < 1:
        raise InterpError(f"--n-tokens and --ig-steps must be at least 1 (got {n_tokens} and {steps})")
    if (layer is None) == (hooks is None):
        raise InterpError("give exactly one of --layer N (resid_post at layer N; also 'A-B' or 'A,B') or --hooks POINTS")
    pos, neg = _contrast_texts(positive, negative, text_field)
    _check_out(out)
    lm = _load(model, device)
    points = HookManager(lm).resolve(f"resid_post:{layer}" if layer is not None else hooks)
    vec = grains_vector(lm, pos, neg, points, top_k=n_tokens, steps=steps, frame=frame, targets=tuple(pair), how=aggregate)
    vec.params.update({"positive": positive, "negative": negative, "model_spec": model})
    reference = mean_diff(lm, pos, neg, points, pool="mean", progress=False)
    cosines = {p: float(vec.directions[p] @ reference.directions[p] / (vec.directions[p].norm() * reference.directions[p].norm()))
               for p in points}
    vec.save(out)
    result = {"vector": {k: v for k, v in vec.describe().items() if k != "source"}, "cosine_with_mean_diff": cosines}
    write_json(out / "results.json", result)
    grains_report(result, out / "report.html")
    norms = ", ".join(f"{p} |v|={n:.3g} cos(mean-diff)={cosines[p]:.2f}" for p, n in vec.norms.items())
    typer.echo(f"GrAInS from {len(pos)}+{len(neg)} texts (completeness error {vec.params['mean_completeness_error']:.2g}); {norms}")
    typer.echo(f"wrote {out}/vector.safetensors, vector.json, results.json and report.html "
               f"(apply: interp steer generate --vector {out} --norm-preserve)")


def _contrast_texts(positive: str, negative: Optional[str], text_field: str) -> tuple[list[str], list[str]]:
    from interp.steering import load_builtin_pairs, read_texts

    if positive == "builtin:sentiment" and negative is None:
        return load_builtin_pairs()
    if positive.startswith("builtin:") or (negative or "").startswith("builtin:"):
        raise InterpError("the only built-in contrast set is --positive builtin:sentiment (with no --negative)")
    if negative is None:
        raise InterpError("--negative is missing: give a file of negative texts (or use --positive builtin:sentiment)")
    return read_texts(positive, text_field), read_texts(negative, text_field)


def register(app: typer.Typer) -> None:
    """Add `fv build|apply`, `lrc` and `grains build` to `app`."""
    app.add_typer(fv_app, name="fv")
    app.command("lrc")(lrc)
    app.add_typer(grains_app, name="grains")

"""`interp steer build|generate|eval|export|import`: make, use, measure and share steering vectors from the shell.

The literature methods (`--method lineas|sae-features`, LinEAS folders in `generate`, GGUF export
and import) live in `interp.cli_steer_methods`.

Mistakes a user can make raise `InterpError`; `interp.cli.main` prints it on one line and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp import cli_steer_methods as methods
from interp import cli_transfer as transfer
from interp.cli_common import DEVICE_HELP, MODEL_HELP, TEXT_FIELD_HELP, parse_alphas, parse_number
from interp.errors import InterpError

ALPHA_HELP = (
    "Steering strength. With --alpha-unit vector (default) the stored vector times alpha is added "
    "(a mean-difference vector at alpha 1 shifts by the full mean difference); with --alpha-unit norm, "
    "alpha is in units of the mean residual norm at the hook point (0.5 = half a typical activation)."
)
UNIT_HELP = "How to read alpha: vector (multiples of the stored vector) or norm (multiples of the mean residual norm)."
POSITIONS_HELP = "Where to add the vector: all, prompt (prompt tokens only) or generated (new tokens only)."
CORE_METHODS = ("mean-diff", "pca", "lineas")  # others (sae-features) are registered by their packages

app = typer.Typer(
    help="Steering vectors: build from contrast sets, generate with them, evaluate their effect.\n\n" + ALPHA_HELP,
    no_args_is_help=True,
    add_completion=False,
)


def _load(model: str, device: Optional[str]):
    from interp.models import load_model

    return load_model(model, device=device)


def _contrast_texts(positive: str, negative: Optional[str], text_field: str) -> tuple[list[str], list[str]]:
    from interp.steering import load_builtin_pairs, read_texts

    if positive.startswith("builtin:") or (negative or "").startswith("builtin:"):
        names = {positive, negative or positive}
        if names != {"builtin:sentiment"}:
            raise InterpError(f"unknown built-in contrast set {sorted(names)}: use --positive builtin:sentiment (and no --negative)")
        return load_builtin_pairs()
    if negative is None:
        raise InterpError("--negative is missing: give a file of negative texts (or use --positive builtin:sentiment)")
    return read_texts(positive, text_field), read_texts(negative, text_field)


def _points(model, layer: Optional[str], hooks: Optional[str]) -> list[str]:
    from interp.hooks import HookManager

    if (layer is None) == (hooks is None):
        raise InterpError("give exactly one of --layer N (resid_post at layer N; also 'A-B' or 'A,B') or --hooks POINTS")
    hm = HookManager(model)
    return hm.resolve(f"resid_post:{layer}" if layer is not None else hooks)


@app.command()
def build(
    positive: str = typer.Option(..., help="Positive texts: .txt (one per line), .jsonl (text field), or builtin:sentiment."),
    negative: Optional[str] = typer.Option(None, help="Negative texts (same formats); omit with builtin:sentiment."),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write vector.safetensors + vector.json (or a LinEAS folder) into"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    layer: Optional[str] = typer.Option(None, help="Layer(s) whose resid_post to steer: N, A-B or A,B."),
    hooks: Optional[str] = typer.Option(None, "--hooks", help="hook point(s) instead of --layer: names or selectors SITE:LAYERS, e.g. "
                                        "blocks.6.hook_resid_post"),
    method: str = typer.Option("mean-diff", help="mean-diff (CAA), pca (first PC of paired differences), lineas (per-dimension "
                               "affine maps fitted end to end, negative -> positive; writes a LinEAS folder) or sae-features "
                               "(decoder rows of the SAE latents that best separate the sets; needs --sae)."),
    pool: str = typer.Option("mean", help="Token pooling per text: mean (over non-BOS tokens) or last; lineas also tokens, "
                             "sae-features also max."),
    text_field: str = typer.Option("text", "--text-field", help=TEXT_FIELD_HELP),
    batch_texts: int = typer.Option(16, "--batch-texts", help="texts per forward pass"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    steps: int = typer.Option(100, help="lineas: optimisation steps."),
    lr: float = typer.Option(0.02, help="lineas: Adam learning rate."),
    lambda_group: float = typer.Option(0.05, help="lineas: group-lasso weight (whole layers stay at identity)."),
    lambda_l1: float = typer.Option(0.0, "--lambda-l1", help="lineas: L1 weight (single dimensions stay at identity)."),
    seed: int = typer.Option(0, "--seed", help="lineas: random seed of the fit"),
    sae: Optional[Path] = typer.Option(None, help="sae-features: SAE folder; its hook point is used unless --layer/--hooks is given."),
    n_features: int = typer.Option(8, help="sae-features: latents to combine."),
    criterion: str = typer.Option("effect_size", help="sae-features: how latents are ranked: effect_size (Cohen's d), paired (d_z of "
                                  "line-paired sets) or mean_diff."),
) -> None:
    """Build a steering vector (or LinEAS maps) from positive and negative texts."""
    from interp import steering
    from interp.steering import extensions

    plugged = None if method in CORE_METHODS else extensions.method(method, CORE_METHODS)
    options = {"sae": sae, "n_features": n_features, "criterion": criterion, "pool": pool}
    if method == "lineas":
        methods.check_lineas_options(pool, steps, lr, lambda_group, lambda_l1)
    elif plugged is not None:
        plugged.check(**options)
    elif sae is not None:
        raise InterpError(f"--sae is only used with --method sae-features (got --method {method})")
    pos, neg = _contrast_texts(positive, negative, text_field)
    lm = _load(model, device)
    spec = {"positive": positive, "negative": negative, "model_spec": model}
    if plugged is not None:
        points = None if layer is None and hooks is None else _points(lm, layer, hooks)
        vector, summary = plugged.build(lm, pos, neg, points, batch_size=batch_texts, **options)
        vector.params.update(spec)
        vector.save(out)
        typer.echo(f"wrote {out}/vector.safetensors and vector.json: {summary}")
        return
    points = _points(lm, layer, hooks)
    if method == "lineas":
        methods.build_lineas(lm, pos, neg, points, out, pool, steps, lr, lambda_group, lambda_l1, seed, spec)
        return
    builder = steering.mean_diff if method == "mean-diff" else steering.pca_diff
    vector = builder(lm, pos, neg, points, pool=pool, batch_size=batch_texts)
    vector.params.update({"positive": positive, "negative": negative, "model_spec": model})
    vector.save(out)
    norms = ", ".join(f"{p} |v|={n:.3g} (resid {vector.resid_norms.get(p, float('nan')):.3g})" for p, n in vector.norms.items())
    typer.echo(f"wrote {out}/vector.safetensors and vector.json: {vector.method} from {len(pos)}+{len(neg)} texts; {norms}")


@app.command()
def generate(
    prompt: str = typer.Option(..., help="Prompt text."),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    vector: Optional[Path] = typer.Option(None, help="Steering vector folder (from `interp steer build`), or a LinEAS folder "
                                          "(--method lineas; --alpha is then the map's strength, 0 = unsteered, 1 = fitted)."),
    sae: Optional[Path] = typer.Option(None, help="SAE folder; steer along the decoder row of --feature."),
    feature: Optional[int] = typer.Option(None, help="SAE latent index (with --sae)."),
    probe: Optional[Path] = typer.Option(None, help="Probe folder (directions.safetensors); steer along its direction at --hook."),
    hook: Optional[str] = typer.Option(None, "--hook", help="with --probe: the hook point whose probe direction to steer along"),
    alpha: str = typer.Option("0", help=ALPHA_HELP),
    alpha_unit: str = typer.Option("vector", help=UNIT_HELP),
    max_new_tokens: int = typer.Option(40, help="Tokens to generate."),
    seed: int = typer.Option(0, "--seed", help="random seed (set before each run, so runs are comparable)"),
    temperature: float = typer.Option(0.7, help="Sampling temperature; 0 is greedy."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold."),
    top_k: Optional[int] = typer.Option(None, help="Sample from the k most likely tokens."),
    positions: str = typer.Option("all", help=POSITIONS_HELP),
    norm_preserve: bool = typer.Option(False, "--norm-preserve", help="Rescale each steered activation to its original norm."),
    compare: bool = typer.Option(False, "--compare", help="Show the unsteered and steered continuations side by side."),
    no_kv_cache: bool = typer.Option(False, "--no-kv-cache", help="Generate without the KV cache (slower; for checking the cached path)."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Generate text, optionally steered by a vector, an SAE feature or a probe direction."""
    from interp.steering import SteeringVector, extensions, generate as steer_generate

    a = parse_number(alpha, "--alpha")
    sources = [s for s in (vector, sae, probe) if s is not None]
    if len(sources) > 1:
        raise InterpError("give only one of --vector, --sae or --probe")
    if sae is not None and feature is None:
        raise InterpError("--sae needs --feature N (the latent to steer along)")
    if probe is not None and hook is None:
        raise InterpError("--probe needs --hook (the hook point whose direction to use)")
    from interp.steering.lineas import is_lineas_folder

    lineas = vector is not None and is_lineas_folder(vector)
    vec = SteeringVector.load(vector) if vector is not None and not lineas else None
    lm = _load(model, device)
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                  kv_cache=False if no_kv_cache else None)
    if lineas:
        methods.generate_lineas(lm, vector, prompt, a, kwargs, compare, alpha_unit, positions, norm_preserve)
        return
    if sae is not None:
        vec = extensions.source("sae")(lm, sae, feature)
    elif probe is not None:
        vec = extensions.source("probe")(lm, probe, hook)
    kwargs.update(positions=positions, norm_preserve=norm_preserve, alpha_unit=alpha_unit)
    steered = steer_generate(lm, prompt, vec, a, **kwargs)
    methods.show_generation(lm, prompt, steered, kwargs, f"steered (alpha {a:g}, unit {alpha_unit})", compare)


@app.command("eval")
def evaluate(
    vector: Path = typer.Option(..., help="Steering vector folder (from `interp steer build`)."),
    out: Path = typer.Option(..., "--out", "-o", help="folder for results.json and report.html"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP + " (the model the vector was built for)"),
    prompts: str = typer.Option("builtin", help="Prompts: builtin (neutral openings) or a .txt/.jsonl file."),
    alphas: str = typer.Option("-8,-4,0,4,8", help="Comma list of alphas to compare (0 = unsteered)."),
    alpha_unit: str = typer.Option("vector", help=UNIT_HELP),
    seeds: int = typer.Option(2, help="Seeds per prompt (the same seeds at every alpha)."),
    max_new_tokens: int = typer.Option(30, help="Tokens to generate per run."),
    temperature: float = typer.Option(0.7, help="Sampling temperature; 0 is greedy."),
    positions: str = typer.Option("all", help=POSITIONS_HELP),
    norm_preserve: bool = typer.Option(False, "--norm-preserve", help="Rescale each steered activation to its original norm."),
    labelled: Optional[str] = typer.Option(None, help="Labelled data for the probe scorer: .jsonl/.csv/.tsv/.parquet (text, label 0|1) or builtin:NAME (default: builtin:sentiment)."),
    hook: Optional[str] = typer.Option(None, "--hook", help="the hook point the probe scorer reads (default: the vector's first point)"),
    no_probe: bool = typer.Option(False, "--no-probe", help="Score with the lexicon only."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Measure a vector's effect against alpha with scorers independent of it, plus fluency."""
    from interp.steering import SteeringVector, check_vector
    from interp.steering import BUILTIN_PROMPTS, LexiconScorer, evaluate as run_eval, fit_sentiment_probe, read_texts, write_eval_report

    alpha_list = parse_alphas(alphas)
    prompt_list = BUILTIN_PROMPTS if prompts == "builtin" else read_texts(prompts)
    if seeds < 1:
        raise InterpError(f"--seeds must be at least 1, got {seeds}")
    from interp.steering.lineas import is_lineas_folder

    if is_lineas_folder(vector):
        raise InterpError(f"{vector} holds LinEAS maps, which steer eval does not sweep: use steer generate --vector {vector} "
                          "--alpha STRENGTH, or benchmarks/bench_lineas_vs_meandiff.py to score them")
    vec = SteeringVector.load(vector)
    lm = _load(model, device)
    check_vector(lm, vec)
    scorers = {"lexicon": LexiconScorer()}
    probe_info = None
    if not no_probe:
        probe = fit_sentiment_probe(lm, hook or vec.points[0], vec, labelled)
        scorers["probe_p_positive"] = probe
        probe_info = {"point": probe.point, "test_accuracy": probe.test_accuracy_, "n_train": probe.n_train_, "n_test": probe.n_test_}
        typer.echo(f"probe scorer at {probe.point}: held-out accuracy {probe.test_accuracy_:.3f} ({probe.n_test_} texts)")
    result = run_eval(lm, vec, prompt_list, alpha_list, scorers, seeds=list(range(seeds)), max_new_tokens=max_new_tokens,
                      temperature=temperature, positions=positions, norm_preserve=norm_preserve, alpha_unit=alpha_unit)
    meta = vec.describe()
    meta["source"] = {k: v for k, v in meta["source"].items() if k != "text_hashes"}
    result.update({"vector": meta, "vector_dir": str(vector), "probe": probe_info})
    write_eval_report(result, out)
    for row in result["curve"]:
        typer.echo("  ".join(f"{k} {v:.3f}" for k, v in row.items() if not k.endswith("_by_seed")))
    typer.echo(f"wrote {out}/results.json and {out}/report.html")


methods.register(app)  # export, import
transfer.register(app)  # map, transfer

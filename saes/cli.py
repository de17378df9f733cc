"""`interp sae train | eval | features`: train an SAE on a hook point, measure it, browse its latents.

Every command prints where its outputs went. Mistakes a user can make raise `InterpError`,
which `interp.cli.main` prints as one line with a non-zero exit status.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from interp.cli_common import DATA_HELP, DEVICE_HELP, MODEL_HELP, SEED_HELP, TEXT_FIELD_HELP, console, positive
from interp.errors import InterpError
from saes.sources import training_span

app = typer.Typer(
    help="Train sparse autoencoders on a hook point, evaluate them (reconstruction, sparsity, "
    "CE loss recovered), and write feature dashboards. Files use SAELens's layout.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def parse_latents(text: str, d_sae: int) -> list[int]:
    """Latent indices from `all`, `N`, `A-B` (inclusive) or comma lists of those; ranges are clipped to the SAE."""
    text = text.strip()
    if text == "all":
        return list(range(d_sae))
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if lo > hi or lo < 0:
                    raise ValueError
                out.extend(range(lo, min(hi, d_sae - 1) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise InterpError(f"bad latent selection {text!r}: use all, N, A-B or a comma list such as 0-99 or 3,17,42") from None
    bad = [i for i in out if not 0 <= i < d_sae]
    if bad:
        raise InterpError(f"latent {bad[0]} is out of range: the SAE has {d_sae} latents (0 to {d_sae - 1})")
    if not out:
        raise InterpError(f"the latent selection {text!r} selects nothing: the SAE has {d_sae} latents")
    return list(dict.fromkeys(out))


def _print_metrics(results: dict[str, Any]) -> None:
    from saes.evaluate import summary_rows

    table = Table(title=f"{results['arch']} SAE, {results['d_sae']} latents, at {results['hook_name']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in summary_rows(results):
        v = row["value"]
        table.add_row(row["metric"], f"{v:,}" if isinstance(v, int) else f"{v:.5g}")
    console.print(table)


def _eval_and_report(sae, bridge, data: str, tokens: int, out: Path, ctx_len: int, batch_size: int,
                     skip_contexts: int, text_field: str, held_out: bool | None, sae_dir: Path) -> dict[str, Any]:
    """Evaluate after `skip_contexts` contexts, print the table, write report.html + results.json to `out`."""
    from saes.evaluate import add_training_dead, evaluate_sae, write_eval_report
    from saes.io import read_training_record

    try:
        results = evaluate_sae(sae, bridge, data, tokens, ctx_len=ctx_len, batch_size=batch_size,
                               skip_contexts=skip_contexts, text_field=text_field)
        results["held_out"] = held_out
    except InterpError:
        if not skip_contexts:
            raise
        # The text ran out past the training tokens: evaluate on the start of it instead.
        console.print("[yellow]note:[/] the data has no text left after the training tokens; evaluating on text seen in training")
        results = evaluate_sae(sae, bridge, data, tokens, ctx_len=ctx_len, batch_size=batch_size, text_field=text_field)
        results["held_out"] = False
    add_training_dead(results, read_training_record(sae_dir))
    _print_metrics(results)
    html_path, json_path = write_eval_report(results, out / "report.html")
    console.print(f"wrote {html_path} and {json_path}")
    return results


@app.command()
def train(
    out: Path = typer.Option(..., "--out", "-o", help="folder for the SAE (cfg.json + sae_weights.safetensors), checkpoints and report"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    hooks: Optional[str] = typer.Option(None, "--hooks", help="hook point name, e.g. blocks.15.hook_resid_post (overrides "
                                        "--layer/--site); several points (resid_post:4-7, or names joined by ';') train one "
                                        "SAE each from one harvest, in --out/<point>"),
    layer: Optional[str] = typer.Option(None, "--layer", help="block index (default: the points an existing --store holds, else the middle layer, 15 on SmolLM2); "
                                        "several (A-B or A,B) train one SAE each"),
    site: str = typer.Option("resid_post", "--site", help="resid_pre, resid_mid, resid_post, attn_out or mlp_out"),
    arch: str = typer.Option("topk", "--arch", help="relu, topk, batchtopk, jumprelu or topafa"),
    k: int = typer.Option(32, "--k", help="active latents per token (topk; mean per token for batchtopk)"),
    l1: float = typer.Option(5.0, "--l1", help="L1 coefficient (relu)"),
    l0: float = typer.Option(1.0, "--l0", help="L0 coefficient (jumprelu)"),
    width: Optional[int] = typer.Option(None, "--width", help="number of latents d_sae (overrides --expansion)"),
    expansion: int = typer.Option(8, "--expansion", help="d_sae = expansion * d_in"),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="training tokens (default: every token a --store holds, "
                                         "else 1,000,000)"),
    batch_tokens: int = typer.Option(4096, "--batch-tokens", help="tokens per training step, over all ranks (under torchrun "
                                     "each of N ranks trains on batch-tokens / N of them)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="peak learning rate (default: scaled with width)"),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP + " (default: with --store, the text the store was "
                                       "made from; else builtin)"),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="text column of a table file (default: the store's, else text)"),
    ctx_len: int = typer.Option(128, "--ctx-len", help="context length in tokens, BOS included"),
    shuffle_tokens: int = typer.Option(2**17, "--shuffle-tokens", help="streaming (no --store): rows are shuffled within "
                                       "blocks of this many tokens, held in memory (tokens x d_in floats)"),
    store: Optional[Path] = typer.Option(None, "--store", help="activation store to train from (harvested there first if missing); default: stream"),
    resume: bool = typer.Option(False, "--resume", help="continue from the checkpoint in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the run already in --out"),
    checkpoint_minutes: float = typer.Option(10.0, "--checkpoint-minutes", help="write a checkpoint every this many minutes (0: off)"),
    checkpoint_steps: int = typer.Option(0, "--checkpoint-steps", help="write a checkpoint every this many steps (0: off)"),
    eval_tokens: int = typer.Option(10_000, "--eval-tokens", help="tokens for the evaluation after training (0: skip it)"),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP + "; under torchrun cuda means cuda:LOCAL_RANK"),
    dist_timeout: float = typer.Option(600.0, "--dist-timeout", help="under torchrun: seconds a rank waits for the others "
                                       "in a collective before it gives up with an error"),
    dtype: str = typer.Option("float32", "--dtype", help="the model's weights: float32, bfloat16 or float16 (the SAE trains in float32)"),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="spread a model too large for one device over several "
                                             "with accelerate: auto, balanced, ... (one process; the SAE trains on --device)"),
    extend: bool = typer.Option(False, "--extend", help="with a --store holding fewer tokens than --tokens: harvest the "
                                "rest into it (it says how many, from which text, before it starts)"),
    store_dtype: str = typer.Option("float32", "--store-dtype", help="dtype of a --store harvested here: float32, float16 or "
                                    "bfloat16 (half the disk; the precision loss is measured and printed)"),
    shard_latents: int = typer.Option(1, "--shard-latents", help="under torchrun: split a topk SAE's latents over this many "
                                      "ranks (it must divide the number of ranks and the width; the rest is data parallel)"),
    distribute_points: bool = typer.Option(False, "--distribute-points", help="under torchrun: give each rank its own share "
                                           "of the --hooks points; it harvests and trains only those SAEs, with no gradient "
                                           "communication (at least as many points as ranks)"),
    autocast: Optional[str] = typer.Option(None, "--autocast", help="run the SAE's forward and loss under torch.autocast in "
                                           "bfloat16 or float16, with float32 master weights (GPUs with bf16 tensor cores; "
                                           "slower on most CPUs)"),
) -> None:
    """Train an SAE on one hook point, save it in SAELens's layout, then evaluate it on held-out text.

    Under `torchrun --nproc-per-node N -m interp sae train ...` the N ranks train one SAE data-parallel
    (docs/scaling.md): the same SAE as one process, only rank 0 writes. With `--shard-latents S` each
    group of S ranks holds one SAE split over its latents (an SAE wider than one device). With several
    --hooks points and `--distribute-points` each rank trains the SAEs of its own points.
    """
    from saes.plan import Layout, TrainPlan

    plan = TrainPlan(out=out, model=model, hooks=hooks, layer=layer, site=site, arch=arch, k=k, l1=l1, l0=l0, width=width,
                     expansion=expansion, tokens=tokens, batch_tokens=batch_tokens, lr=lr, data=data, text_field=text_field,
                     ctx_len=ctx_len, shuffle_tokens=shuffle_tokens, store=store, store_dtype=store_dtype, extend=extend, resume=resume, overwrite=overwrite,
                     checkpoint_minutes=checkpoint_minutes, checkpoint_steps=checkpoint_steps, eval_tokens=eval_tokens, seed=seed,
                     device=device, dist_timeout=dist_timeout, dtype=dtype, device_map=device_map, autocast=autocast,
                     layout=Layout(shard_latents, distribute_points))
    train_plan(plan)


def train_plan(plan) -> None:
    """Train `plan` (a `saes.plan.TrainPlan`) in this process or as one rank under torchrun, then evaluate:
    rank 0 (each rank its own points' SAEs under --distribute-points), after the group is gone."""
    from interp.distributed import process_group
    from saes.run import run_plan

    quiet = console.quiet
    try:
        with process_group(plan.device, plan.dist_timeout) as (world, rank_device):
            console.quiet = quiet or not world.is_main
            trained = run_plan(plan, world, rank_device if world.parallel else plan.device, console)
            evaluates = bool(plan.eval_tokens) and (world.is_main or plan.layout.distribute_points)
        if evaluates:  # however long that takes, while the other ranks exit
            _evaluate_trained(trained, plan.eval_tokens)
    finally:
        console.quiet = quiet


def _evaluate_trained(trained, tokens: int) -> None:
    """Evaluate each trained SAE on held-out text: after the text training read, or on the built-in
    corpus when that text cannot be read here."""
    from saes.sources import read_text_source

    text, skip = trained.text, trained.train_contexts
    if not text.readable:
        console.print(f"[yellow]note:[/] the store's text ({text.source}) cannot be read here; evaluating on the built-in "
                      "corpus instead (interp sae eval --data FILE evaluates on text of your choice)")
        text, skip = read_text_source("builtin", "text"), 0
    for p, sae in trained.saes.items():
        folder = trained.folders[p]
        _eval_and_report(sae, trained.bridge, text.source, tokens, folder, sae.cfg.context_size, 8, skip, text.text_field, True,
                         folder)


def _sae_folder(folder: Optional[Path], option: Optional[Path]) -> Path:
    """The SAE folder given as the argument or as --sae (exactly one of them)."""
    if (folder is None) == (option is None):
        raise InterpError("give the SAE folder once: as the argument (sae eval DIR) or as --sae DIR")
    return folder or option


def _load_for(sae_dir: Path, model: Optional[str], device: Optional[str]):
    from interp import load_model
    from saes.io import load_sae

    sae = load_sae(sae_dir)
    spec = model or sae.cfg.model_name or "default"
    try:
        bridge = load_model(spec, device=device)
    except InterpError as exc:
        if model is None:
            raise InterpError(f"could not load the SAE's model {spec!r} ({exc}); pass --model") from None
        raise
    trained_on = (sae.cfg.manifest or {}).get("model") or sae.cfg.model_name
    if trained_on and bridge.interp_name != trained_on:
        # Either the model the SAE names under another name, or an explicit --model: the user's
        # choice (e.g. an SAE carried from a base to a chat model), so the name is not checked.
        if model is not None:
            console.print(f"[yellow]note:[/] the SAE was trained on {trained_on!r}; running it on {bridge.interp_name!r}")
        if sae.cfg.manifest:
            sae.cfg.manifest = {**sae.cfg.manifest, "model": None}
    return sae, bridge


@app.command("eval")
def eval_(
    folder: Optional[Path] = typer.Argument(None, metavar="[SAE]", help="SAE folder (cfg.json + sae_weights.safetensors; ours or "
                                            "SAELens's); or give it as --sae"),
    sae: Optional[Path] = typer.Option(None, "--sae", help="SAE folder (cfg.json + sae_weights.safetensors; ours or SAELens's)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " (default: the SAE's model)"),
    hook: Optional[str] = typer.Option(None, "--hook", help="hook point (default: the one the SAE was trained on)"),
    data: str = typer.Option("builtin", "--data", help=DATA_HELP),
    text_field: str = typer.Option("text", "--text-field", help=TEXT_FIELD_HELP),
    tokens: int = typer.Option(10_000, "--tokens", help="evaluation tokens"),
    skip_tokens: Optional[int] = typer.Option(None, "--skip-tokens", help="skip this many tokens at the start of the data "
                                              "(default: the SAE's training text, when --data is the text it was trained on)"),
    ctx_len: Optional[int] = typer.Option(None, "--ctx-len", help="context length (default: the SAE's)"),
    batch_contexts: int = typer.Option(8, "--batch-contexts", help="contexts per forward pass"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for report.html and results.json (default: the SAE folder)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Measure an SAE: MSE, variance explained, L0, dead/dense latents, CE loss recovered."""
    from interp.data import fingerprint
    from saes.io import check_sae

    positive(tokens, "--tokens")
    positive(batch_contexts, "--batch-contexts")
    if skip_tokens is not None and skip_tokens < 0:
        raise InterpError(f"--skip-tokens must be 0 or positive, got {skip_tokens}")
    sae_dir = _sae_folder(folder, sae)
    sae, bridge = _load_for(sae_dir, model, device)
    if hook is not None:
        check_sae(sae, bridge, hook)
    ctx = ctx_len or sae.cfg.context_size or 128
    trained_text = (sae.cfg.manifest or {}).get("data_fingerprint")
    same_text = trained_text is not None and trained_text == fingerprint(data, text_field)
    span = training_span(sae.cfg) if same_text else None
    if skip_tokens is None:
        skip_tokens = span or 0
    held_out: bool | None = None if trained_text is None else (not same_text or (span is not None and skip_tokens >= span))
    if same_text and span is not None and skip_tokens < span:
        console.print(f"[yellow]note:[/] the SAE trained on the first {span:,} tokens of this text; "
                      f"skipping {skip_tokens:,} evaluates on some of them")
    _eval_and_report(sae, bridge, data, tokens, out or sae_dir, ctx, batch_contexts, math.ceil(skip_tokens / (ctx - 1)),
                     text_field, held_out, sae_dir)


@app.command()
def features(
    folder: Optional[Path] = typer.Argument(None, metavar="[SAE]", help="SAE folder (cfg.json + sae_weights.safetensors; ours or "
                                            "SAELens's); or give it as --sae"),
    sae: Optional[Path] = typer.Option(None, "--sae", help="SAE folder (cfg.json + sae_weights.safetensors; ours or SAELens's)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " (default: the SAE's model)"),
    hook: Optional[str] = typer.Option(None, "--hook", help="hook point (default: the one the SAE was trained on)"),
    data: str = typer.Option("builtin", "--data", help=DATA_HELP),
    text_field: str = typer.Option("text", "--text-field", help=TEXT_FIELD_HELP),
    tokens: int = typer.Option(50_000, "--tokens", help="tokens to scan for top activations"),
    latents: str = typer.Option("0-99", "--latents", help="latents to show: all, N, A-B or a comma list"),
    top_n: int = typer.Option(10, "--top-n", help="top contexts shown per latent"),
    n_logits: int = typer.Option(10, "--n-logits", help="promoted / suppressed tokens per latent"),
    ctx_len: Optional[int] = typer.Option(None, "--ctx-len", help="context length (default: the SAE's)"),
    batch_contexts: int = typer.Option(8, "--batch-contexts", help="contexts per forward pass"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for dashboard.html and features.json (default: the SAE folder)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Write a feature dashboard: top contexts, density and logit effects per latent."""
    from saes.features import analyze_features, write_dashboard

    positive(tokens, "--tokens")
    positive(top_n, "--top-n")
    positive(n_logits, "--n-logits")
    sae_dir = _sae_folder(folder, sae)
    sae, bridge = _load_for(sae_dir, model, device)
    chosen = parse_latents(latents, sae.cfg.d_sae)
    analysis = analyze_features(sae, bridge, data, tokens, latents=chosen, point=hook, n_top=top_n, n_logits=n_logits,
                                ctx_len=ctx_len, batch_size=batch_contexts, text_field=text_field)
    html_path, json_path = write_dashboard((out or sae_dir) / "dashboard.html", analysis)
    dead = sum(1 for d in analysis["feature_density"] if d == 0)
    console.print(f"scanned {analysis['n_tokens']:,} tokens; {dead} of {sae.cfg.d_sae} latents never fired")
    console.print(f"wrote {html_path} ({len(chosen)} latents) and {json_path}")


def register(root: typer.Typer) -> None:
    """Add `interp sae ...` to the `interp` command (the `interp.commands` entry point of this package)."""
    root.add_typer(app, name="sae")

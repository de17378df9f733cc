"""`interp sae train | eval | features`: train an SAE on a hook point, measure it, browse its latents.

Every command prints where its outputs went. Mistakes a user can make raise `InterpError`,
which `interp.cli.main` prints as one line with a non-zero exit status.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from interp.errors import InterpError
from saes.sources import check_store_folder, stream_source, training_span

app = typer.Typer(
    help="Train sparse autoencoders on a hook point, evaluate them (reconstruction, sparsity, "
    "CE loss recovered), and write feature dashboards. Files use SAELens's layout.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()

MODEL_HELP = "'default' (embedded SmolLM2-135M-Instruct), a local HF model directory, or a hub name"
DATA_HELP = "builtin, builtin:NAME, a .txt/.jsonl/.csv/.parquet file, or a hub dataset"
DEVICE_HELP = "cpu, cuda, cuda:N (default: cuda if present)"


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


def _positive(value: int, flag: str) -> None:
    if value <= 0:
        raise InterpError(f"{flag} must be positive, got {value}")


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
    hook: Optional[str] = typer.Option(None, "--hook", help="hook point name, e.g. blocks.15.hook_resid_post (overrides "
                                       "--layer/--site); several points (resid_post:4-7, or names joined by ';') train one "
                                       "SAE each from one harvest, in --out/<point>"),
    layer: Optional[int] = typer.Option(None, "--layer", help="block index (default: the middle layer, 15 on SmolLM2)"),
    site: str = typer.Option("resid_post", "--site", help="resid_pre, resid_mid, resid_post, attn_out or mlp_out"),
    arch: str = typer.Option("topk", "--arch", help="relu, topk, batchtopk, jumprelu or topafa"),
    k: int = typer.Option(32, "--k", help="active latents per token (topk; mean per token for batchtopk)"),
    l1: float = typer.Option(5.0, "--l1", help="L1 coefficient (relu)"),
    l0: float = typer.Option(1.0, "--l0", help="L0 coefficient (jumprelu)"),
    width: Optional[int] = typer.Option(None, "--width", help="number of latents d_sae (overrides --expansion)"),
    expansion: int = typer.Option(8, "--expansion", help="d_sae = expansion * d_in"),
    tokens: int = typer.Option(1_000_000, "--tokens", help="training tokens"),
    batch_size: int = typer.Option(4096, "--batch-size", help="tokens per training step, over all ranks (under torchrun "
                                   "each of N ranks trains on batch-size / N of them)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="peak learning rate (default: scaled with width)"),
    data: str = typer.Option("builtin", "--data", help=DATA_HELP),
    text_field: str = typer.Option("text", "--text-field", help="text column of a table file"),
    ctx_len: int = typer.Option(128, "--ctx-len", help="context length in tokens, BOS included"),
    store: Optional[Path] = typer.Option(None, "--store", help="activation store to train from (harvested there first if missing); default: stream"),
    resume: bool = typer.Option(False, "--resume", help="continue from the checkpoint in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the run already in --out"),
    checkpoint_minutes: float = typer.Option(10.0, "--checkpoint-minutes", help="write a checkpoint every this many minutes (0: off)"),
    checkpoint_steps: int = typer.Option(0, "--checkpoint-steps", help="write a checkpoint every this many steps (0: off)"),
    eval_tokens: int = typer.Option(10_000, "--eval-tokens", help="tokens for the evaluation after training (0: skip it)"),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP + "; under torchrun cuda means cuda:LOCAL_RANK"),
    dist_timeout: float = typer.Option(600.0, "--dist-timeout", help="under torchrun: seconds a rank waits for the others "
                                       "in a collective before it gives up with an error"),
    dtype: str = typer.Option("float32", "--dtype", help="the model's weights: float32, bfloat16 or float16 (the SAE trains in float32)"),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="spread a model too large for one device over several "
                                             "with accelerate: auto, balanced, ... (one process; the SAE trains on --device)"),
    store_dtype: str = typer.Option("float32", "--store-dtype", help="dtype of a --store harvested here: float32, float16 or "
                                    "bfloat16 (half the disk; the precision loss is measured and printed)"),
    shard_latents: int = typer.Option(1, "--shard-latents", help="under torchrun: split a topk SAE's latents over this many "
                                      "ranks (it must divide the number of ranks and the width; the rest is data parallel)"),
    distribute_points: bool = typer.Option(False, "--distribute-points", help="under torchrun: give each rank its own share "
                                           "of the --hook points; it harvests and trains only those SAEs, with no gradient "
                                           "communication (at least as many points as ranks)"),
    autocast: Optional[str] = typer.Option(None, "--autocast", help="run the SAE's forward and loss under torch.autocast in "
                                           "bfloat16 or float16, with float32 master weights (GPUs with bf16 tensor cores; "
                                           "slower on most CPUs)"),
) -> None:
    """Train an SAE on one hook point, save it in SAELens's layout, then evaluate it on held-out text.

    Under `torchrun --nproc-per-node N -m interp sae train ...` the N ranks train one SAE data-parallel
    (docs/scaling.md): the same SAE as one process, only rank 0 writes. With `--shard-latents S` each
    group of S ranks holds one SAE split over its latents (an SAE wider than one device). With several
    --hook points and `--distribute-points` each rank trains the SAEs of its own points.
    """
    from interp.distributed import process_group

    quiet = console.quiet
    try:
        with process_group(device, dist_timeout) as (world, rank_device):
            console.quiet = quiet or not world.is_main
            evaluate = _train(out, model, hook, layer, site, arch, k, l1, l0, width, expansion, tokens, batch_size, lr, data,
                              text_field, ctx_len, store, resume, overwrite, checkpoint_minutes, checkpoint_steps,
                              eval_tokens, seed, rank_device if world.parallel else device, world,
                              model_dtype=dtype, device_map=device_map, store_dtype=store_dtype, shard_latents=shard_latents,
                              distribute_points=distribute_points, autocast=autocast)
        # After the group is gone: rank 0 evaluates (each rank its own points' SAEs under --distribute-points),
        # however long that takes, while the others exit.
        if evaluate is not None:
            evaluate()
    finally:
        console.quiet = quiet


def _train(out, model, hook, layer, site, arch, k, l1, l0, width, expansion, tokens, batch_size, lr, data, text_field,
           ctx_len, store, resume, overwrite, checkpoint_minutes, checkpoint_steps, eval_tokens, seed, device, world,
           model_dtype="float32", device_map=None, store_dtype="float32", shard_latents=1, distribute_points=False, autocast=None):
    """Train (every rank); return the evaluation to run on rank 0 afterwards, or None."""
    from interp import HookManager, load_model
    from interp.models import resolve_dtype
    from interp.store import ActivationStore, build_store, check_store
    from interp.data import fingerprint
    from interp.manifest import make_manifest
    from saes.architectures import SAEConfig
    from saes.io import point_width
    from saes.checkpoint import resumable
    from saes.train import (TrainConfig, check_out_dir, check_shard_latents, point_folder, split_points, train_sae,
                            train_saes)
    from saes.trainer import autocast_dtype

    _positive(tokens, "--tokens")
    _positive(batch_size, "--batch-size")
    _positive(expansion, "--expansion")
    if eval_tokens < 0:
        raise InterpError(f"--eval-tokens must be 0 or positive, got {eval_tokens}")
    if checkpoint_minutes < 0 or checkpoint_steps < 0:
        raise InterpError("--checkpoint-minutes and --checkpoint-steps must be 0 (off) or positive")
    if distribute_points and shard_latents > 1:
        raise InterpError("--distribute-points and --shard-latents cannot be combined (not supported): drop one of them")
    autocast_dtype(autocast)  # an unknown name is refused here
    if autocast is not None and shard_latents > 1:
        raise InterpError("--autocast is not supported with --shard-latents: drop one of them")
    check_shard_latents(shard_latents, world.size, arch, width)
    data_ranks = 1 if distribute_points else world.size // shard_latents
    if batch_size % data_ranks:
        raise InterpError(f"--batch-size {batch_size} (tokens per step over all ranks) does not split evenly over "
                          f"{data_ranks} {'data ' if shard_latents > 1 else ''}ranks: choose a multiple of {data_ranks}")
    # Everything that can be refused is refused before the model loads or anything is written.
    if device_map is not None and world.parallel:
        raise InterpError("--device-map spreads one model over every GPU, so it runs in one process: start it without torchrun")
    stored_dtype = resolve_dtype(store_dtype)
    check_out_dir(out, resume, overwrite)
    if resume and not distribute_points:
        resumable(out, shard_latents)  # a checkpoint of another latent sharding is refused here
    if store is not None:
        check_store_folder(store)
    bridge = load_model(model, device=None if device_map else device, dtype=model_dtype, device_map=device_map)
    hm = HookManager(bridge)
    if hook is None:
        hook = f"{site}:{hm.n_layers // 2 if layer is None else layer}"
    names = hm.resolve(hook)
    multi = len(names) > 1 or distribute_points  # one SAE per point, each in --out/<point>
    mine = split_points(names, world) if distribute_points else names  # the points this rank trains
    point = names[0]
    data_fp = fingerprint(data, text_field)
    have = None
    if store is not None and (store / "manifest.json").exists():
        check_store(store, bridge.interp_name, mine, data_fp, ctx_len, text_field)
        have = ActivationStore(store)
    body = ctx_len - 1
    # Contexts from the start of the text that training may read: evaluation starts after them.
    train_contexts = math.ceil(max(tokens, have.n_tokens if have is not None else 0) / body) if store else math.ceil(tokens / body)

    def sae_config(p: str) -> SAEConfig:
        d_in = point_width(hm, p)
        return SAEConfig(
            d_in=d_in,
            d_sae=width if width is not None else expansion * d_in,
            arch=arch,
            k=k if arch in ("topk", "batchtopk") else None,
            l1_coefficient=l1,
            l0_coefficient=l0,
            model_name=bridge.interp_name,
            hook_name=p,
            hook_layer=hm.layer_of(p) if hm.layer_of(p) is not None else -1,
            context_size=ctx_len,
            dataset=data,
            manifest=make_manifest(bridge.interp_name, {p: d_in}, data_fp, ctx_len),
            train_contexts=train_contexts,
        )

    cfgs = {p: sae_config(p) for p in mine}
    for c in cfgs.values():
        check_shard_latents(shard_latents, world.size, arch, c.d_sae)  # the width is known now
    tcfg = TrainConfig(n_tokens=tokens, batch_size=batch_size, lr=lr, seed=seed, device=device,
                       checkpoint_every=checkpoint_steps, checkpoint_minutes=checkpoint_minutes or None, autocast=autocast)
    if store is not None:
        if (have is None or have.n_tokens < tokens) and world.parallel:
            raise InterpError(f"--store {store} holds fewer than {tokens:,} tokens of {', '.join(mine)}: build it in one process "
                              f"first (interp cache, or this command without torchrun), then start the {world.size} ranks")
        if have is None or have.n_tokens < tokens:
            have = build_store(bridge, names if multi else point, data, tokens, store, ctx_len=ctx_len, text_field=text_field,
                               dtype=stored_dtype)
            console.print(f"activations stored in {store}")
            for loss in (have.precision_loss or {}).values():
                console.print(f"{store_dtype} store: relative RMS error {loss['relative_rms_error']:.2e} against float32, "
                              f"largest absolute error {loss['max_abs_error']:.3g}")
        source: Any = have.batches(mine if multi else point, batch_size=batch_size, shuffle=True, seed=seed)
    else:
        # With --distribute-points every rank harvests its own points: no split of the forwards.
        source = stream_source(bridge, mine if multi else [point], data, tokens, ctx_len, batch_size, seed,
                                tcfg.resolved_device(), text_field, progress=world.is_main, split=not distribute_points,
                                dicts=multi)

    for p, c in cfgs.items():
        console.print(f"training a {c.arch} SAE with {c.d_sae} latents on {p} (d_in {c.d_in}) for {tokens:,} tokens")
    if distribute_points and world.parallel:
        console.print(f"--distribute-points: {len(names)} points over {world.size} ranks; rank 0 trains {', '.join(mine)}")
    try:
        if multi:
            saes = train_saes(source, cfgs, tcfg, out, resume=resume, overwrite=overwrite, shard_latents=shard_latents,
                              distribute_points=distribute_points)
        else:
            saes = {point: train_sae(source, cfgs[point], tcfg, out, resume=resume, overwrite=overwrite,
                                     shard_latents=shard_latents)}
    except KeyboardInterrupt:
        console.print(f"interrupted: a checkpoint is in {out}; run the same command with --resume to continue")
        raise
    folders = {p: out / point_folder(p) if multi else out for p in saes}
    for folder in folders.values():
        console.print(f"saved the SAE to {folder} (cfg.json, sae_weights.safetensors; loads in SAELens with SAE.load_from_disk)")
    if eval_tokens and (world.is_main or distribute_points):
        def evaluate() -> None:
            for p, sae in saes.items():
                _eval_and_report(sae, bridge, data, eval_tokens, folders[p], ctx_len, 8, train_contexts, text_field, True,
                                 folders[p])

        return evaluate
    return None


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
    sae_dir: Path = typer.Argument(..., help="SAE folder (cfg.json + sae_weights.safetensors; ours or SAELens's)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " (default: the SAE's model)"),
    hook: Optional[str] = typer.Option(None, "--hook", help="hook point (default: the one the SAE was trained on)"),
    data: str = typer.Option("builtin", "--data", help=DATA_HELP),
    text_field: str = typer.Option("text", "--text-field", help="text column of a table file"),
    tokens: int = typer.Option(10_000, "--tokens", help="evaluation tokens"),
    skip_tokens: Optional[int] = typer.Option(None, "--skip-tokens", help="skip this many tokens at the start of the data "
                                              "(default: the SAE's training text, when --data is the text it was trained on)"),
    ctx_len: Optional[int] = typer.Option(None, "--ctx-len", help="context length (default: the SAE's)"),
    batch_size: int = typer.Option(8, "--batch-size", help="contexts per forward pass"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for report.html and results.json (default: the SAE folder)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Measure an SAE: MSE, variance explained, L0, dead/dense latents, CE loss recovered."""
    from interp.data import fingerprint
    from saes.io import check_compatible

    _positive(tokens, "--tokens")
    _positive(batch_size, "--batch-size")
    if skip_tokens is not None and skip_tokens < 0:
        raise InterpError(f"--skip-tokens must be 0 or positive, got {skip_tokens}")
    sae, bridge = _load_for(sae_dir, model, device)
    if hook is not None:
        check_compatible(sae, bridge, hook)
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
    _eval_and_report(sae, bridge, data, tokens, out or sae_dir, ctx, batch_size, math.ceil(skip_tokens / (ctx - 1)),
                     text_field, held_out, sae_dir)


@app.command()
def features(
    sae_dir: Path = typer.Argument(..., help="SAE folder (cfg.json + sae_weights.safetensors; ours or SAELens's)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " (default: the SAE's model)"),
    hook: Optional[str] = typer.Option(None, "--hook", help="hook point (default: the one the SAE was trained on)"),
    data: str = typer.Option("builtin", "--data", help=DATA_HELP),
    text_field: str = typer.Option("text", "--text-field", help="text column of a table file"),
    tokens: int = typer.Option(50_000, "--tokens", help="tokens to scan for top activations"),
    latents: str = typer.Option("0-99", "--latents", help="latents to show: all, N, A-B or a comma list"),
    n_top: int = typer.Option(10, "--n-top", help="top contexts per latent"),
    n_logits: int = typer.Option(10, "--n-logits", help="promoted / suppressed tokens per latent"),
    ctx_len: Optional[int] = typer.Option(None, "--ctx-len", help="context length (default: the SAE's)"),
    batch_size: int = typer.Option(8, "--batch-size", help="contexts per forward pass"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for dashboard.html and features.json (default: the SAE folder)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Write a feature dashboard: top contexts, density and logit effects per latent."""
    from saes.features import analyze_features, write_dashboard

    _positive(tokens, "--tokens")
    _positive(n_top, "--n-top")
    _positive(n_logits, "--n-logits")
    sae, bridge = _load_for(sae_dir, model, device)
    chosen = parse_latents(latents, sae.cfg.d_sae)
    analysis = analyze_features(sae, bridge, data, tokens, latents=chosen, point=hook, n_top=n_top, n_logits=n_logits,
                                ctx_len=ctx_len, batch_size=batch_size, text_field=text_field)
    html_path, json_path = write_dashboard((out or sae_dir) / "dashboard.html", analysis)
    dead = sum(1 for d in analysis["feature_density"] if d == 0)
    console.print(f"scanned {analysis['n_tokens']:,} tokens; {dead} of {sae.cfg.d_sae} latents never fired")
    console.print(f"wrote {html_path} ({len(chosen)} latents) and {json_path}")

"""`interp steer map|transfer`: fit a map between two models' residual streams, carry a vector across.

`steer map` reads both models on the same texts, pairs their activations at shared token
boundaries (`interp.steering.alignment`), fits an affine or autoencoder map
(`interp.steering.transfer`) on 80% of the texts and reports its held-out fraction of variance
explained on the rest. `steer transfer` maps a steering vector through it and, on the target
model, measures it beside a vector built there natively (`--native`): the same held-out probe
scorer, lexicon and fluency loss, at the same alphas in units of the mean residual norm.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import typer

from interp.cli_common import DATA_HELP, DEVICE_HELP, MODEL_HELP, TEXT_FIELD_HELP
from interp.errors import InterpError


def _passages(data: str, text_field: str, n_chars: int, limit: int) -> list[str]:
    """Up to `limit` passages of about `n_chars` characters, cut at whitespace, from `data`'s documents."""
    from interp.data import iter_texts

    out: list[str] = []
    for doc in iter_texts(data, text_field):
        words = doc.split()
        start = 0
        while start < len(words) and len(out) < limit:
            piece, size = [], 0
            while start < len(words) and size < n_chars:
                piece.append(words[start])
                size += len(words[start]) + 1
                start += 1
            if size >= n_chars // 2:
                out.append(" ".join(piece))
        if len(out) >= limit:
            break
    if len(out) < 2:
        raise InterpError(f"{data} gives fewer than 2 passages of {n_chars // 2}+ characters: give more text")
    return out


def map_command(
    from_model: str = typer.Option(..., "--from-model", help="source model: " + MODEL_HELP),
    to_model: str = typer.Option(..., "--to-model", help="target model: " + MODEL_HELP),
    hook_from: str = typer.Option(..., "--hook-from", help="source hook point, e.g. blocks.9.hook_resid_post"),
    hook_to: str = typer.Option(..., "--hook-to", help="target hook point, e.g. blocks.6.hook_resid_post"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for map.safetensors + map.json, results.json and report.html"),
    kind: str = typer.Option("affine", "--kind", help="affine (closed-form ridge) or autoencoder (encoder, ReLU, decoder; Adam)"),
    data: str = typer.Option("builtin", "--data", help="text both models read: " + DATA_HELP),
    text_field: str = typer.Option("text", "--text-field", help=TEXT_FIELD_HELP),
    texts: int = typer.Option(400, "--texts", help="passages to read (80% fit the map, 20% measure it)"),
    chars: int = typer.Option(400, "--chars", help="characters per passage"),
    hidden: int = typer.Option(1024, "--hidden", help="autoencoder: hidden width"),
    steps: int = typer.Option(2000, "--steps", help="autoencoder: Adam steps"),
    lr: float = typer.Option(1e-3, "--lr", help="autoencoder: peak learning rate"),
    ridge: float = typer.Option(1e-4, "--ridge", help="affine: ridge penalty relative to the mean source variance"),
    batch_texts: int = typer.Option(8, "--batch-texts", help="texts (passages) per forward pass"),
    seed: int = typer.Option(0, "--seed", help="seed of the fit/held-out split and of the autoencoder"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Fit a map from one model's activations to another's, on the same text aligned by characters."""
    import torch

    from interp import load_model
    from interp.atomic import write_json
    from interp.data import fingerprint
    from interp.hooks import HookManager
    from interp.reports import html_table, write_report
    from interp.steering.alignment import aligned_activations
    from interp.steering.transfer import KINDS, fit_map, fve

    if kind not in KINDS:
        raise InterpError(f"unknown --kind {kind!r}: use affine or autoencoder")
    if texts < 10 or chars < 20:
        raise InterpError(f"--texts must be at least 10 and --chars at least 20 (got {texts}, {chars})")
    passages = _passages(data, text_field, chars, texts)
    random.Random(seed).shuffle(passages)
    n_fit = int(0.8 * len(passages))
    source, target = load_model(from_model, device=device), load_model(to_model, device=device)
    fit = aligned_activations(source, target, passages[:n_fit], hook_from, hook_to, batch_texts, progress=True)
    held = aligned_activations(source, target, passages[n_fit:], hook_from, hook_to, batch_texts, progress=True)
    options = {"ridge": ridge} if kind == "affine" else {"hidden": hidden, "steps": steps, "lr": lr, "seed": seed}
    amap = fit_map(kind, fit.source, fit.target, **options)
    with torch.no_grad():
        pred = amap(held.source)
        train_fve, heldout_fve = fve(amap(fit.source), fit.target), fve(pred, held.target)
        cos = torch.nn.functional.cosine_similarity(pred, held.target, dim=1).mean()
        centred = (held.target - held.target.mean(0)).pow(2).sum(0).clamp_min(1e-30)
        per_dim = (1 - (held.target - pred).pow(2).sum(0) / centred).tolist()  # held-out FVE of each target dimension
    point_from, point_to = HookManager(source).resolve(hook_from)[0], HookManager(target).resolve(hook_to)[0]
    stats = {
        "source_model": source.interp_name, "target_model": target.interp_name, "source_spec": from_model, "target_spec": to_model,
        "source_point": point_from, "target_point": point_to, "data": data, "data_fingerprint": fingerprint(data, text_field),
        "n_texts_fit": n_fit, "n_texts_heldout": len(passages) - n_fit, "n_rows_fit": len(fit), "n_rows_heldout": len(held),
        "train_fve": train_fve, "heldout_fve": heldout_fve, "heldout_cosine": float(cos),
        "source_mean_norm": float(fit.source.norm(dim=1).mean()), "target_mean_norm": float(fit.target.norm(dim=1).mean()),
        "map_dir": str(out),
    }
    amap.info.update(stats)
    amap.save(out)
    write_json(out / "results.json", {k: v for k, v in amap.info.items() if k != "loss_history"} | {"kind": kind})
    import plotly.graph_objects as go

    figures = [go.Figure(go.Histogram(x=per_dim, nbinsx=50), layout={
        "title": f"held-out FVE of each of the {len(per_dim)} target dimensions", "xaxis_title": "FVE", "yaxis_title": "dimensions"})]
    if "loss_history" in amap.info:
        hist = amap.info["loss_history"]
        figures.append(go.Figure(go.Scatter(x=[h["step"] for h in hist], y=[h["loss"] for h in hist], mode="lines"),
                                 layout={"title": "autoencoder training loss (standardised MSE)", "xaxis_title": "step",
                                         "yaxis_title": "loss", "yaxis_type": "log"}))
    rows = [{"": k, "value": v} for k, v in stats.items() if k != "map_dir"]
    write_report(out / "report.html", f"Activation map {point_from} ({source.interp_name}) -> {point_to} ({target.interp_name})",
                 figures=figures, sections=[html_table(rows)],
                 intro=f"{kind} map fitted on {len(fit):,} aligned token pairs; held-out FVE {heldout_fve:.3f} on {len(held):,} pairs.")
    typer.echo(f"{kind} map {point_from} -> {point_to}: {len(fit):,} aligned pairs, FVE train {train_fve:.3f}, "
               f"held-out {heldout_fve:.3f} (cosine {float(cos):.3f})")
    typer.echo(f"wrote {out}/map.safetensors, map.json, results.json and report.html")


def transfer_command(
    vector: Path = typer.Option(..., "--vector", help="steering vector folder built on the map's source model"),
    map_dir: Path = typer.Option(..., "--map", help="map folder from `interp steer map`"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the transferred vector, results.json and report.html"),
    native: Optional[Path] = typer.Option(None, "--native", help="a vector built on the target model itself, evaluated beside it"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="target model (default: the one the map was fitted to)"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="measure the vector(s) on the target model"),
    prompts: str = typer.Option("builtin", "--prompts", help="prompts: builtin (neutral openings) or a .txt/.jsonl file"),
    alphas: str = typer.Option("-0.5,0,0.5", "--alphas", help="comma list of alphas in --alpha-unit (0 = unsteered)"),
    alpha_unit: str = typer.Option("norm", "--alpha-unit", help="norm (multiples of the mean residual norm: the same push for both "
                                   "vectors) or vector (multiples of each stored vector)"),
    seeds: int = typer.Option(2, "--seeds", help="seeds per prompt (the same seeds at every alpha)"),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", help="tokens to generate per run"),
    temperature: float = typer.Option(0.7, "--temperature", help="sampling temperature; 0 is greedy"),
    labelled: Optional[str] = typer.Option(None, "--labelled", help="labelled data of the probe scorer (default: builtin:sentiment)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Carry a steering vector through a map onto the target model, and measure it there."""
    import torch

    from interp import load_model
    from interp.atomic import write_json
    from interp.steering import (BUILTIN_PROMPTS, LexiconScorer, SteeringVector, check_vector, eval_figure, evaluate as run_eval,
                                 fit_sentiment_probe, read_texts)
    from interp.steering.transfer import ActivationMap, transfer_vector
    from interp.reports import html_table, write_report
    from interp.cli_common import parse_alphas

    amap = ActivationMap.load(map_dir)
    moved = transfer_vector(SteeringVector.load(vector), amap)
    moved.params["map"]["map_dir"] = str(map_dir)
    moved.save(out)
    point = moved.points[0]
    result: dict = {"map": {k: v for k, v in amap.info.items() if k != "loss_history"} | {"kind": amap.kind},
                    "transferred": moved.describe(), "vector_dir": str(vector), "curves": {}}
    typer.echo(f"transferred {vector} ({amap.info.get('source_point')}, {amap.info.get('source_model')}) to {point} "
               f"({moved.model_name}): |v| {moved.norms[point]:.4g}; wrote {out}/vector.safetensors and vector.json")
    other = SteeringVector.load(native) if native is not None else None
    if other is not None:
        if point not in other.directions:
            raise InterpError(f"the native vector has {other.points} but the transferred one is at {point}: build it at {point}")
        cos = float(torch.nn.functional.cosine_similarity(moved.directions[point], other.directions[point], dim=0))
        result["cosine_to_native"] = cos
        typer.echo(f"cosine to the native vector at {point}: {cos:.3f}")
    if evaluate:
        lm = load_model(model or str(amap.info.get("target_spec") or amap.info.get("target_model")), device=device)
        vectors = {"transferred": moved, **({"native": other} if other is not None else {})}
        for vec in vectors.values():
            check_vector(lm, vec)
        # one probe scorer for both, trained on none of either vector's build texts
        used = sorted({h for vec in vectors.values() for h in vec.source.get("text_hashes", [])})
        probe = fit_sentiment_probe(lm, point, SteeringVector(moved.directions, moved.model_name, "union",
                                                              source={"text_hashes": used}), labelled)
        scorers = {"lexicon": LexiconScorer(), "probe_p_positive": probe}
        result["probe"] = {"point": probe.point, "test_accuracy": probe.test_accuracy_, "n_test": probe.n_test_}
        prompt_list = BUILTIN_PROMPTS if prompts == "builtin" else read_texts(prompts)
        alpha_list = parse_alphas(alphas)
        baseline: dict = {}
        for name, vec in vectors.items():
            todo = [a for a in alpha_list if not (a == 0 and baseline)]  # the unsteered runs are the same for both
            curve = run_eval(lm, vec, prompt_list, todo, scorers, seeds=list(range(seeds)), max_new_tokens=max_new_tokens,
                             temperature=temperature, alpha_unit=alpha_unit)["curve"]
            baseline = baseline or next((row for row in curve if row["alpha"] == 0), {})
            result["curves"][name] = sorted(curve + ([baseline] if len(todo) < len(alpha_list) else []), key=lambda r: r["alpha"])
        table = [{"vector": name, "alpha": row["alpha"], "probe_p_positive": row["probe_p_positive"], "lexicon": row["lexicon"],
                  "fluency_loss": row["fluency_loss"]} for name, curve in result["curves"].items() for row in curve]
        result["table"] = table
        for row in table:
            typer.echo(f"  {row['vector']:<11} alpha {row['alpha']:+.2f}: probe P(positive) {row['probe_p_positive']:.3f}, "
                       f"lexicon {row['lexicon']:+.3f}, fluency loss {row['fluency_loss']:.2f}")
        figures = [eval_figure(curve, title=f"{name} vector on {lm.interp_name}") for name, curve in result["curves"].items()]
        write_report(out / "report.html", f"Transferred steering vector on {lm.interp_name}", figures=figures,
                     sections=["<h2>Transferred beside native</h2>", html_table(table)],
                     intro=f"Map {amap.kind} {amap.info.get('source_point')} -> {point}, held-out FVE "
                           f"{amap.info.get('heldout_fve', float('nan')):.3f}; alphas in units of {alpha_unit}; "
                           f"probe scorer held-out accuracy {probe.test_accuracy_:.3f}.")
    write_json(out / "results.json", result)
    typer.echo(f"wrote {out}/results.json" + (" and report.html" if evaluate else ""))


def register(steer_app: typer.Typer) -> None:
    """Add `map` and `transfer` to the `steer` app."""
    steer_app.command("map")(map_command)
    steer_app.command("transfer")(transfer_command)


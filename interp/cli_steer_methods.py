"""The literature methods behind `interp steer build --method lineas`, LinEAS in `interp steer generate`,
and `interp steer export|import --gguf` (llama.cpp control vectors). SAE latents (`--method sae-features`)
come from `saes.cli_steer`, through `interp.steering.extensions`.

Mistakes a user can make raise `InterpError`; `interp.cli.main` prints it on one line and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from interp.errors import InterpError

LINEAS_POOLS = ("mean", "last", "tokens")


def check_lineas_options(pool: str, steps: int, lr: float, lambda_group: float, lambda_l1: float) -> None:
    """Fail before the model loads on settings `fit_lineas` would refuse."""
    if pool not in LINEAS_POOLS:
        raise InterpError(f"unknown --pool {pool!r} for --method lineas: use {', '.join(LINEAS_POOLS)}")
    if steps < 0:
        raise InterpError(f"--steps must be 0 or more, got {steps}")
    if not lr > 0:
        raise InterpError(f"--lr must be positive, got {lr}")
    if lambda_group < 0 or lambda_l1 < 0:
        raise InterpError(f"--lambda-group and --lambda-l1 must be 0 or more, got {lambda_group} and {lambda_l1}")


def build_lineas(lm: Any, pos: list[str], neg: list[str], points: list[str], out: Path, pool: str, steps: int, lr: float,
                 lambda_group: float, lambda_l1: float, seed: int, spec: dict) -> None:
    """Fit LinEAS maps carrying the negative texts (source) onto the positive ones (target); save them to `out`."""
    from interp.steering.lineas import fit_lineas

    maps = fit_lineas(lm, neg, pos, points, pool=pool, steps=steps, lr=lr, lambda_group=lambda_group, lambda_l1=lambda_l1,
                      seed=seed, progress=True)
    maps.params.update(spec)
    maps.save(out)
    active = ", ".join(f"{p} {n}/{maps.d_model}" for p, n in maps.active_dims().items())
    typer.echo(f"wrote {out}/lineas.safetensors and lineas.json: LinEAS from {len(neg)} negative (source) to {len(pos)} positive "
               f"(target) texts; loss {maps.params['loss_before']:.4g} -> {maps.params['loss_after']:.4g}; active dims {active}")


def generate_lineas(lm: Any, folder: Path, prompt: str, strength: float, kwargs: dict, compare: bool, alpha_unit: str,
                    positions: str, norm_preserve: bool) -> None:
    """`interp steer generate --vector LINEAS_DIR`: generate with the maps applied at strength `--alpha`."""
    from interp.steering import generate as steer_generate
    from interp.steering.lineas import LinEASMaps, apply_lineas

    if alpha_unit != "vector":
        raise InterpError("--alpha-unit applies to steering vectors; for LinEAS maps --alpha is the strength "
                          "(0 = unsteered, 1 = fitted map)")
    if positions != "all" or norm_preserve:
        raise InterpError("LinEAS maps act on every position as fitted: drop --positions and --norm-preserve")
    maps = LinEASMaps.load(folder)
    with apply_lineas(lm, maps, strength):
        steered = steer_generate(lm, prompt, None, 0.0, **kwargs)
    show_generation(lm, prompt, steered, kwargs, f"LinEAS (strength {strength:g})", compare)


def show_generation(lm, prompt: str, steered: str, kwargs: dict[str, Any], label: str, compare: bool) -> None:
    """Print the steered text, or with `compare` a table of the unsteered (same `kwargs`) and the steered one."""
    from interp.steering import generate as steer_generate

    if not compare:
        typer.echo(steered)
        return
    from rich.console import Console
    from rich.table import Table

    baseline = steer_generate(lm, prompt, None, 0.0, **kwargs)
    table = Table(title=f"{prompt!r} (seed {kwargs.get('seed')})", show_lines=True)
    table.add_column("unsteered")
    table.add_column(label)
    table.add_row(baseline, steered)
    Console().print(table)


def export_command(
    folder: Optional[Path] = typer.Argument(None, metavar="[VECTOR]", help="Steering vector folder (from `interp steer build`); "
                                            "or give it as --vector"),
    vector: Optional[Path] = typer.Option(None, "--vector", help="steering vector folder (from `interp steer build`)"),
    out: Path = typer.Option(..., "--out", "-o", help="the .gguf file to write"),
    gguf: bool = typer.Option(False, "--gguf", help="Write a llama.cpp control vector (the one export format; implied by --out *.gguf)."),
    model_hint: Optional[str] = typer.Option(None, help="controlvector.model_hint (default: the vector's model name; "
                                             "repeng writes the model_type, e.g. llama)."),
    scale: float = typer.Option(1.0, help="Multiply every direction by this before writing."),
    alpha_unit: str = typer.Option("vector", "--alpha-unit", help="what llama.cpp's strength 1 adds, as --alpha 1 does in "
                                   "`interp steer generate`: vector (the stored vector) or norm (at each layer, the mean "
                                   "residual norm recorded there, along the vector)"),
) -> None:
    """Export a steering vector as a llama.cpp control vector (GGUF), loadable with --control-vector."""
    import math

    from interp.steering import SteeringVector
    from interp.steering.gguf_export import export_gguf, gguf_layers

    if not gguf and out.suffix != ".gguf":
        raise InterpError("give --gguf or an --out file ending in .gguf: llama.cpp control vectors are the one export format")
    if not math.isfinite(scale):
        raise InterpError(f"--scale must be a finite number, got {scale}")
    if (folder is None) == (vector is None):
        raise InterpError("give the steering vector folder once: as the argument (steer export DIR) or as --vector DIR")
    vec = SteeringVector.load(folder or vector)
    layers = gguf_layers(vec)
    export_gguf(vec, out, model_hint=model_hint, scale=scale, alpha_unit=alpha_unit)
    typer.echo(f"wrote {out}: {len(layers)} direction(s) for llama.cpp layers {', '.join(map(str, layers))} "
               f"(scale {scale:g}, {alpha_unit} units)")
    typer.echo(f"steer as `interp steer generate --alpha A --alpha-unit {alpha_unit}` does (BOS first, no chat template):\n"
               f"  llama-completion -m MODEL.gguf -no-cnv --override-kv tokenizer.ggml.add_bos_token=bool:true "
               f"--control-vector-scaled {out}:A -p PROMPT")


def import_command(
    path: Path = typer.Argument(..., help="A llama.cpp control-vector .gguf file (written here, by repeng or llama.cpp)."),
    out: Path = typer.Option(..., "--out", "-o", help="steering vector folder to write (vector.safetensors + vector.json)"),
    gguf: bool = typer.Option(True, "--gguf", help="Read a llama.cpp control vector (the one import format)."),
) -> None:
    """Import a llama.cpp control vector (GGUF) as a steering vector folder."""
    from interp.steering.gguf_export import import_gguf

    vec = import_gguf(path)
    vec.save(out)
    typer.echo(f"wrote {out}/vector.safetensors and vector.json: {vec.method} for {vec.model_name!r} at {', '.join(vec.points)}")


def register(app: typer.Typer) -> None:
    """Add `export` and `import` to the `steer` app."""
    app.command("export")(export_command)
    app.command("import")(import_command)

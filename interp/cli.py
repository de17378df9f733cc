"""The `interp` command. This module wires every capability's commands together.

Errors a user can cause (`InterpError`) print as one line and exit 1; usage errors exit 2;
Ctrl-C exits 130 after the running job has saved what it can.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from interp.cli_common import DATA_HELP, DEVICE_HELP, DEVICE_MAP_HELP, DTYPE_HELP, HOOKS_HELP, MODEL_HELP, TEXT_FIELD_HELP, console
from interp.cli_aliases import rewrite
from interp.errors import InterpError

try:  # recent typer vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

app = typer.Typer(
    name="interp",
    help="Mechanistic interpretability on pretrained transformers: capture, SAEs, probes, TCAV, steering.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def inspect(
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    all_points: bool = typer.Option(False, "--all", help="list every hook point name instead of one row per kind"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Show the model's size and its hook points (names and activation shapes)."""
    import torch

    from interp import HookManager, load_model

    bridge = load_model(model, device=device)
    hm = HookManager(bridge)
    cfg = bridge.cfg
    console.print(
        f"[bold]{bridge.interp_name}[/]: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads, d_vocab {cfg.d_vocab}, {sum(p.numel() for p in bridge.parameters()) / 1e6:.1f}M parameters"
    )
    with torch.no_grad():
        # Two lengths: the dimensions that change with the input length are positions.
        tokens = bridge.to_tokens("Hello world")
        _, short = bridge.run_with_cache(tokens)
        _, longer = bridge.run_with_cache(torch.cat([tokens, tokens[:, -1:]], dim=1))
    shapes = {
        name: tuple("pos" if a != b else str(a) for a, b in zip(t.shape[1:], longer[name].shape[1:]))
        for name, t in short.items()
    }
    table = Table(title="hook points (shapes per example; pos = sequence position)")
    table.add_column("name")
    table.add_column("layers")
    table.add_column("shape")
    seen: dict[str, list[int]] = {}
    for name in hm.hook_points:
        layer = hm.layer_of(name)
        key = name if layer is None or all_points else name.replace(f"blocks.{layer}.", "blocks.{L}.", 1)
        seen.setdefault(key, []).append(layer)

    def shape_of(key: str) -> str:
        name = key.replace("{L}", "0")
        if name not in shapes:
            return "-"
        return "(" + ", ".join(shapes[name]) + ")"

    for key, layers in seen.items():
        span = "" if layers == [None] else (f"0-{cfg.n_layers - 1}" if len(layers) == cfg.n_layers else ",".join(map(str, layers)))
        table.add_row(key, span, shape_of(key))
    console.print(table)
    console.print("Selectors: SITE:LAYERS, e.g. resid_post:all, mlp_out:0-5, resid_pre:-1 "
                  "(sites: resid_pre, resid_mid, resid_post, attn_out, mlp_out)")


@app.command()
def cache(
    out: Path = typer.Option(..., "--out", "-o", help="store folder to write (manifest.json + shards)"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    hooks: str = typer.Option("resid_post:15", "--hooks", help=HOOKS_HELP),
    data: str = typer.Option("builtin", "--data", help=DATA_HELP),
    tokens: int = typer.Option(100_000, "--tokens", help="token activations to store (BOS excluded)"),
    ctx_len: int = typer.Option(128, "--ctx-len", help="context length in tokens, BOS included"),
    batch_contexts: int = typer.Option(8, "--batch-contexts", help="contexts per forward pass"),
    text_field: str = typer.Option("text", "--text-field", help=TEXT_FIELD_HELP),
    store_dtype: str = typer.Option("float32", "--store-dtype", help="stored dtype: float32, float16 or bfloat16 (halves the store; the precision loss is measured and printed)"),
    resume: bool = typer.Option(False, "--resume", help="continue the (interrupted or smaller) store at --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the store already at --out"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    device_map: Optional[str] = typer.Option(None, "--device-map", help=DEVICE_MAP_HELP),
) -> None:
    """Harvest activations at hook points into a memory-mapped store (resumable)."""
    from interp import load_model
    from interp.store import build_store
    from interp.models import resolve_dtype

    if tokens <= 0:
        raise InterpError(f"--tokens must be positive, got {tokens}")
    if resume and overwrite:
        raise InterpError("--resume and --overwrite exclude each other: --resume continues the store at --out, --overwrite replaces it")
    stored = resolve_dtype(store_dtype)
    bridge = load_model(model, device=device, dtype=dtype, device_map=device_map)
    try:
        store = build_store(bridge, hooks.split(";"), data, tokens, out, ctx_len=ctx_len, batch_size=batch_contexts,
                            dtype=stored, text_field=text_field, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        console.print(f"interrupted: completed shards are kept in {out}; run the same command with --resume to continue")
        raise
    widths = ", ".join(f"{p} width {w}" for p, w in store.widths.items())
    console.print(f"stored {store.n_tokens:,} tokens x {len(store.points)} point(s) ({widths}) in {out}")
    for point, loss in (store.precision_loss or {}).items():
        console.print(f"{store_dtype} precision loss at {point}: relative RMS error {loss['relative_rms_error']:.2e}, "
                      f"largest absolute error {loss['max_abs_error']:.3g}")


COMMANDS_GROUP = "interp.commands"  # entry points: `register(app)` of each package that adds commands
_mounted = False


def _mount() -> None:
    """Add the core's steering commands, then every package's own (imported here so `interp` alone stays light).

    A package adds its commands through an entry point in the `interp.commands` group (pyproject.toml):
    a function `register(app)` that adds them to this app. The core imports no package of those.
    """
    global _mounted
    if _mounted:
        return
    _mounted = True
    from importlib.metadata import entry_points

    from interp.cli_fv import register as register_fv
    from interp.cli_patch import register as register_patch
    from interp.cli_steer import app as steer_app

    app.add_typer(steer_app, name="steer")
    register_patch(app)
    register_fv(app)
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        ep.load()(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `interp` console script; returns the exit status."""
    _mount()
    argv = rewrite(sys.argv[1:] if argv is None else list(argv))
    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except InterpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script wrapper: exit with `main()`'s status.

    A rank started by torchrun ends with `os._exit` once its output is flushed: its work is done
    and written, and skipping interpreter teardown keeps gloo's background threads from aborting
    the process at exit ("terminate called without an active exception"), which would turn a
    finished run into a failed one.
    """
    import os

    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    raise SystemExit(status)


if __name__ == "__main__":
    run()

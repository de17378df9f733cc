"""`interp patch`: activation or attribution patching of a clean/corrupted prompt pair (or a file of pairs).

Mistakes a user can make raise `InterpError`; `interp.cli.main` prints it on one line and exits 1.
Every input is checked before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from interp.cli_common import DEVICE_HELP, MODEL_HELP, console, wide_console
from interp.errors import InterpError

METHODS = ("activation", "attribution")
SITES_HELP = ("hook points to patch (sites), ';'-separated: selectors KIND:LAYERS with KIND in resid_pre|resid_mid|resid_post|attn_out|"
              "mlp_out (one site per layer and position), z (one per attention head, all positions), q|k (one per head and "
              "position, rotary models), or point names")


def patch(
    clean: Optional[str] = typer.Option(None, "--clean", help="the clean prompt, whose next token should be --answer"),
    corrupted: Optional[str] = typer.Option(None, "--corrupted", help="the corrupted prompt: as many tokens as --clean, pushing toward --wrong"),
    answer: Optional[str] = typer.Option(None, "--answer", help="one token, the clean prompt's answer (e.g. ' Paris')"),
    wrong: Optional[str] = typer.Option(None, "--wrong", help="one token, the corrupted prompt's answer (e.g. ' Rome')"),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="a .jsonl file of pairs, one {clean, corrupted, answer, wrong} per line "
                                         "(instead of the four options; scores are averaged over pairs of one token length)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for results.json and report.html"),
    method: str = typer.Option("activation", "--method", help="activation (patch each site: exact, one forward row per site) or "
                               "attribution (AtP with AtP*'s QK fix: one forward and one backward for every site)"),
    hooks: Optional[str] = typer.Option(None, "--hooks", help=SITES_HELP + " [default: resid_pre, resid_post, attn_out, mlp_out and z at every layer]"),
    qk_fix: bool = typer.Option(True, "--qk-fix/--no-qk-fix", help="attribution on q/k sites: recompute the attention softmax (AtP*) "
                                "instead of linearising through it"),
    batch_tokens: int = typer.Option(2048, "--batch-tokens", help="tokens per forward: patched copies of the prompt per forward = this / prompt length"),
    top_n: int = typer.Option(10, "--top-n", help="the top sites to show, largest |recovered| first"),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Which activations carry the difference between a clean and a corrupted prompt (activation / attribution patching)."""
    from interp.attribution import attribution_patching
    from interp.models import load_model
    from interp.patching import DEFAULT_HOOKS, activation_patching
    from interp.prompt_pairs import PromptPair, read_pairs
    from interp.patching_report import write_patching

    if method not in METHODS:
        raise InterpError(f"unknown --method {method!r}: use activation or attribution")
    if top_n < 1:
        raise InterpError(f"--top-n must be at least 1, got {top_n}")
    if batch_tokens < 1:
        raise InterpError(f"--batch-tokens must be at least 1, got {batch_tokens}")
    given = {"--clean": clean, "--corrupted": corrupted, "--answer": answer, "--wrong": wrong}
    if pairs is not None:
        if any(v is not None for v in given.values()):
            raise InterpError("give either --pairs FILE or --clean/--corrupted/--answer/--wrong, not both")
        prompt_pairs = read_pairs(pairs)
    else:
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise InterpError(f"missing {', '.join(missing)}: give --clean, --corrupted, --answer and --wrong (or --pairs FILE)")
        prompt_pairs = [PromptPair(clean, corrupted, answer, wrong)]
    bridge = load_model(model, device=device)
    run = dict(hooks=hooks or DEFAULT_HOOKS, batch_tokens=batch_tokens)
    if method == "activation":
        result = activation_patching(bridge, prompt_pairs, progress=True, **run)
    else:
        result = attribution_patching(bridge, prompt_pairs, qk_fix=qk_fix, **run)
    results, report = write_patching(result, out, bridge.interp_name, top_n=top_n)
    _print(result, top_n)
    console.print(f"Wrote {results} and {report}", soft_wrap=True)


def _print(result, top_n: int) -> None:
    pairs = f"{len(result.pairs)} pairs, mean" if len(result.pairs) > 1 else "logit difference"
    console.print(f"{result.method} patching, {len(result.sites)} sites; {pairs}: clean "
                  f"{sum(result.clean_logit_diff) / len(result.pairs):.3f}, corrupted {sum(result.corrupted_logit_diff) / len(result.pairs):.3f}",
                  soft_wrap=True)
    table = Table(title=f"top {top_n} sites by |recovered|")
    for col in ("point", "position", "head", "recovered"):
        table.add_column(col, justify="left" if col == "point" else "right")
    tokens = result.tokens["clean"]
    for row in result.top(top_n):
        pos = "all" if row["position"] is None else f"{row['position']} {tokens[row['position']]!r}"
        table.add_row(row["point"], pos, "-" if row["head"] is None else str(row["head"]), f"{row['recovered']:.3f}")
    wide_console().print(table)


def register(app: typer.Typer) -> None:
    """Mount `interp patch` on the main command."""
    app.command("patch")(patch)

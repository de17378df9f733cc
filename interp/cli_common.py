"""What every `interp` command module shares: the help texts of the common options, the console,
and small checks, so one option reads the same in every command (../shared/STYLE.md, "One CLI dialect").

Command modules of the core (`interp.cli`, `interp.cli_steer`, ...) and of the packages that register
their own commands (`saes.cli`, `probes.cli`, through the `interp.commands` entry points) import from
here; this module imports nothing of theirs.
"""

from __future__ import annotations

import math

from rich.console import Console

from interp.errors import InterpError

MODEL_HELP = "'default' (embedded SmolLM2-135M-Instruct), 'gemma3-270m' (embedded Gemma 3 270M), a local HF model directory, or a hub name"
DEVICE_HELP = "cpu, cuda, cuda:N (default: cuda if present)"
DATA_HELP = "builtin, builtin:NAME, a .txt/.jsonl/.csv/.parquet file, or a hub dataset"
TEXT_FIELD_HELP = "column holding the texts in a table file"
DTYPE_HELP = "the model's weights: float32, bfloat16 or float16 (bfloat16 halves GPU memory)"
DEVICE_MAP_HELP = "spread a model too large for one device over several with accelerate: auto, balanced, ... (instead of --device)"
HOOKS_HELP = "hook points: names or selectors SITE:LAYERS (e.g. resid_post:all, resid_post:0-5), ';'-separated"
HOOK_HELP = "one hook point: a name (e.g. blocks.6.hook_resid_post) or a selector of one (resid_post:6)"
SEED_HELP = "random seed (the same seed gives the same result)"
TABLE_WIDTH = 130  # tables print every column in full, also when piped

console = Console()


def wide_console() -> Console:
    """A console at least `TABLE_WIDTH` wide, for tables that must show every column even when piped."""
    return Console(width=max(console.width, TABLE_WIDTH))


def positive(value: float, flag: str) -> None:
    """InterpError (one line) unless `value` > 0."""
    if not value > 0:
        raise InterpError(f"{flag} must be positive, got {value}")


def parse_number(text: str, what: str) -> float:
    """A finite float from an option given as text (`--alpha -2` reads as a number, not an option)."""
    try:
        value = float(text)
    except ValueError:
        raise InterpError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise InterpError(f"{what} must be a finite number, got {text!r}")
    return value


def parse_alphas(text: str) -> list[float]:
    """A comma list of strengths, e.g. `-8,-4,0,4,8`."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        raise InterpError("--alphas is empty: give a comma list such as -8,-4,0,4,8")
    return [parse_number(p, "each of --alphas") for p in parts]

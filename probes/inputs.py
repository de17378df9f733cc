"""What the probe and concept commands read from the command line: example files, targets, pools.

Shared by `probes.cli` (`interp probe`, `interp tcav`) and `probes.cli_concepts` (`interp concepts`).
"""

from __future__ import annotations

import re
from pathlib import Path

from interp.errors import InterpError

_INT = re.compile(r"-?\d+")


def parse_pool(pool: str) -> str | int:
    """`last`, `mean`, `max`, or an integer token position."""
    return int(pool) if _INT.fullmatch(pool.strip()) else pool.strip()


def parse_target(target: str) -> str | int:
    """An integer is an output index (a token id for a language model); anything else a token string."""
    return int(target) if _INT.fullmatch(target.strip()) else target


def read_examples(source: str, what: str, builtin_dir: str = "concepts") -> list[str]:
    """Examples from `builtin:NAME` (a shipped concept set), a `.txt` file (one per line) or a table file."""
    from interp.data import builtin_dataset_path, iter_texts

    from probes.tcav import read_lines

    if source.startswith("builtin:"):
        path = builtin_dataset_path(f"{builtin_dir}/{source.split(':', 1)[1]}.txt")
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InterpError(f"{what} file {source} does not exist: give a .txt file with one example per line")
    examples = read_lines(path) if path.suffix in (".txt", "") else list(iter_texts(str(path)))
    if not examples:
        raise InterpError(f"{what} file {source} is empty: give at least a few examples, one per line")
    return examples

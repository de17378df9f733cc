"""End-to-end runs of the `interp` command as a user types it, on the real SmolLM2.

Each test starts the installed console script in a fresh process (so the entry point, the
model loading and the CLI's error handling are all on the path) and asserts on a number or
string that is wrong when the path is broken.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interp.corpus import documents


@pytest.fixture(scope="session")
def prose(tmp_path_factory) -> dict[str, Path]:
    """Plain-text files from the built-in corpus: `train` (speeches before 1900), `heldout` (after 2000)."""
    root = tmp_path_factory.mktemp("prose")
    docs = documents()
    early = [d for d in docs if int(d.name[:4]) < 1900]
    late = [d for d in docs if int(d.name[:4]) >= 2000]
    paths = {"train": root / "train.txt", "heldout": root / "heldout.txt"}
    for name, group in (("train", early), ("heldout", late)):
        paths[name].write_text("\n\n".join(d.read_text(encoding="utf-8").strip() for d in group) + "\n")
    return paths

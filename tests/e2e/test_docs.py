"""Docs that run: every `bash` block of the README and of each docs/ page, and each `python` block
marked runnable, executed as written, in order, in a temp folder per page, on the embedded model.

Marks (an HTML comment on the line before a fence, invisible when rendered):
- `<!-- run -->` before a ```python block: run it (as its own script: such a block is self-contained);
- `<!-- skip: REASON -->` before any block: do not run it (the reason says why, e.g. "needs a GPU").

A block fails on a non-zero exit or a traceback in its output. Every page's blocks share one folder,
so a block may use the files an earlier block of its page made; pages do not share anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*(run|skip:\s*(.+?))\s*-->\s*$")
BLOCK_TIMEOUT_S = 900


@dataclass
class Block:
    """One fenced block of a page: its language, text, first line number and mark (`run`, `skip` or None)."""

    lang: str
    text: str
    line: int
    mark: str | None
    reason: str = ""

    @property
    def runs(self) -> bool:
        return self.mark != "skip" and (self.lang == "bash" or (self.lang == "python" and self.mark == "run"))


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of `page`, in order, with the mark on the line before each."""
    found, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        lang, start = m.group(1), i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].strip() == "```"), len(lines))
        mark = MARK.match(lines[i - 1].strip()) if i else None
        kind = None if mark is None else ("skip" if mark.group(1).startswith("skip") else "run")
        found.append(Block(lang, "\n".join(lines[start:end]) + "\n", start + 1, kind, (mark.group(2) or "") if mark else ""))
        i = end + 1
    return found


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
            "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess:
    if block.lang == "bash":
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    else:
        cmd = [sys.executable, "-c", block.text]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, env=_env())


def test_the_reader_sees_every_block_and_mark():
    page = ROOT / "tests" / "e2e" / "_sample.md"
    text = "x\n```bash\necho a\n```\n<!-- skip: needs a GPU -->\n```bash\nnvidia-smi\n```\n```python\nimport x\n```\n" \
           "<!-- run -->\n```python\nprint(1)\n```\n"
    try:
        page.write_text(text)
        found = blocks(page)
    finally:
        page.unlink()
    assert [(b.lang, b.mark, b.runs) for b in found] == [("bash", None, True), ("bash", "skip", False),
                                                         ("python", None, False), ("python", "run", True)]
    assert found[1].reason == "needs a GPU" and found[0].text == "echo a\n" and found[0].line == 3


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_of_the_page_runs_as_written(page, tmp_path):
    ran = []
    for block in blocks(page):
        if block.mark == "skip":
            assert block.reason, f"{page.name}:{block.line}: a skipped block needs a reason (<!-- skip: REASON -->)"
        if not block.runs:
            continue
        start = time.perf_counter()
        proc = run_block(block, tmp_path)
        took = time.perf_counter() - start
        ran.append(f"{page.name}:{block.line} {took:.0f}s")
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in output, (
            f"{page.name}:{block.line} ({block.lang}) exited {proc.returncode}:\n{block.text}\n--- output ---\n{output[-4000:]}")
    print(f"{page.name}: {len(ran)} blocks: {', '.join(ran)}")

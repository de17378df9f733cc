"""Docs that run: every `bash` block of the README and of each docs/ page, and each `python` block
marked runnable, executed as written, in order, in a temp folder per page, on the embedded model.

Marks (an HTML comment on the line before a fence, invisible when rendered):
- `<!-- run -->` before a ```python block: run it;
- `<!-- skip: REASON -->` before any block: do not run it (the reason says why, e.g. "needs a GPU").

A block fails on a non-zero exit, an exception, or a traceback in its output. A page's blocks share
one folder, so a block may use the files an earlier block of its page made, and its python blocks
share one interpreter, as a reader pasting them into one Python session in order would; pages share
nothing.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.doc_checks import CHECKS
from tests.e2e.warm import warm_env

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
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    warm = warm_env()  # `interp` in a bash block: the warm one, ahead of the venv's console script
    if warm:
        env.update(warm, PATH=f"{Path(warm['INTERP_WARM_SHIM']).parent}{os.pathsep}{env['PATH']}")
    return env


# A python session for a page: runs the blocks it is sent in one namespace and ends each with a marker line.
DRIVER = r"""
import json, sys, traceback
namespace = {"__name__": "__main__"}
for line in sys.stdin:
    block = json.loads(line)
    status = "ok"
    try:
        exec(compile(block["code"], block["where"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        status = "error"
    sys.stderr.flush()
    print("\0done " + status, flush=True)
"""


class PythonSession:
    """One interpreter per page (in the page's folder), fed block by block."""

    def __init__(self, cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=cwd, env=_env(), text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, block: Block, where: str) -> tuple[bool, str]:
        self.proc.stdin.write(json.dumps({"code": block.text, "where": where}) + "\n")
        self.proc.stdin.flush()
        out, deadline = [], time.monotonic() + BLOCK_TIMEOUT_S
        while True:
            line = self.lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None:
                return False, "".join(out) + "\n(the python session ended)"
            if line.startswith("\0done "):
                return line.strip().endswith("ok"), "".join(out)
            out.append(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run_bash(block: Block, cwd: Path) -> tuple[bool, str]:
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=cwd, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S, env=_env())
    return proc.returncode == 0, proc.stdout + proc.stderr + (f"\n(exit status {proc.returncode})" if proc.returncode else "")


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


def run_page(page: Path, folder: Path) -> list[str]:
    """Run the page's blocks in `folder`; AssertionError naming the first that fails. Returns what ran."""
    ran, session = [], None
    try:
        for block in blocks(page):
            if block.mark == "skip":
                assert block.reason, f"{page.name}:{block.line}: a skipped block needs a reason (<!-- skip: REASON -->)"
            if not block.runs:
                continue
            where = f"{page.name}:{block.line}"
            start = time.perf_counter()
            if block.lang == "bash":
                ok, output = run_bash(block, folder)
            else:
                session = session or PythonSession(folder)
                ok, output = session.run(block, where)
            ran.append(f"{where} {time.perf_counter() - start:.0f}s")
            assert ok and "Traceback" not in output, f"{where} ({block.lang}) failed:\n{block.text}\n--- output ---\n{output[-4000:]}"
    finally:
        if session is not None:
            session.close()
    return ran


def test_a_page_runs_in_order_in_one_folder_and_one_session(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\necho 41 > n.txt\n```\n<!-- run -->\n```python\nn = int(open('n.txt').read()) + 1\n```\n"
                    "```python\nraise SystemExit('not marked: not run')\n```\n<!-- run -->\n```python\nassert n == 42\n```\n")
    assert len(run_page(page, tmp_path)) == 3
    page.write_text("<!-- run -->\n```python\nx = 1\n```\n<!-- run -->\n```python\nassert x == 2, 'x is 1'\n```\n")
    with pytest.raises(AssertionError, match="page.md:7 .python. failed"):
        run_page(page, tmp_path)
    page.write_text("```bash\nfalse\necho never\n```\n")
    with pytest.raises(AssertionError, match="exit status 1"):
        run_page(page, tmp_path)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_of_the_page_runs_as_written(page, tmp_path):
    ran = run_page(page, tmp_path)
    print(f"{page.name}: {len(ran)} blocks: {', '.join(ran)}")
    check = CHECKS.get(page.name)
    if check is not None:  # what the page's commands wrote, checked as an end-to-end test would
        check(tmp_path)

"""Run the installed `interp` console script in a fresh process, as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERP = Path(sys.executable).with_name("interp")


def interp(*args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run `interp ARGS...` in a new process; on failure show what it printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([str(INTERP), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        pytest.fail(f"interp {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc

"""Run `interp` as a user types it: the console script's code in its own process (warm: see `tests/e2e/warm.py`)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.warm import interp_executable, warm_env


def interp(*args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run `interp ARGS...` in a new process; on failure show what it printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", **warm_env()}
    proc = subprocess.run([interp_executable(), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        pytest.fail(f"interp {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc

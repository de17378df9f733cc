"""The warm `interp` of the end-to-end tests (`tests/e2e/warm.py`) behaves as the installed console
script: same output, same exit status, Ctrl-C handled the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.e2e.warm import CONSOLE_SCRIPT, warm_env

pytestmark = pytest.mark.slow


def _both(args: list[str], stdin: str = "") -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    warm = warm_env()
    assert warm, "INTERP_TEST_COLD is set: nothing to compare"
    cold = subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, env=env, input=stdin, timeout=300)
    hot = subprocess.run([warm["INTERP_WARM_SHIM"], *args], capture_output=True, text=True, env={**env, **warm},
                         input=stdin, timeout=300)
    return cold, hot


@pytest.mark.parametrize("args", [
    ["--help"],                                              # exit 0, the command list
    ["inspect", "--model", "no/such/dir/"],                  # bad input: one line, exit 1
    ["sae", "train", "--no-such-option"],                    # usage error: exit 2, click's message naming `interp`
    ["probe", "--points", "resid_post:1", "--model", "no/such/dir/"],  # a retired option name's note, then the error
], ids=["help", "bad-model", "usage", "retired-option"])
def test_warm_interp_prints_and_exits_as_the_console_script(args):
    cold, hot = _both(args)
    assert (hot.returncode, hot.stdout, hot.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert cold.returncode == (0 if args == ["--help"] else 2 if "--no-such-option" in args else 1)


def test_ctrl_c_reaches_the_command(tmp_path):
    """SIGINT to the warm `interp` interrupts the command itself: the harvest keeps its shards, says so, exits 130."""
    env = {**os.environ, **warm_env(), "PYTHONUNBUFFERED": "1"}
    env.pop("TQDM_DISABLE", None)
    proc = subprocess.Popen([env["INTERP_WARM_SHIM"], "cache", "--model", "default", "--hooks", "resid_post:2",
                             "--tokens", "2000000", "--out", str(tmp_path / "store")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    seen = ""
    while "tok/s" not in seen and time.monotonic() < deadline:  # the harvest has started
        seen += proc.stderr.read(64)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + err
    assert "interrupted: completed shards are kept" in out and "--resume" in out

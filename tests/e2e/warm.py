"""A warm `interp` for the end-to-end tests: the console script's own code, without paying its imports
on every command.

A CLI run spends about 7 s of a 2-core machine importing torch, transformers, TransformerLens,
scikit-learn and the project before it reads its first option; the docs pages and the end-to-end
tests run some 180 commands. So each test worker starts one server (`python -m tests.e2e.warm`)
that imports all of that once and waits on a Unix socket. The `interp` the tests start (by path, or
first on PATH in the docs' shells) is a small client (`warm_client.py`, standard library only); it
sends its command line, folder, environment and its stdin/stdout/stderr file descriptors to the
server, which forks, and the
child runs `interp.cli.run()` exactly as the console script does: same argv, same folder, same
environment, writing to the caller's own streams. The exit status (or the signal the command died
of) comes back to the caller; signals sent to the caller are passed on.

The server only imports: it runs no model and no thread pool before it forks. `python -m interp`
(as torchrun starts it) and python blocks still start a fresh interpreter. `INTERP_TEST_COLD=1`
turns the warm path off: every `interp` is then the installed console script in a new process.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).with_name("interp")
_started: dict[str, str] | None = None


def warm_env() -> dict[str, str]:
    """Environment entries for the warm `interp`: the server's socket (`INTERP_WARM_SOCKET`) and the
    client to run (`INTERP_WARM_SHIM`; its folder goes first on PATH where a shell looks `interp` up),
    starting this process's server on first use; empty when `INTERP_TEST_COLD` is set."""
    global _started
    if os.environ.get("INTERP_TEST_COLD"):
        return {}
    if _started is None:
        folder = Path(tempfile.mkdtemp(prefix="interp-warm-"))
        sock, log = folder / "socket", folder / "server.log"
        (folder / "bin").mkdir()
        shim = folder / "bin" / "interp"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{Path(__file__).with_name("warm_client.py")}" "$@"\n')
        shim.chmod(0o755)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
        with open(log, "wb") as err:
            server = subprocess.Popen([sys.executable, "-m", "tests.e2e.warm", str(sock)], cwd=ROOT, env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        atexit.register(server.terminate)
        deadline = time.monotonic() + 300
        while not sock.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the warm interp server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        _started = {"INTERP_WARM_SOCKET": str(sock), "INTERP_WARM_SHIM": str(shim)}
    return dict(_started)


def interp_executable() -> str:
    """The `interp` to start: the warm one, or the installed console script when the warm path is off."""
    return warm_env().get("INTERP_WARM_SHIM", str(CONSOLE_SCRIPT))


# ---- the server (python -m tests.e2e.warm SOCKET) -------------------------------------------------


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """A request: a 4-byte length, the JSON, and the caller's three stream fds (sent with the first bytes)."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        more = conn.recv(1 << 20)
        if not more:
            raise ConnectionError("the caller hung up mid-request")
        data += more
    return json.loads(data[4:4 + int.from_bytes(data[:4], "big")]), fds


def _child(request: dict, fds: list[int], inherited: list[socket.socket]) -> None:
    """In the forked child: become the caller's `interp` process and run the console script's code."""
    status = 1
    try:
        for s in inherited:
            s.close()
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        import torch

        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        sys.argv = [str(CONSOLE_SCRIPT), *request["argv"]]
        sys.modules["__main__"] = types.ModuleType("__main__")  # as under the console script (click names the program from it)
        from interp.cli import run

        try:
            run()
            status = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                status = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        atexit._run_exitfuncs()
        os._exit(status)


def _watch(pid: int, conn: socket.socket) -> None:
    """Pass the caller's signals on to the command, then send back how it ended."""
    pending = b""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            try:
                conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass
            conn.close()
            return
        if select.select([conn], [], [], 0.05)[0]:
            chunk = conn.recv(256)
            if not chunk:  # the caller is gone (killed, timed out): so is its command
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                conn.close()
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.startswith(b"sig "):
                    os.kill(pid, int(line.split()[1]))


def serve(path: str) -> None:
    from interp import cli

    cli._mount()  # every registered package's commands, as the console script imports them
    import sklearn.linear_model  # noqa: F401
    import transformer_lens.model_bridge  # noqa: F401
    import transformers.models.gemma3.modeling_gemma3  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(16)
    listener.settimeout(1.0)
    os.rename(path + ".tmp", path)  # the socket appears only once the imports are done
    open_conns: list[socket.socket] = []
    while os.getppid() == parent:  # ends with the test worker that started it
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError):
            conn.close()
            continue
        open_conns = [c for c in open_conns if c.fileno() != -1]
        pid = os.fork()
        if pid == 0:
            _child(request, fds, [listener, conn, *open_conns])
        for fd in fds:
            os.close(fd)
        open_conns.append(conn)
        threading.Thread(target=_watch, args=(pid, conn), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1])

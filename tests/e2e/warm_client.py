"""The `interp` the end-to-end tests put first on PATH: hands its command line, folder, environment
and standard streams to the test worker's warm server (`tests/e2e/warm.py`), which runs the real
`interp` console-script code in a forked copy of an interpreter that has already imported it.

Kept to the standard library so that it starts in milliseconds. Signals it receives (Ctrl-C,
SIGTERM, SIGHUP) are passed on to the command; it exits with the command's status (or dies of
the command's signal).
"""

import json
import os
import signal
import socket
import sys


def _stream_fds() -> list[int]:
    """fds 0, 1, 2, with /dev/null standing in for any that is closed."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def main() -> None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ["INTERP_WARM_SOCKET"])
    payload = json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [len(payload).to_bytes(4, "big") + payload], _stream_fds())

    def forward(signum, _frame):
        conn.sendall(f"sig {signum}\n".encode())

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            sys.exit("interp: the warm test server went away")
        reply += chunk
    status = int(reply.split()[1])
    if status < 0:  # the command died of a signal: so does this process
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


if __name__ == "__main__":
    main()

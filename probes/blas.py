"""One BLAS thread for the many small solves of probes and NMF.

Probe-sized solves run many small BLAS calls, where extra threads only wait on each other (often
10x slower). `threadpool_limits` scans every loaded library on each call (about 5 ms, paid by
each of the thousand fits of a 30-layer sweep); one `ThreadpoolController`, made on first use,
scans once.
"""

from __future__ import annotations

from functools import lru_cache

from threadpoolctl import ThreadpoolController


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread():
    """A context manager that limits BLAS to one thread while it is open."""
    return _controller().limit(limits=1, user_api="blas")

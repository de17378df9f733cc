"""torch.distributed helpers: the process group, this rank's place in it, and collectives that fail in one line.

Nothing else in the code calls `torch.distributed`: SAE training (`saes.data_parallel`,
`saes.sharded`, `saes.sharded_trainer`) goes through the wrappers here, so a dead or silent peer
in any collective becomes `PeerLost`, one line on the surviving ranks, never a hang or a traceback.

Launch: `torchrun --nproc-per-node W -m interp ...` (add `--nnodes`, `--node-rank` and
`--rdzv-endpoint` across machines); `process_group` starts the group from torchrun's environment
(gloo on CPU, NCCL on CUDA with `LOCAL_RANK` picking the GPU) and does nothing in one process.

Failures: a collective that fails (a peer died: connection closed) or gets no answer within the
group's timeout raises `PeerLost`, an InterpError. For NCCL, `TORCH_NCCL_BLOCKING_WAIT=1` is set
(unless the user set it) so a timed-out collective raises in Python instead of aborting the
process from the watchdog thread.

Writes: `on_main` runs a function on rank 0 only and `on_some` on chosen ranks (e.g. one writer
per shard); either way every rank learns the outcome (success, or the error), which doubles as
the barrier.

Groups: the collectives take `group` (None: the default group, i.e. every rank); ranks named in
arguments (`src`, `dst`) are ranks within that group.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from interp.errors import InterpError

DEFAULT_TIMEOUT_S = 600.0
FAULT_ENV = "INTERP_TEST_FAULT"  # tests only: "rank:step:kill" or "rank:step:stop" (see `fault_hook`)
T = TypeVar("T")


class PeerLost(InterpError):
    """Another rank died or stopped answering; this rank cannot go on."""


@dataclass(frozen=True)
class World:
    """This process's place in a group: `rank` of `size` (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


_timeout_s: float | None = None  # the collective timeout of a group started here (None: started elsewhere)


def initialized() -> bool:
    """Whether a process group is running."""
    return dist.is_available() and dist.is_initialized()


def world(group: Any = None) -> World:
    """This rank's place in `group` (None: the default group); rank 0 of 1 when none is initialised."""
    if initialized():
        return World(dist.get_rank(group), dist.get_world_size(group))
    return World()


def global_rank(group: Any, rank: int) -> int:
    """The default-group rank of `group`'s rank `rank` (`rank` itself for the default group)."""
    if group is None or not initialized():
        return rank
    return dist.get_global_rank(group, rank)


def local_rank() -> int:
    """This process's index on its machine (torchrun's `LOCAL_RANK`; 0 without it)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """Whether torchrun (or a launcher setting the same variables) started several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(device: str | None) -> str:
    """The device of this rank: `cuda` (or None with CUDA present) becomes `cuda:LOCAL_RANK`."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and launched():
        return f"cuda:{local_rank()}"
    return device


@contextmanager
def process_group(device: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[tuple[World, str]]:
    """Start the torch.distributed group torchrun asked for; yield `(world, this rank's device)`.

    In one process (no `WORLD_SIZE` > 1) nothing is started. Backend: NCCL for a CUDA device, gloo
    otherwise. `timeout_s` bounds every collective and the start-up rendezvous. The group is
    destroyed on exit, also after an error. A `PeerLost` inside the block prints its line and ends
    the process with status 1 (tearing down a group whose peer is gone can abort in C++).
    """
    global _timeout_s
    device = rank_device(device)
    if not launched() or initialized():
        yield world(), device
        return
    if timeout_s <= 0:
        raise InterpError(f"--dist-timeout must be positive, got {timeout_s:g}")
    cuda = device.startswith("cuda")
    if cuda:
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        torch.cuda.set_device(torch.device(device))
    size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", "0"))
    _timeout_s = timeout_s
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, TimeoutError, ValueError) as exc:
        raise PeerLost(f"rank {rank} of {size} could not reach the other ranks within {timeout_s:g} s "
                       f"({_first_line(exc)}): check that every rank was started with the same rendezvous") from None
    try:
        yield world(), device
        # No rank tears its connections down while another may still be reading from them.
        barrier()
    except PeerLost as exc:
        # Tearing down a group whose peer is gone (or stuck) can abort the process from C++
        # ("terminate called without an active exception"), so the error line is the last word.
        _timeout_s = None
        print(f"error: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    finally:
        _timeout_s = None
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a clean teardown may still fail; the process ends anyway
                pass


def _first_line(exc: BaseException) -> str:
    """The gist of a backend error: first line, without gloo's source location and its advice."""
    text = str(exc).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text[0]) if text else type(exc).__name__
    return line.split(". This is typically")[0][:200]


def collective(fn: Callable[[], T]) -> T:
    """Run one collective; a dead or silent peer becomes `PeerLost` (one line, no traceback)."""
    try:
        return fn()
    except RuntimeError as exc:  # gloo/NCCL raise RuntimeError subclasses (DistBackendError, ...)
        w = world()
        text = str(exc).lower()
        if "timed out" in text or "timeout" in text:
            why = "collective timed out" + (f" after {_timeout_s:g} s" if _timeout_s is not None else "")
        else:
            why = f"connection lost: {_first_line(exc)}"
        raise PeerLost(f"rank {w.rank} of {w.size}: another rank stopped responding ({why})") from None


# --- collectives (no-ops in one process or a group of one) ------------------------------------
_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def all_reduce(t: torch.Tensor, op: str = "sum", group: Any = None) -> torch.Tensor:
    """Reduce `t` in place over `group` with `op` ("sum", "max", "min" or "avg"); returns `t`.

    "avg" is a sum divided by the group size (gloo has no AVG).
    """
    size = world(group).size
    if size == 1:
        return t
    reduce_op = getattr(dist.ReduceOp, _OPS["sum" if op == "avg" else op])
    collective(lambda: dist.all_reduce(t, op=reduce_op, group=group))
    if op == "avg":
        t /= size
    return t


def broadcast(t: torch.Tensor, src: int = 0, group: Any = None) -> torch.Tensor:
    """Copy group rank `src`'s `t` into every rank's `t`, in place (`t` must be contiguous); returns `t`."""
    if world(group).size > 1:
        collective(lambda: dist.broadcast(t, src=global_rank(group, src), group=group))
    return t


def comm_device(group: Any = None) -> torch.device:
    """Where `group`'s collectives take their tensors: this rank's GPU (`LOCAL_RANK`, whatever the
    calling thread's current device) under NCCL, else the CPU."""
    if initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def new_group() -> Any:
    """A second group over every rank of the default one, or None without torch.distributed.

    Collectives issued from another thread (e.g. a harvest prefetched in the background while the
    main thread all-reduces gradients) need a group of their own: two threads' collectives on one
    group could be matched in different orders on different ranks. Every rank must call this, in
    the same order, from the main thread.
    """
    if not initialized() or world().size == 1:
        return None
    return collective(lambda: dist.new_group(backend=dist.get_backend()))


def all_gather(t: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Every rank's `t` (same shape and dtype on all ranks), in group rank order."""
    size = world(group).size
    if size == 1:
        return [t]
    t = t.contiguous()
    out = [torch.empty_like(t) for _ in range(size)]
    collective(lambda: dist.all_gather(out, t, group=group))
    return out


def gather(t: torch.Tensor, dst: int = 0, group: Any = None) -> list[torch.Tensor] | None:
    """Every rank's `t` (same shape and dtype) on group rank `dst`, in group rank order; None elsewhere."""
    w = world(group)
    if w.size == 1:
        return [t]
    t = t.contiguous()
    out = [torch.empty_like(t) for _ in range(w.size)] if w.rank == dst else None
    collective(lambda: dist.gather(t, out, dst=global_rank(group, dst), group=group))
    return out


def barrier(group: Any = None) -> None:
    """Wait for every rank of `group`."""
    if world(group).size > 1:
        collective(lambda: dist.barrier(group=group))


def all_gather_object(value: T, group: Any = None) -> list[T]:
    """Every rank's `value` (a small picklable object), in group rank order."""
    size = world(group).size
    if size == 1:
        return [value]
    out: list[Any] = [None] * size
    collective(lambda: dist.all_gather_object(out, value, group=group))
    return out


def device_mesh(shape: Sequence[int], names: Sequence[str], device_type: str | None = None):
    """A device mesh of `shape` with dims `names` over the running group (`prod(shape)` = world size).

    Ranks fill the mesh row-major: rank `r` of a `(a, b)` mesh sits at `(r // b, r % b)`.
    `device_type` defaults to "cuda" when available. `mesh.get_group(name)` gives a dim's group.
    """
    from torch.distributed.device_mesh import init_device_mesh

    if not initialized():
        raise InterpError("a device mesh needs several ranks: launch with torchrun (the process group starts in process_group)")
    total = 1
    for n in shape:
        total *= n
    if total != dist.get_world_size():
        dims = " x ".join(f"{n} {name}" for n, name in zip(shape, names))
        raise InterpError(f"a mesh of {dims} ranks needs {total} processes, but {dist.get_world_size()} were launched")
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return collective(lambda: init_device_mesh(device_type, tuple(shape), mesh_dim_names=tuple(names)))


# --- agreeing, and writing from some ranks ---------------------------------------------------------
def any_flags(values: list[int], w: World, device: torch.device | str = "cpu") -> list[int]:
    """Element-wise maximum of small integers over all ranks (e.g. 'a checkpoint is due', a signal)."""
    if not w.parallel:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=device)
    all_reduce(t, "max")
    return [int(v) for v in t.tolist()]


def _describe(exc: Exception, w: World) -> str:
    return str(exc) if isinstance(exc, InterpError) else f"rank {w.rank} failed: {type(exc).__name__}: {_first_line(exc)}"


def on_main(fn: Callable[[], T], w: World) -> T | None:
    """Run `fn` on rank 0 only; every rank returns once it is done (rank 0 gets its result).

    Rank 0's failure is shared: its InterpError is raised on every rank with the same message,
    any other exception as an InterpError naming it (rank 0 re-raises the original). `on_some`
    with rank 0 selected.
    """
    return on_some(fn, w, w.is_main)


def on_some(fn: Callable[[], T], w: World, selected: bool) -> T | None:
    """Run `fn` on the ranks where `selected` is true (e.g. one writer per shard); every rank returns
    once all are done, and a failure on any rank is raised on every rank (the lowest failing rank's
    message; the failing rank re-raises its original exception). Returns `fn()` where it ran, else None."""
    result, error, original = None, None, None
    if selected:
        try:
            result = fn()
        except Exception as exc:
            error, original = _describe(exc, w), exc
    if not w.parallel:
        if original is not None:
            raise original
        return result
    errors = [e for e in all_gather_object(error) if e is not None]
    if original is not None:
        raise original
    if errors:
        raise InterpError(errors[0])
    return result


def share(value: T, w: World) -> T:
    """Rank 0's `value` (a small picklable object) on every rank."""
    if not w.parallel:
        return value
    box = [value]
    collective(lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def fault_hook(step: int, w: World) -> None:
    """Tests only: with `INTERP_TEST_FAULT=rank:step:kill|stop`, that rank SIGKILLs or SIGSTOPs itself
    before that (global, 0-based) step, so tests can watch the other ranks notice."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, at, how = spec.split(":")
    if int(rank) == w.rank and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)

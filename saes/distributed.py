"""Data-parallel SAE training over torch.distributed: one SAE, W ranks, the semantics of one process.

Launch: `torchrun --nproc-per-node W -m interp sae train ...` (add `--nnodes`, `--node-rank` and
`--rdzv-endpoint` across machines); `process_group` starts the group from torchrun's environment
(gloo on CPU, NCCL on CUDA with `LOCAL_RANK` picking the GPU) and does nothing in one process.

Data: every rank opens the same deterministic stream and cuts it into the same global batches of
`TrainConfig.batch_size` rows; rank r trains on the r-th contiguous slice of each (`local_rows`),
so W ranks consume the global batches of one process, in its order. A step all-reduces, in one
collective (`reduce_step`), the gradients weighted by each slice's share of the global batch, the
fired mask (summed, so OR), floating buffers (averaged: BatchTopK's threshold) and the logged
statistics. Every rank then applies the same Adam step, decoder-gradient projection, decoder
renormalisation and dead-latent counter update to the same numbers, and the weights stay equal.
Initialisation (input scale, `b_dec`, active subspace) uses the global sample, which every rank
holds, and `broadcast_trainer` copies rank 0's state to all ranks after it and after a resume.

Writes: only rank 0 writes (`on_main`); its outcome (success, or the error) is shared with every
rank, which doubles as the barrier. Step and token counts are global, so a checkpoint resumes
under any world size that divides the global batch.

Failures: a collective that fails (a peer died: connection closed) or gets no answer within the
group's timeout raises `PeerLost`, an InterpError, on the surviving ranks; the CLI prints it on one
line and exits 1. For NCCL, `TORCH_NCCL_BLOCKING_WAIT=1` is set (unless the user set it) so a
timed-out collective raises in Python instead of aborting the process from the watchdog thread.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from interp.errors import InterpError

if TYPE_CHECKING:
    from saes.trainer import Trainer

DEFAULT_TIMEOUT_S = 600.0
FAULT_ENV = "INTERP_TEST_FAULT"  # tests only: "rank:step:kill" or "rank:step:stop" (see `fault_hook`)
T = TypeVar("T")


class PeerLost(InterpError):
    """Another rank died or stopped answering; this rank cannot go on."""


@dataclass(frozen=True)
class World:
    """This process's place in the group: `rank` of `size` (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


_timeout_s: float | None = None  # the collective timeout of a group started here (None: started elsewhere)


def world() -> World:
    """The current group (rank 0 of 1 when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


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
    destroyed on exit, also after an error.
    """
    global _timeout_s
    device = rank_device(device)
    if not launched() or (dist.is_available() and dist.is_initialized()):
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
        _collective(dist.barrier)
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


def _collective(fn: Callable[[], T]) -> T:
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


def local_rows(batch: Any, w: World) -> Any:
    """Rank `w.rank`'s contiguous slice of a global batch `(n, d)` or `{point: (n, d)}`.

    Slices have `ceil(n / size)` rows (the last ones fewer, possibly none), so a full batch of
    `size * B` rows gives every rank exactly `B`.
    """
    from saes.stream import rows, slice_rows

    if not w.parallel:
        return batch
    n = rows(batch)
    per = -(-n // w.size)
    return slice_rows(batch, min(n, w.rank * per), min(n, (w.rank + 1) * per))


def reduce_step(sae: torch.nn.Module, fired: torch.Tensor, n_local: int, n_global: int,
                stats: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All-reduce one step in one collective; gradients are replaced by their global value.

    Gradients are weighted `n_local / n_global` and summed (the gradient of the mean loss over the
    global batch); `fired (d_sae,)` bool is OR-ed; floating buffers are averaged; `stats` (already
    weighted by the caller so that sums are global) are summed. Returns the global fired mask and stats.
    """
    params = list(sae.parameters())
    buffers = [b for b in sae.buffers() if b.is_floating_point()]
    weight = n_local / n_global
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() * weight for p in params]
    parts += [b.reshape(-1).float() / world().size for b in buffers]
    parts.append(fired.float())
    if stats is not None:
        parts.append(stats.float())
    flat = torch.cat(parts)
    _collective(lambda: dist.all_reduce(flat))
    at = 0
    for t in params + buffers:
        piece = flat[at : at + t.numel()].view_as(t).to(t.dtype)
        at += t.numel()
        if isinstance(t, torch.nn.Parameter):
            t.grad = piece
        else:
            t.copy_(piece)
    fired = flat[at : at + fired.numel()] > 0
    at += fired.numel()
    return fired, (flat[at:] if stats is not None else None)


def any_flags(values: list[int], w: World, device: torch.device | str = "cpu") -> list[int]:
    """Element-wise maximum of small integers over all ranks (e.g. 'a checkpoint is due', a signal)."""
    if not w.parallel:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=device)
    _collective(lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
    return [int(v) for v in t.tolist()]


def on_main(fn: Callable[[], T], w: World) -> T | None:
    """Run `fn` on rank 0 only; every rank returns once it is done (rank 0 gets its result).

    Rank 0's failure is shared: its InterpError is raised on every rank with the same message,
    any other exception as an InterpError naming it (rank 0 re-raises the original).
    """
    if not w.parallel:
        return fn()
    result, error, original = None, None, None
    if w.is_main:
        try:
            result = fn()
        except InterpError as exc:
            error, original = str(exc), exc
        except Exception as exc:
            error, original = f"rank 0 failed: {type(exc).__name__}: {_first_line(exc)}", exc
    box = [error]
    _collective(lambda: dist.broadcast_object_list(box, src=0))
    if original is not None:
        raise original
    if box[0] is not None:
        raise InterpError(box[0])
    return result


def share(value: T, w: World) -> T:
    """Rank 0's `value` (a small picklable object) on every rank."""
    if not w.parallel:
        return value
    box = [value]
    _collective(lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def broadcast_trainer(trainer: "Trainer", w: World) -> None:
    """Copy rank 0's whole training state (weights, Adam moments, counters, step, scale) to every rank."""
    if not w.parallel:
        return
    meta = share({"step": trainer.step, "tokens": trainer.tokens, "scale": trainer.scale,
                  "history": trainer.history, "adam": {n: float(trainer.opt.state[p]["step"])
                                                       for n, p in trainer.sae.named_parameters() if p in trainer.opt.state}}, w)
    trainer.step, trainer.tokens, trainer.scale, trainer.history = meta["step"], meta["tokens"], meta["scale"], meta["history"]
    tensors = [*trainer.sae.state_dict().values(), trainer.since_fired]
    for name, p in trainer.sae.named_parameters():
        if name in meta["adam"]:
            st = trainer.opt.state.setdefault(p, {})
            st.setdefault("exp_avg", torch.zeros_like(p))
            st.setdefault("exp_avg_sq", torch.zeros_like(p))
            st["step"] = torch.tensor(meta["adam"][name])
            tensors += [st["exp_avg"], st["exp_avg_sq"]]
    with torch.no_grad():
        for t in tensors:
            # By logical layout: the same tensor may be strided differently on two ranks (W_enc is a
            # transposed clone; a loaded Adam moment is contiguous), and a broadcast copies memory.
            buf = t.contiguous()
            _collective(lambda: dist.broadcast(buf, src=0))
            if buf.data_ptr() != t.data_ptr():
                t.copy_(buf)


def fault_hook(step: int, w: World) -> None:
    """Tests only: with `INTERP_TEST_FAULT=rank:step:kill|stop`, that rank SIGKILLs or SIGSTOPs itself
    before that (global, 0-based) step, so tests can watch the other ranks notice."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, at, how = spec.split(":")
    if int(rank) == w.rank and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)

"""Training checkpoints, and stopping on a signal without ever saving half a step.

A checkpoint is one safetensors file, `checkpoint.safetensors`, written atomically (temp file,
then rename), so it is always whole: `Trainer.state_dict()`'s tensors (the SAE's weights and
buffers `sae.*`, Adam's moments `adam.<param>.exp_avg|exp_avg_sq`, the per-latent "tokens since
fired" counters) with its meta (step, token position in the stream, input scale, Adam's step
counts, loss history, both configs) as JSON in the header (`state`). `checkpoint.json` repeats
the counters for people; nothing reads it back. Step and token position are global (summed over
data-parallel ranks), so a checkpoint resumes under any number of ranks with the same global batch.

A latent-sharded run (`saes.sharded_trainer.ShardedTrainer`, `trainer.shard = (r, N)`) writes one
file per latent rank, `checkpoint-shard-{r}-of-{N}.safetensors` (with its `.json`), holding that
rank's shard of the weights, Adam state and counters; it resumes only with the same N
(`resumable` says why not, on one line).

`StopSignals` turns SIGINT (Ctrl-C) and SIGTERM (what cluster schedulers send before they
preempt a job) into a clean stop. While the trainer is `busy()` (a step, a save), a signal only
sets a flag, however many arrive, and `raise_if_stopped()` raises once the step is complete;
while it waits for data, a signal raises at once (the state is then between two steps). SIGINT
raises `KeyboardInterrupt`; SIGTERM raises `Terminated`, an `InterpError`, so the CLI prints one
line and exits non-zero.
"""

from __future__ import annotations

import json
import re
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.manifest import check_manifest

if TYPE_CHECKING:
    from saes.trainer import Trainer

CHECKPOINT = "checkpoint.safetensors"
_SHARD_FILE = re.compile(r"checkpoint-shard-(\d+)-of-(\d+)\.(safetensors|json)")


def checkpoint_file(shard: tuple[int, int] | None = None) -> str:
    """The checkpoint's file name: `checkpoint.safetensors`, or shard `r` of `N`'s."""
    return CHECKPOINT if shard is None else f"checkpoint-shard-{shard[0]}-of-{shard[1]}.safetensors"


def shard_files(folder: Path) -> list[Path]:
    """The latent-shard checkpoint files (`.safetensors` and `.json`) in `folder`."""
    return sorted(p for p in folder.glob("checkpoint-shard-*") if _SHARD_FILE.fullmatch(p.name)) if folder.is_dir() else []


def has_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a training checkpoint, sharded or not."""
    return (folder / CHECKPOINT).exists() or any(p.suffix == ".safetensors" for p in shard_files(folder))


def resumable(folder: Path, shards: int = 1) -> bool:
    """Whether `folder` holds a checkpoint a run with `shards` latent ranks (1: unsharded) can resume.

    False when it holds none; InterpError when it holds one of another layout or misses shards.
    """
    found: dict[int, set[int]] = {}
    for p in shard_files(folder):
        m = _SHARD_FILE.fullmatch(p.name)
        if m.group(3) == "safetensors":
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    plain = (folder / CHECKPOINT).exists()
    if not plain and not found:
        return False
    if shards == 1:
        if plain:
            return True
        n = max(found)
        raise InterpError(f"the checkpoint in {folder} is sharded over {n} latent ranks: resume with --shard-latents {n} "
                          f"(under torchrun, on a multiple of {n} ranks)")
    if shards not in found:
        if plain:
            raise InterpError(f"the checkpoint in {folder} is not latent-sharded: resume without --shard-latents")
        n = max(found)
        raise InterpError(f"the checkpoint in {folder} is sharded over {n} latent ranks, not {shards}: "
                          f"resume with --shard-latents {n} (on a multiple of {n} ranks)")
    missing = sorted(set(range(shards)) - found[shards])
    if missing:
        raise InterpError(f"the checkpoint in {folder} lacks shard {missing[0]} of {shards} "
                          f"({checkpoint_file((missing[0], shards))}): start over with --overwrite")
    return True


class Terminated(InterpError):
    """Training stopped on SIGTERM (after writing a checkpoint)."""


def save_checkpoint(trainer: "Trainer", folder: Path) -> None:
    """Write `trainer.state_dict()` to `folder/checkpoint.safetensors` (atomically); a latent-sharded
    trainer writes its shard's state to `checkpoint-shard-{r}-of-{N}.safetensors`."""
    state = trainer.state_dict()
    meta = state["meta"]
    folder.mkdir(parents=True, exist_ok=True)
    name = checkpoint_file(trainer.shard)
    write_safetensors(folder / name, state["tensors"], metadata={"state": json.dumps(meta)})
    write_json(folder / name.replace(".safetensors", ".json"),
               {k: meta[k] for k in ("step", "tokens", "scale", "shard", "sae_cfg", "train_cfg")})


def load_checkpoint(trainer: "Trainer", folder: Path) -> None:
    """Check that `folder`'s checkpoint fits `trainer` (SAE shape, shard, global batch, manifest), then
    restore it with `trainer.load_state_dict`."""
    from safetensors import safe_open

    path = folder / checkpoint_file(trainer.shard)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own types for corrupt files
        raise InterpError(f"checkpoint {path} is unreadable ({type(exc).__name__}): delete it to start over") from None
    cfg = meta["sae_cfg"]
    if meta.get("shard") is not None and tuple(meta["shard"]) != tuple(trainer.shard or ()):
        raise InterpError(f"checkpoint {path} holds shard {meta['shard'][0]} of {meta['shard'][1]}, not this rank's: "
                          "start over with --overwrite")
    if (cfg["d_in"], cfg["d_sae"], cfg["arch"]) != (trainer.cfg.d_in, trainer.cfg.d_sae, trainer.cfg.arch):
        raise InterpError(
            f"checkpoint {path} is for a different SAE ({cfg['arch']}, d_in={cfg['d_in']}, d_sae={cfg['d_sae']}): "
            "use another out dir or start over"
        )
    batch = meta.get("train_cfg", {}).get("batch_size")
    if batch is not None and batch != trainer.tcfg.batch_size:
        raise InterpError(
            f"checkpoint {path} was trained on batches of {batch} tokens (over all ranks) but this run uses "
            f"{trainer.tcfg.batch_size}: resume with --batch-tokens {batch} (on any number of ranks that divides it)"
        )
    shuffle = meta.get("train_cfg", {}).get("shuffle_tokens")
    if shuffle is not None and trainer.tcfg.shuffle_tokens is not None and shuffle != trainer.tcfg.shuffle_tokens:
        raise InterpError(f"checkpoint {path} streamed its rows shuffled in blocks of {shuffle} tokens but this run uses "
                          f"{trainer.tcfg.shuffle_tokens}: resume with --shuffle-tokens {shuffle}")
    if cfg.get("manifest") and trainer.cfg.manifest:
        check_manifest(cfg["manifest"], trainer.cfg.manifest, f"the checkpoint in {folder}",
                       "resume with the same model, hook point, data and context length, or start over with --overwrite")
    trainer.load_state_dict({"tensors": tensors, "meta": meta})


class StopSignals:
    """Within `with StopSignals() as stop:` SIGINT and SIGTERM stop training between steps only.

    Outside the main thread signals cannot be caught; there the default handlers stay.
    """

    def __enter__(self) -> "StopSignals":
        self.received: int | None = None
        self._busy = False
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:
                pass
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.received != signal.SIGTERM:
            self.received = signum
        if not self._busy:
            self._raise()

    def _raise(self) -> None:
        if self.received == signal.SIGTERM:
            raise Terminated("stopped by SIGTERM")
        raise KeyboardInterrupt

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Signals during the block are held until `raise_if_stopped`."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def raise_if_stopped(self) -> None:
        """Raise for a signal that arrived during a `busy()` block."""
        if self.received is not None:
            self._raise()

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

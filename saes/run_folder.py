"""What a training run leaves in its folder: the folder rules, and the files written at the end.

A run's folder (`out_dir`, or `out_dir/<point>` for each point of a multi-point run) holds the SAE
(SAELens layout: `cfg.json`, `sae_weights.safetensors`), its checkpoint(s), `training.json` and the
latent counters. A folder that holds a run is not trained into again unless the caller resumes it or
asks to overwrite it (`check_out_dir`), and then cleared first (`clear_run`). `save_run` writes the end of
a run; `save_sharded_run` the end of a latent-sharded one (the full SAE gathered, written by rank 0).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from interp import distributed
from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from saes.architectures import SAE
from saes.checkpoint import CHECKPOINT, has_checkpoint, save_checkpoint, shard_files
from saes.io import CFG_FILENAME, TRAINING_FILENAME, WEIGHTS_FILENAME, save_sae
from saes.trainer import Trainer

COUNTERS_FILENAME = "latent_counters.safetensors"
# What a run leaves in its folder (besides the SAE files): removed first when overwriting.
RUN_FILES = (CFG_FILENAME, WEIGHTS_FILENAME, CHECKPOINT, "checkpoint.json", TRAINING_FILENAME, COUNTERS_FILENAME,
             "results.json", "report.html")


def point_folder(point: str) -> str:
    """The folder name of `point`'s SAE under a multi-point run's `out_dir` (the point name, made path-safe)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", point)


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a saved SAE or a training checkpoint."""
    return (folder / CFG_FILENAME).exists() or has_checkpoint(folder)


def check_out_dir(folder: Path, resume: bool, overwrite: bool) -> None:
    """InterpError when training into `folder` would replace a run the caller did not ask to replace."""
    if resume and overwrite:
        raise InterpError("resume and overwrite exclude each other: resume continues the run in the folder, overwrite replaces it")
    if folder.exists() and not folder.is_dir():
        raise InterpError(f"{folder} is a file, not a folder: choose another --out")
    if holds_run(folder) and not resume and not overwrite:
        raise InterpError(f"{folder} already holds an SAE run: pass --resume to continue it, --overwrite to replace it, or choose another --out")


def clear_run(folder: Path) -> None:
    """Remove what a run left in `folder` (`RUN_FILES` and latent-shard checkpoints), before overwriting it."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for path in shard_files(folder):
        path.unlink()


def save_run(trainer: Trainer, folder: Path) -> SAE:
    """Save the final checkpoint, the SAE, its latent counters and `training.json`."""
    save_checkpoint(trainer, folder)
    sae = trainer.final_sae()
    _write_run(trainer, folder, sae, trainer.since_fired, trainer.dead_latents())
    return sae


def save_sharded_run(trainer, folder: Path, w: distributed.World) -> SAE | None:
    """A latent-sharded run's end (every rank): shard checkpoints, then the full SAE gathered and saved by rank 0."""
    distributed.on_some(lambda: save_checkpoint(trainer, folder), w, trainer.data_rank == 0)
    if trainer.data_rank != 0:  # the other data ranks hold copies of the same shards
        return distributed.on_main(lambda: None, w)
    sae, counters, dead = trainer.final_sae(), trainer.full_since_fired(), trainer.dead_latents()

    def write() -> SAE:
        _write_run(trainer, folder, sae, counters, dead)
        return sae

    return distributed.on_main(write, w)


def _write_run(trainer: Trainer, folder: Path, sae: SAE, counters, dead: dict) -> None:
    """The SAE, its `(d_sae,)` latent counters and `training.json`."""
    save_sae(sae, folder)
    write_safetensors(folder / COUNTERS_FILENAME, {"tokens_since_fired": counters})
    write_json(folder / TRAINING_FILENAME, {
        "tokens": trainer.tokens,
        "steps": trainer.step,
        "lr": trainer.lr,
        "warmup_steps": trainer.warmup_steps,
        "decay_steps": trainer.decay_steps,
        "final": trainer.stats,
        "dead_latents": {**dead, "rule": f"not fired in the last {dead['window_tokens']:,} training tokens"},
        "history": trainer.history,
        "train_cfg": asdict(trainer.tcfg),
    })

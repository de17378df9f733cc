"""Train sparse autoencoders on streamed or stored activations: `train_sae`, `train_saes`.

Activation source (`ActivationSource`, see `saes.stream`): either
- an iterable of activation batches, `Tensor (batch, d_in)` for `train_sae` or
  `dict[str, Tensor (batch, d)]` for `train_saes` (e.g. `ActivationStore.batches(...)`,
  `interp.activations.harvest(...)`, a list of tensors); or
- a callable `source(start_token: int) -> iterable of batches` that starts `start_token`
  tokens into the stream (cheaper on resume: nothing is read twice).
Batches of any size are re-cut into `TrainConfig.batch_size` rows. The stream must be
deterministic: on resume the first `tokens_seen` tokens are skipped (an iterable is simply
consumed that far), so the data order matches an uninterrupted run.

Recipe (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", unless noted):
- Inputs are scaled by one constant so their mean norm is `sqrt(d_in)` (estimated on the first
  `init_tokens` tokens); on save the scale is folded into the weights (`SAE.fold_input_scale`)
  and recorded in `cfg.activation_scale`, so the saved SAE takes raw activations.
- `b_dec` starts at the data mean, `W_enc = W_dec.T`, decoder rows have unit norm; before each
  Adam step the gradient component parallel to each decoder row is removed and the rows are
  renormalised after it.
- Adam with a linear warm-up over the first `warmup_fraction` of the steps (at most
  `max_warmup_steps`) and a linear decay to 0 over the last `decay_fraction` (`saes.trainer`).
- A latent is dead when it has not fired for `dead_after_tokens` tokens. TopK, BatchTopK and
  top-AFA SAEs add the AuxK loss: the `aux_k` largest dead latents reconstruct the residual,
  weighted `aux_coefficient`. The final counters are saved with the SAE
  (`latent_counters.safetensors`, and the dead fraction with its window in `training.json`).
- `init_active_subspace` (Wang et al. 2025, "Attention Layers Add Into Low-Dimensional Residual
  Subspaces"): activations occupy a low-dimensional subspace, and random decoder directions
  outside it rarely fire and die. With this option decoder rows (and so encoder columns) are
  drawn from a Gaussian restricted to the top principal components of the first `init_tokens`
  activations that explain `active_subspace_variance` of their variance.

Checkpoints (`saes.checkpoint`: `out_dir/checkpoint.safetensors`, one atomic file) hold the
full training state, the stream position included, and are written every `checkpoint_minutes`
of wall-clock time and every `checkpoint_every` steps, only ever between steps. The run is
deterministic given the seed and the stream, so a resumed run continues exactly where the
checkpoint left off (a callable source is asked to start at the checkpoint's token position).
Ctrl-C and SIGTERM write a checkpoint and stop: Ctrl-C re-raises KeyboardInterrupt, SIGTERM
raises `Terminated` (one line). A folder that already holds a run is not trained into again
unless the call resumes it or asks to overwrite it.

Data parallel (`saes.data_parallel`, under torchrun): `batch_size` is the global batch; each of the
W ranks trains on its slice of every global batch and the run equals one process's run. Only
rank 0 writes; checkpoints hold global positions, so a run resumes under any W dividing the batch.
A dead or silent rank raises `PeerLost` (one line) on the others.

Latent-sharded (`shard_latents=N`, TopK only, under torchrun with W a multiple of N): the ranks form
a `(W / N) x N` mesh (`saes.sharded_trainer`); each latent rank holds `d_sae / N` latents and each
of the W / N data ranks trains on its slice of the global batch. Data-rank 0 of each latent group
writes its shard's checkpoint (`checkpoint-shard-{r}-of-{N}.safetensors`), so a run resumes only
with the same N; at the end the full SAE is gathered and rank 0 saves it as above. Ranks other
than 0 then return None in place of the SAE.

Hook points per rank (`train_saes(..., distribute_points=True)`, under torchrun): each rank trains
the SAEs of its own points (`split_points`: a contiguous, balanced share of the points) from its own
source, alone: no gradient communication, and each rank writes its own SAE folders. The ranks
still agree once per step (signals, checkpoints due; a dead rank is `PeerLost`) and on every write,
so they stop and checkpoint at the same step. A run resumes under any number of ranks up to the
number of points (the folders are per point; `out_dir` must be visible to every rank).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from interp import distributed
from interp.errors import InterpError
from interp.manifest import make_manifest
from saes.architectures import SAE, SAEConfig
from saes.checkpoint import StopSignals, Terminated, load_checkpoint, resumable, save_checkpoint
from saes.data_parallel import broadcast_state
from saes.plan import Layout
from saes.run_folder import check_out_dir, clear_run, holds_run, point_folder, save_run, save_sharded_run
from saes.stream import ActivationSource, cat, chain, open_at, pick, rebatch, rows
from saes.trainer import TrainConfig, Trainer, default_lr

__all__ = ["ActivationSource", "TrainConfig", "Trainer", "Terminated", "check_out_dir", "default_lr", "holds_run", "point_folder",
           "save_run", "split_points", "train_sae", "train_saes"]

def split_points(points: list[str], w: distributed.World) -> list[str]:
    """Rank `w.rank`'s share of `points`: a contiguous run, the shares differing in size by at most one.

    Rank r gets `points[r * n // W : (r + 1) * n // W]`, so rank 0 holds the first (shallowest, when the
    points are in layer order) points and its forward stops earliest. InterpError when n < W.
    """
    n = len(points)
    if n < w.size:
        raise InterpError(f"--distribute-points gives every rank its own hook points, but {n} point{'s' if n != 1 else ''} "
                          f"cannot go to {w.size} ranks: name at least {w.size} points in --hooks, or start fewer ranks")
    return points[w.rank * n // w.size : (w.rank + 1) * n // w.size]


def train_saes(
    source: ActivationSource,
    sae_cfgs: dict[str, SAEConfig],
    train_cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    shard_latents: int = 1,
    distribute_points: bool = False,
) -> dict[str, SAE]:
    """Train one SAE per hook point from a single pass over a multi-point stream.

    `source` yields `dict[point, Tensor (batch, d)]` (e.g. `harvest(model, points, ...)`);
    `sae_cfgs` maps each point to its SAE config. Each SAE is saved to `out_dir/<point>`
    (SAELens layout) with its checkpoints beside it. Returns the trained SAEs by point.
    `shard_latents`: latent ranks per SAE under torchrun (see the module docstring).
    `distribute_points`: under torchrun, `sae_cfgs` and `source` are this rank's points only (e.g.
    `split_points`); each rank trains and saves its own SAEs (see the module docstring).
    """
    return _train(source, dict(sae_cfgs), train_cfg, Path(out_dir), resume, overwrite, progress, multi=True,
                  layout=Layout(shard_latents, distribute_points))


def train_sae(
    source: ActivationSource,
    sae_cfg: SAEConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    shard_latents: int = 1,
) -> SAE:
    """Train one SAE on a stream of `Tensor (batch, d_in)` batches; save it to `out_dir`.

    With `resume=True` the run continues from `out_dir/checkpoint.safetensors` (if present),
    starting the stream at the tokens already consumed. A folder that holds a run is refused
    unless `resume` or `overwrite` (which deletes the old run's files first). Returns the trained
    SAE (input scale folded in). Raises InterpError for a non-positive token budget, an empty
    stream, or a batch whose width is not `d_in`. `shard_latents=N` splits a TopK SAE's latents over N
    ranks under torchrun (see the module docstring; ranks other than 0 then return None).
    """
    return _train(source, {None: sae_cfg}, train_cfg, Path(out_dir), resume, overwrite, progress, multi=False,
                  layout=Layout(shard_latents))[None]


def _with_manifest(cfg: SAEConfig) -> SAEConfig:
    """`cfg` with a manifest (model and point from the config, no data) when it has none."""
    if cfg.manifest is not None:
        return cfg
    widths = {cfg.hook_name: cfg.d_in} if cfg.hook_name else {}
    return replace(cfg, manifest=make_manifest(cfg.model_name or None, widths))


def make_trainers(cfgs: dict, tcfg: TrainConfig, layout: Layout) -> dict:
    """One trainer per SAE config, of the kind `layout` says (`saes.plan.Layout`)."""
    if layout.kind == "sharded":
        from saes.sharded_trainer import ShardedTrainer, make_mesh

        mesh = make_mesh(layout.data_ranks(distributed.world().size), layout.shard_latents, tcfg.resolved_device().type)
        return {p: ShardedTrainer(_with_manifest(c), tcfg, mesh) for p, c in cfgs.items()}
    alone = distributed.World() if layout.kind == "points" else None  # each rank alone: no gradient communication
    return {p: Trainer(_with_manifest(c), tcfg, world=alone) for p, c in cfgs.items()}


def _train(source, cfgs: dict, tcfg: TrainConfig, out_dir: Path, resume: bool, overwrite: bool, progress: bool, multi: bool,
           layout: Layout) -> dict:
    if tcfg.n_tokens < 1:
        raise InterpError(f"n_tokens={tcfg.n_tokens}: train on at least one token (e.g. n_tokens=10_000_000)")
    if tcfg.batch_size < 1:
        raise InterpError(f"batch_size={tcfg.batch_size} must be at least 1")
    w = distributed.world()
    for c in cfgs.values():
        layout.check(w.size, tcfg.batch_size, c.arch, c.d_sae, tcfg.autocast)
    folders = {p: out_dir / point_folder(p) if multi else out_dir for p in cfgs}
    if layout.kind == "points":
        owners = distributed.all_gather_object(sorted(folders.values()))  # every rank refuses together
        if not all(owners):
            raise InterpError(f"rank {owners.index([])} of {w.size} was given no hook points: give every rank at least one "
                              "(split_points)")
        shared = {f for i, a in enumerate(owners) for b in owners[i + 1:] for f in a if f in b}
        if shared:
            raise InterpError(f"two ranks were given the same hook point ({min(shared)}): give each rank its own (split_points)")
        # Each rank checks its own folders; every rank learns of a refusal.
        distributed.on_some(lambda: [check_out_dir(f, resume, overwrite) for f in folders.values()], w, True)
    else:
        for folder in folders.values():
            check_out_dir(folder, resume, overwrite)
    trainers = make_trainers(cfgs, tcfg, layout)
    ranks = {"sharded": f"on a multiple of {layout.shard_latents} ranks with --shard-latents {layout.shard_latents}",
             "points": "with any number of ranks up to the number of points",
             "replicated": "with any number of ranks"}[layout.kind]
    try:
        return _run(source, trainers, folders, tcfg, out_dir, resume, overwrite, progress, w, layout)
    except distributed.PeerLost as exc:
        raise distributed.PeerLost(f"{exc}; resume from the last checkpoint in {out_dir} (--resume), {ranks}") from None


def _run(source, trainers: dict, folders: dict, tcfg: TrainConfig, out_dir: Path, resume: bool, overwrite: bool,
         progress: bool, w: distributed.World, layout: Layout) -> dict:
    sharded, independent = layout.kind == "sharded", layout.kind == "points"
    lead = next(iter(trainers.values()))
    # Who writes checkpoints: rank 0, under latent sharding data-rank 0 of every latent group, and
    # every rank when each trains its own points.
    writer = lead.writes_checkpoints
    if independent:
        mine = distributed.on_some(lambda: resume and all([resumable(folders[p], 1) for p in trainers]), w, True)
        found = distributed.all_gather_object(mine)
        if any(found) and not all(found):
            raise InterpError(f"only some of the hook points under {out_dir} have a checkpoint: train again with overwrite")
        resumed = all(found)
    else:
        found = distributed.on_main(lambda: resume and all([resumable(folders[p], layout.shard_latents) for p in trainers]), w)
        resumed = distributed.share(found, w)
    if resumed:
        def load() -> None:
            for p, t in trainers.items():
                load_checkpoint(t, folders[p])

        if sharded or independent:  # every rank reads its own shard or points (--out must be visible to all ranks)
            distributed.on_some(load, w, True)
        else:
            distributed.on_main(load, w)
            for t in trainers.values():
                broadcast_state(t, w)
        counts = {n for per_rank in distributed.all_gather_object([t.tokens for t in trainers.values()]) for n in per_rank}
        if len(counts) != 1:
            raise InterpError(f"checkpoints under {out_dir} are at different token counts: train again with overwrite")
    start = lead.tokens
    stream = rebatch(open_at(source, start), tcfg.batch_size, tcfg.n_tokens - start)

    if not resumed:
        head, got = [], 0
        for batch in stream:
            head.append(batch)
            got += rows(batch)
            if got >= tcfg.init_tokens:
                break
        if not head:
            raise InterpError("the activation source yielded no activations: check the data source and token budget")
        sample = cat(head)  # the global sample: every rank reads the whole stream
        for p, t in trainers.items():
            t.initialise(pick(sample, p))
            if layout.kind == "replicated":  # a sharded trainer's initialisation is deterministic, and its shards differ by rank
                broadcast_state(t, w)
        if overwrite:
            distributed.on_some(lambda: [clear_run(f) for f in folders.values()], w, independent or w.is_main)
        stream = chain(head, stream)

    bar = tqdm(total=tcfg.n_tokens, initial=start, unit="tok", unit_scale=True, disable=not (progress and w.is_main),
               desc="SAE training")
    saved_step, saved_at = lead.step, time.monotonic()

    def save_all(together: bool = True) -> None:
        """The writers write; `together`: every rank waits for them (else each writer alone, e.g. on a signal)."""
        nonlocal saved_step, saved_at

        def save() -> None:
            for p, t in trainers.items():
                save_checkpoint(t, folders[p])

        if together:
            distributed.on_some(save, w, writer)
        elif writer:
            save()
        saved_step, saved_at = lead.step, time.monotonic()

    agreed = False
    with StopSignals() as stop, bar:
        try:
            for batch in stream:
                distributed.fault_hook(lead.step, w)
                with stop.busy():
                    for p, t in trainers.items():
                        t.train_on(pick(batch, p))  # each trainer kind takes its own rows of the global batch
                    bar.update(rows(batch))
                    if lead.stats:
                        bar.set_postfix(mse=f"{lead.stats['mse']:.3g}", fvu=f"{lead.stats['fvu']:.3f}", L0=f"{lead.stats['l0']:.1f}",
                                        dead=f"{lead.stats['dead']:.1%}", refresh=False)
                    due, signum = distributed.any_flags(
                        [_checkpoint_due(tcfg, lead.step, saved_step, saved_at), stop.received or 0], w, lead.device)
                    if due:
                        save_all()
                    if signum and stop.received is None:  # another rank was signalled: stop at the same step
                        stop.received = signum
                    agreed = bool(signum)  # every rank stops after this step
                stop.raise_if_stopped()
        except (KeyboardInterrupt, Terminated) as exc:
            with stop.busy():
                if lead.step > saved_step and not sharded:
                    save_all(together=False)
                elif lead.step > saved_step and agreed:
                    # Shards must be saved at one step: only when every rank stops at this one. A rank
                    # stopped alone keeps the last checkpoint, whose shards all hold the same step.
                    save_all()
            if isinstance(exc, Terminated):
                raise Terminated(
                    f"stopped by SIGTERM after step {lead.step} ({lead.tokens:,} tokens): a checkpoint is in {out_dir}; "
                    "resume to continue"
                ) from None
            raise
        if lead.step == 0:
            raise InterpError("the activation source yielded no activations: check the data source and token budget")
        with stop.busy():
            if sharded:
                saes = {p: save_sharded_run(t, folders[p], w) for p, t in trainers.items()}
            elif independent:
                saes = distributed.on_some(lambda: {p: save_run(t, folders[p]) for p, t in trainers.items()}, w, True)
            else:
                saved = distributed.on_main(lambda: {p: save_run(t, folders[p]) for p, t in trainers.items()}, w)
                saes = saved if saved is not None else {p: t.final_sae() for p, t in trainers.items()}
    return saes


def _checkpoint_due(tcfg: TrainConfig, step: int, saved_step: int, saved_at: float) -> bool:
    if step <= saved_step:
        return False
    by_steps = bool(tcfg.checkpoint_every) and step % tcfg.checkpoint_every == 0
    by_time = tcfg.checkpoint_minutes is not None and time.monotonic() - saved_at >= 60 * tcfg.checkpoint_minutes
    return by_steps or by_time

"""Training a latent-sharded TopK SAE (`saes.sharded.ShardedTopK`), optionally also data-parallel.

`make_mesh(dp, tp)` lays the ranks out as a 2-D mesh with dims `("data", "latent")`: the `tp`
ranks of a latent group each hold one shard of the SAE; the `dp` latent groups hold the same shards
and train on different slices of every global batch. `ShardedTrainer` is `Trainer` for one shard:
the same schedule, AuxK, dead-latent window and initialisation (every rank draws exactly its rows
of the unsharded SAE's initial weights), so training gives the unsharded SAE up to float rounding.

Each step sums the gradients over the data group, weighted by each slice's share of the global
batch (the gradient of the global batch's mean loss), and ORs the "fired" masks, so the
dead-latent counters agree. All methods that touch other ranks are collectives: call
`train_step`, `dead_latents`, `final_sae` and `full_since_fired` on every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from interp import distributed
from interp.distributed import World
from saes.architectures import SAE, SAEConfig
from saes.data_parallel import local_rows, reduce_step
from saes.sharded import ShardedTopK, _randn_rows
from saes.trainer import TrainConfig, Trainer

__all__ = ["ShardedTrainer", "make_mesh"]


def make_mesh(dp: int, tp: int, device_type: str | None = None):
    """A `(dp, tp)` device mesh with dims `("data", "latent")` over the running process group.

    `dp * tp` must equal the world size; rank `r` is data rank `r // tp`, latent rank `r % tp`.
    `device_type` defaults to "cuda" when available.
    """
    return distributed.device_mesh((dp, tp), ("data", "latent"), device_type)


class ShardedTrainer(Trainer):
    """`Trainer` for a latent-sharded TopK SAE, optionally also data-parallel.

    `mesh`: a device mesh with dims `("data", "latent")` (`make_mesh`), or None to shard the
    latents over the whole default group. `init`: a full SAE to start from (every rank passes the
    same one); None draws `make_sae`'s weights under `train_cfg.seed`, like `Trainer`.

    The schedule, AuxK size and dead-latent window are `Trainer`'s. `since_fired` is `(m,)`, this
    rank's latents. Batches are per data rank: a step trains on `dp` batches of `(n, d_in)`, and
    `tokens` counts all of them. `initialise` must get the same sample on every rank.
    On CUDA, call `torch.cuda.set_device(local_rank)` first.
    """

    def __init__(self, sae_cfg: SAEConfig, train_cfg: TrainConfig, mesh=None, init: SAE | None = None):
        self.latent_group = mesh.get_group("latent") if mesh is not None else None
        self.data_group = mesh.get_group("data") if mesh is not None else None
        data = distributed.world(self.data_group) if mesh is not None else distributed.World()
        self.dp, self.data_rank = data.size, data.rank
        self._init = init
        super().__init__(sae_cfg, train_cfg)  # the same state as Trainer's, for this rank's shard (`build_sae`)
        self.shard = (self.sae.rank, self.sae.world)

    def build_sae(self) -> ShardedTopK:
        """This rank's shard: of `init` when given, else of the SAE `Trainer` would draw under the seed."""
        if self._init is not None:
            return ShardedTopK.from_full(self._init, self.latent_group)
        return ShardedTopK.init(self.cfg, self.latent_group, self.tcfg.seed)

    @property
    def writes_checkpoints(self) -> bool:
        """Data-rank 0 of each latent group writes its shard's checkpoint."""
        return self.data_rank == 0

    def train_on(self, batch: Tensor) -> None:
        """One step (a collective) on a global batch `(n, d_in)`: this data rank trains on its slice."""
        self.train_step(self.local_rows(batch), batch.shape[0])

    def local_rows(self, batch: Tensor) -> Tensor:
        """This data rank's contiguous slice of a global batch `(n, d_in)` (`saes.data_parallel.local_rows`
        over the data ranks); every rank of a latent group gets the same slice."""
        return local_rows(batch, World(self.data_rank, self.dp))

    def subspace_coords(self, dims: int) -> Tensor:
        """This shard's rows of `Trainer.subspace_coords` (the same draw, without making all of it)."""
        with torch.random.fork_rng(devices=[]):  # the global generator seeded alike draws what Trainer's does
            torch.manual_seed(self.tcfg.seed)
            return _randn_rows(self.cfg.d_sae, dims, self.sae.offset, self.sae.offset + self.sae.m).to(self.device)

    @torch.enable_grad()
    def train_step(self, x: Tensor, batch_rows: int | None = None) -> None:
        """One Adam step on this data rank's slice `(n, d_in)` of a global batch of raw activations (a collective).

        `batch_rows`: rows of the global batch over the data group (None: `n * dp`, equal slices).
        Gradients are summed over the data group weighted by each slice's share, so the step is
        the one `Trainer` takes on the whole global batch.
        """
        x = self.check(x) * self.scale
        n = x.shape[0] * self.dp if batch_rows is None else batch_rows
        sae = self.sae
        dead = self.since_fired >= self.dead_after
        self.zero_grad()
        out = None
        if x.shape[0]:  # every rank of a latent group holds the same slice, so all take this branch or none
            out = sae.training_loss(x, dead=dead, aux_k=self.aux_k, aux_coefficient=self.tcfg.aux_coefficient)
            out.loss.backward()
        fired = out.fired if out is not None else torch.zeros(sae.m, dtype=torch.bool, device=self.device)
        if self.dp > 1:
            with torch.no_grad():
                fired, _ = reduce_step(sae, fired, x.shape[0], n, None, group=self.data_group)
        self.apply_update(fired, n)  # this rank's shard: rows, Adam state and counters are all local
        if self.step % 10 == 1 or self.step == self.total_steps:
            # this data rank's batch slice: figures of the global batch would need one more all-reduce
            mse = out.mse.item() if out is not None else float("nan")
            variance = (x - x.mean(0)).pow(2).sum(-1).mean().item() if out is not None else float("nan")
            self.stats = {
                "mse": mse,
                "fvu": mse / variance,
                "l0": out.l0.item() if out is not None else float("nan"),
                "dead": self._count(dead) / self.cfg.d_sae,
            }
            self.history.append({"step": self.step, "tokens": self.tokens, **self.stats})

    def _count(self, mask: Tensor) -> int:
        """Number of True entries of a per-latent `(m,)` mask over all shards."""
        return int(distributed.all_reduce(mask.sum().reshape(1), group=self.latent_group))

    def dead_latents(self) -> dict:
        """`Trainer.dead_latents` over all shards (a collective)."""
        window = min(self.dead_after, self.tokens)
        dead = self.since_fired >= window if window else torch.zeros_like(self.since_fired, dtype=torch.bool)
        n_dead = self._count(dead)
        return {"window_tokens": int(window), "n_dead": n_dead, "dead_fraction": n_dead / self.cfg.d_sae}

    def final_sae(self) -> SAE | None:
        """The trained full SAE (input scale folded in, eval mode) on latent rank 0; None elsewhere."""
        sae = self.sae.gather_full()
        if sae is None:
            return None
        sae.fold_input_scale(self.scale)
        return sae.eval()

    def full_since_fired(self) -> Tensor | None:
        """The `(d_sae,)` counters on latent rank 0 (None elsewhere), e.g. to save with the SAE."""
        pieces = distributed.gather(self.since_fired, 0, self.latent_group)
        return torch.cat(pieces) if pieces is not None else None


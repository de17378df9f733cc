"""Latent-sharded TopK SAEs: an SAE wider than one device, split over the ranks of a process group.

Rank `r` of the latent group (world size `W`) owns latents `[r * m, (r + 1) * m)`, `m = d_sae / W`:
its `W_enc (d_in, m)`, `b_enc (m,)` and `W_dec (m, d_in)` are column / row slices of the full SAE's;
`b_dec (d_in,)` is replicated. Parameters, gradients and Adam state per rank shrink by `W`; so does
the dense `(n, m)` pre-activation matrix, the largest activation of a step.

Exact TopK (the same latents and values as `saes.architectures.TopKSAE`):
1. each rank encodes its shard with the sparse kernel `saes.sparse.topk_encode`, keeping its local
   top `K = min(k, m)` (values `(n, K)`, ReLU after the top-k as in `TopKSAE`);
2. the `(n, W * K)` candidates are all-gathered and every rank takes the same global top-`k`
   among them; the global top-`k` always lies inside the union of the local top-`K`s;
3. each rank decodes the winners it owns (`saes.sparse.sparse_decode` on its rows of `W_dec`),
   the partial reconstructions `(n, d_in)` are summed over the group and `b_dec` added.
Every rank then holds the same `x_hat`, so every rank computes the same, full loss. Candidates
are ranked by their ReLU'd values; that picks the same positive latents as ranking the raw
pre-activations (which of several zeros is "kept" changes nothing). Communication per step:
all-gathers of `(n, W * K)` values and indices and an all-reduce of `(n, d_in)` (each twice with
AuxK), small next to the `(n, d_in) x (d_in, m)` encoder matmul.

Gradients: the loss is identical on every rank, so its gradient with respect to `x_hat` is too,
and the sum over ranks passes it back unchanged (`_SumOverRanks`); each shard's gradient is then
the unsharded gradient restricted to the shard. `b_dec` reaches the encoder of every shard
(`x - b_dec`), so that part of its gradient is summed over the group in the backward
(`_CopyToRanks`, Megatron's `f`); its decoder part is already identical everywhere.

AuxK (Gao et al.) runs the same local / gather / global scheme over each rank's dead latents.

Data parallelism combines as a 2-D mesh (`make_mesh(dp, tp)`: dims `("data", "latent")`): the
latent group shards as above; the data group sums every gradient weighted by each rank's share
of the global batch (an all-reduce over `"data"`: the gradient of the global batch's mean loss)
and ORs the "fired" masks, so the dead-latent counters agree.

All collectives here run on every rank of the group in the same order: call `training_loss`,
`gather_full`, `dead_latents` and `final_sae` on every rank.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor, nn

from interp.errors import InterpError
from saes.architectures import SAE, SAEConfig, TrainOutput, sae_from_tensors
from saes.sparse import sparse_decode, topk_encode
from saes.trainer import TrainConfig, Trainer

__all__ = ["ShardedTopK", "ShardedTrainer", "make_mesh"]

_SHARD_NAMES = ("W_enc", "b_enc", "W_dec")
_LATENT_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0}


def make_mesh(dp: int, tp: int, device_type: str | None = None):
    """A `(dp, tp)` device mesh with dims `("data", "latent")` over an initialised process group.

    `dp * tp` must equal the world size. `device_type` defaults to "cuda" when available.
    """
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        raise InterpError("latent sharding needs torch.distributed: launch with torchrun and call dist.init_process_group first")
    if dp * tp != dist.get_world_size():
        raise InterpError(f"a mesh of {dp} data x {tp} latent ranks needs {dp * tp} processes, but {dist.get_world_size()} were launched")
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return init_device_mesh(device_type, (dp, tp), mesh_dim_names=("data", "latent"))


def _world(group) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def _rank(group) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def _randn_rows(n_rows: int, d: int, start: int, stop: int, chunk: int = 1 << 22) -> Tensor:
    """Rows `[start, stop)` of `torch.randn(n_rows, d)` (CPU generator, float32) without the full matrix.

    torch's CPU normal sampler fills one uniform per element, turns each block of 16 into normals
    (Box-Muller), and, when the size is not a multiple of 16, overwrites the last 16 values with
    normals from 16 further uniforms. Drawing the stream in pieces of whole 16-blocks (at most
    `chunk` numbers each) therefore gives the same numbers; `tests/saes/test_sharded.py` checks it
    against `torch.randn`. Returns `(stop - start, d)`.
    """
    size = n_rows * d
    if size < 16:  # below one block torch samples element by element
        return torch.randn(n_rows, d)[start:stop].clone()
    lo, hi = start * d, stop * d
    body = size - size % 16
    chunk = max(16, chunk - chunk % 16)
    out = torch.empty(hi - lo)
    pos = 0
    while pos < min(hi, body):
        block = torch.randn(min(chunk, body - pos))
        a, b = max(pos, lo), min(pos + block.numel(), hi)
        if a < b:
            out[a - lo:b - lo] = block[a - pos:b - pos]
        pos += block.numel()
    if size % 16 and hi > size - 16:
        torch.rand(body - pos + size % 16)  # the uniforms of the rest of the body and of the partial block
        tail = torch.randn(16)
        a = max(size - 16, lo)
        out[a - lo:hi - lo] = tail[a - (size - 16):hi - (size - 16)]
    return out.reshape(stop - start, d)


class _SumOverRanks(torch.autograd.Function):
    """Forward: all-reduce SUM of `(n, d)` partials. Backward: the gradient passes unchanged,
    because every rank computes the same loss from the summed output (Megatron's `g`)."""

    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:
        out = t.clone()
        if _world(group) > 1:
            dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _CopyToRanks(torch.autograd.Function):
    """Forward: identity on a replicated tensor. Backward: all-reduce SUM of the gradient, whose
    parts come from different shards (Megatron's `f`)."""

    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        if _world(ctx.group) > 1:
            dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ShardedTopK(nn.Module):
    """This rank's shard of a TopK SAE of config `cfg`, sharded over the latents across `group`.

    Parameters (SAELens names, local shapes): `W_enc (d_in, m)`, `b_enc (m,)`, `W_dec (m, d_in)`,
    `b_dec (d_in,)` (replicated), `m = d_sae / world_size`. Local latent `i` is global latent
    `offset + i`, `offset = rank * m`. `group` is the latent process group (None: the default
    group). Build with `from_full` (slice a full SAE) or `init` (the same initial weights as
    `make_sae` under a seed, without keeping the full SAE).
    """

    def __init__(self, cfg: SAEConfig, group=None):
        super().__init__()
        if cfg.arch != "topk":
            raise InterpError(f"latent sharding supports topk SAEs, not {cfg.arch!r}; train a topk SAE or drop --shard-latents")
        world = _world(group)
        if cfg.d_sae % world:
            raise InterpError(
                f"d_sae={cfg.d_sae} is not divisible by the {world} ranks that shard the latents; "
                f"choose a width that is a multiple of {world} (e.g. {cfg.d_sae + world - cfg.d_sae % world})"
            )
        self.cfg, self.group = cfg, group
        self.world, self.rank = world, _rank(group)
        self.m = cfg.d_sae // world
        self.offset = self.rank * self.m
        dtype = cfg.torch_dtype
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, self.m, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(self.m, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(self.m, cfg.d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def local(self) -> slice:
        """This rank's latents as a slice of the full `d_sae`."""
        return slice(self.offset, self.offset + self.m)

    # --- building and gathering -------------------------------------------------------------
    @classmethod
    def from_full(cls, sae: SAE, group=None) -> "ShardedTopK":
        """Rank `r` keeps its slice of `sae` (the same full TopK SAE on every rank, e.g. loaded from disk)."""
        shard = cls(replace(sae.cfg), group)
        with torch.no_grad():
            for name in _SHARD_NAMES:
                full = getattr(sae, name).detach()
                getattr(shard, name).copy_(full.narrow(_LATENT_DIM[name], shard.offset, shard.m))
            shard.b_dec.copy_(sae.b_dec.detach())
        return shard.to(sae.W_enc.device)

    @classmethod
    def init(cls, cfg: SAEConfig, group=None, seed: int = 0) -> "ShardedTopK":
        """The shard of `make_sae(cfg)` drawn under `torch.manual_seed(seed)` (what `Trainer` draws).

        Every rank replays the CPU generator's stream up to its rows, in chunks (`_randn_rows`), so
        the shards equal an unsharded run's while no rank holds the full decoder.
        """
        shard = cls(cfg, group)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            rows = _randn_rows(cfg.d_sae, cfg.d_in, shard.offset, shard.offset + shard.m)  # SAE.__init__'s first draw
            rows /= rows.norm(dim=1, keepdim=True)
            rows = rows.to(cfg.torch_dtype)
            shard.W_dec.copy_(rows)
            shard.W_enc.copy_(rows.t())
        return shard

    @torch.no_grad()
    def gather_full(self, dst: int = 0) -> SAE | None:
        """The full `TopKSAE` on latent-group rank `dst` (None on the other ranks); a collective."""
        global_dst = dist.get_global_rank(self.group, dst) if self.world > 1 and self.group is not None else dst
        tensors = {"b_dec": self.b_dec.detach()}
        for name in _SHARD_NAMES:
            local = getattr(self, name).detach().contiguous()
            if self.world == 1:
                tensors[name] = local
                continue
            pieces = [torch.empty_like(local) for _ in range(self.world)] if self.rank == dst else None
            dist.gather(local, pieces, dst=global_dst, group=self.group)
            if self.rank == dst:
                tensors[name] = torch.cat(pieces, dim=_LATENT_DIM[name])
        if self.rank != dst:
            return None
        return sae_from_tensors(replace(self.cfg), {k: v.cpu() for k, v in tensors.items()}).to(self.W_enc.device)

    # --- forward ------------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_in:
            raise InterpError(f"activations have last dimension {x.shape[-1]} but the sharded SAE expects d_in={self.d_in}; "
                              "use an SAE trained on this hook point and model")
        return x.reshape(-1, self.d_in).to(self.W_enc.dtype)

    def _b_dec_in(self) -> Tensor:
        """`b_dec` as the encoder subtracts it, its gradient summed over the shards."""
        if not self.cfg.apply_b_dec_to_input:
            return torch.zeros_like(self.b_dec)
        return _CopyToRanks.apply(self.b_dec, self.group)

    def _select(self, values: Tensor, global_idx: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Global top-`k` over every rank's candidates.

        values, global_idx `(n, K)`: this rank's candidates (the same `K` on every rank).
        Returns keep `(n, K)` bool (which of this rank's candidates won), and the winners'
        values and global indices `(n, k)` (the same on every rank).
        """
        n, K = values.shape
        if self.world > 1:
            all_values = [torch.empty_like(values) for _ in range(self.world)]
            all_idx = [torch.empty_like(global_idx) for _ in range(self.world)]
            dist.all_gather(all_values, values.detach().contiguous(), group=self.group)
            dist.all_gather(all_idx, global_idx.contiguous(), group=self.group)
            cand_values, cand_idx = torch.cat(all_values, 1), torch.cat(all_idx, 1)  # (n, W * K), rank-major
        else:
            cand_values, cand_idx = values.detach(), global_idx
        top_values, pos = torch.topk(cand_values, k, dim=-1, sorted=False)
        mine = torch.div(pos, K, rounding_mode="floor") == self.rank
        slot = torch.where(mine, pos - self.rank * K, torch.full_like(pos, K))  # K: a discard column
        keep = torch.zeros(n, K + 1, dtype=torch.bool, device=values.device).scatter_(1, slot, True)[:, :K]
        return keep, top_values, cand_idx.gather(1, pos)

    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """TopK codes of the full SAE: x `(n, d_in)` -> values `(n, k)` (ReLU'd), global indices `(n, k)`.

        The same on every rank (a collective).
        """
        x = self._flat(x)
        with torch.no_grad():
            values, local = topk_encode(x, self.W_enc, self.b_enc, self._b_dec_in(), min(self.cfg.k, self.m))
            _, top_values, top_idx = self._select(values, local + self.offset, self.cfg.k)
        return top_values, top_idx

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of the full SAE, x `(n, d_in)` -> `(n, d_in)`, the same on every rank (a collective)."""
        x = self._flat(x)
        values, local = topk_encode(x, self.W_enc, self.b_enc, self._b_dec_in(), min(self.cfg.k, self.m))
        keep, _, _ = self._select(values, local + self.offset, self.cfg.k)
        return _SumOverRanks.apply(sparse_decode(values * keep, local, self.W_dec), self.group) + self.b_dec

    def training_loss(self, x: Tensor, dead: Tensor | None = None, aux_k: int = 512, aux_coefficient: float = 1 / 32) -> TrainOutput:
        """`TopKSAE.training_loss` of the full SAE on a batch x `(n, d_in)` (the same on every rank).

        `dead` `(m,)` bool marks this rank's dead latents. The output's `loss`, `mse`, `l0` and
        `terms` are the full SAE's; `fired` `(m,)` covers this rank's latents.
        """
        x = self._flat(x)
        K = min(self.cfg.k, self.m)
        values, local = topk_encode(x, self.W_enc, self.b_enc, self._b_dec_in(), K)
        keep, top_values, _ = self._select(values, local + self.offset, self.cfg.k)
        x_hat = _SumOverRanks.apply(sparse_decode(values * keep, local, self.W_dec), self.group) + self.b_dec
        residual = x - x_hat
        mse = residual.pow(2).sum(-1).mean()
        terms = {}
        if dead is not None:
            aux = self.auxk_loss(x, residual.detach(), dead, aux_k)
            if aux is not None:
                terms["auxk"] = aux_coefficient * aux
        loss = mse + sum(terms.values())
        fired = torch.zeros(self.m, dtype=torch.bool, device=x.device)
        fired[local[keep & (values > 0)]] = True
        l0 = (top_values > 0).sum(-1).float().mean()
        return TrainOutput(loss, mse.detach(), l0, fired, {name: t.detach() for name, t in terms.items()})

    def auxk_loss(self, x: Tensor, residual: Tensor, dead: Tensor, aux_k: int) -> Tensor | None:
        """`SAE.auxk_loss` over the dead latents of all ranks; None when no rank has one.

        x, residual `(n, d_in)` (the same on every rank); dead `(m,)` bool, this rank's latents.
        """
        n_dead = dead.sum().reshape(1)
        if self.world > 1:
            dist.all_reduce(n_dead, group=self.group)
        n_dead = int(n_dead)
        if n_dead == 0:
            return None
        k = min(aux_k, n_dead)
        K = min(k, self.m)
        dead_idx = dead.nonzero().squeeze(1)
        k_here = min(K, dead_idx.numel())
        b_dec = self.b_dec.detach() * self.cfg.apply_b_dec_to_input
        n = x.shape[0]
        if k_here:
            values, local = topk_encode(x, self.W_enc[:, dead_idx], self.b_enc[dead_idx], b_dec, k_here)
            global_idx = dead_idx[local] + self.offset
        else:
            values = x.new_zeros(n, 0)
            local = global_idx = torch.zeros(n, 0, dtype=torch.long, device=x.device)
        # Pad to K candidates with -1: below every ReLU'd value, and at least k real candidates exist.
        padded = torch.cat([values.detach(), values.new_full((n, K - k_here), -1.0)], 1)
        padded_idx = torch.cat([global_idx, global_idx.new_full((n, K - k_here), -1)], 1)
        keep, _, _ = self._select(padded, padded_idx, k)
        if k_here:
            partial = sparse_decode(values * keep[:, :k_here], local, self.W_dec[dead_idx])
        else:
            partial = x.new_zeros(n, self.d_in)
        recon = _SumOverRanks.apply(partial, self.group)
        scale = min(n_dead / aux_k, 1.0)
        return scale * (recon - residual).pow(2).sum(-1).mean()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale this rank's decoder rows to unit norm (rows are independent)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)


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
        # Trainer.__init__ would build the full SAE; this sets the same state for one shard.
        self.cfg, self.tcfg = sae_cfg, train_cfg
        self.device = train_cfg.resolved_device()
        self.latent_group = mesh.get_group("latent") if mesh is not None else None
        self.data_group = mesh.get_group("data") if mesh is not None else None
        self.dp = _world(self.data_group) if mesh is not None else 1
        if init is not None:
            self.sae = ShardedTopK.from_full(init, self.latent_group)
        else:
            self.sae = ShardedTopK.init(sae_cfg, self.latent_group, train_cfg.seed)
        self.sae.to(self.device)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=(train_cfg.beta1, train_cfg.beta2))
        self.since_fired = torch.zeros(self.sae.m, dtype=torch.long, device=self.device)
        self.scale = 1.0
        self.step = 0
        self.tokens = 0
        self.stats: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    def local_rows(self, batch: Tensor) -> Tensor:
        """This data rank's contiguous slice of a global batch `(n, d_in)`: `ceil(n / dp)` rows, the
        last slices fewer (possibly none); every rank of a latent group gets the same slice."""
        if self.dp == 1:
            return batch
        per = -(-batch.shape[0] // self.dp)
        r = dist.get_rank(self.data_group)
        return batch[min(batch.shape[0], r * per):min(batch.shape[0], (r + 1) * per)]

    @torch.no_grad()
    def initialise(self, sample: Tensor) -> None:
        """`Trainer.initialise` for the shard: input scale, `b_dec`, optional active-subspace init."""
        sample = self.check(sample).float()
        if self.tcfg.normalize:
            self.scale = math.sqrt(self.cfg.d_in) / sample.norm(dim=1).mean().clamp_min(1e-12).item()
        sample = sample * self.scale
        mean = sample.mean(0)
        sae = self.sae
        if self.tcfg.init_active_subspace:
            _, s, v = torch.linalg.svd(sample - mean, full_matrices=False)
            explained = (s.pow(2).cumsum(0) / s.pow(2).sum()).cpu()
            dims = int((explained < self.tcfg.active_subspace_variance).sum()) + 1
            with torch.random.fork_rng(devices=[]):  # the global generator seeded alike draws what Trainer's does
                torch.manual_seed(self.tcfg.seed)
                coords = _randn_rows(self.cfg.d_sae, dims, sae.offset, sae.offset + sae.m).to(self.device)
            rows = coords @ v[:dims]
            sae.W_dec.copy_(rows / rows.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.t())
        sae.b_dec.copy_(mean.to(sae.b_dec.dtype))

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
        self.opt.zero_grad(set_to_none=True)
        out = None
        if x.shape[0]:  # every rank of a latent group holds the same slice, so all take this branch or none
            out = sae.training_loss(x, dead=dead, aux_k=self.aux_k, aux_coefficient=self.tcfg.aux_coefficient)
            out.loss.backward()
        fired = out.fired if out is not None else torch.zeros(sae.m, dtype=torch.bool, device=self.device)
        with torch.no_grad():
            if self.dp > 1:
                share = x.shape[0] / n
                for p in sae.parameters():
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad * share
                    dist.all_reduce(p.grad, group=self.data_group)
                fired = fired.to(torch.uint8)
                dist.all_reduce(fired, op=dist.ReduceOp.MAX, group=self.data_group)
                fired = fired.bool()
            g = sae.W_dec.grad
            if g is not None:
                rows = sae.W_dec
                g -= (g * rows).sum(1, keepdim=True) * rows
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.step()
        sae.normalize_decoder()
        self.since_fired += n
        self.since_fired[fired] = 0
        self.step += 1
        self.tokens += n
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
        total = mask.sum().reshape(1)
        if self.sae.world > 1:
            dist.all_reduce(total, group=self.latent_group)
        return int(total)

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
        local = self.since_fired.contiguous()
        if self.sae.world == 1:
            return local
        pieces = [torch.empty_like(local) for _ in range(self.sae.world)] if self.sae.rank == 0 else None
        dst = dist.get_global_rank(self.latent_group, 0) if self.latent_group is not None else 0
        dist.gather(local, pieces, dst=dst, group=self.latent_group)
        return torch.cat(pieces) if pieces is not None else None


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

Data parallelism combines as a 2-D mesh (`saes.sharded_trainer.make_mesh(dp, tp)`: dims `("data", "latent")`): the
latent group shards as above; the data group sums every gradient weighted by each rank's share
of the global batch (an all-reduce over `"data"`: the gradient of the global batch's mean loss)
and ORs the "fired" masks, so the dead-latent counters agree.

The trainer (`ShardedTrainer`, `make_mesh`) is in `saes.sharded_trainer`. Collectives go through
`interp.distributed`, so a lost peer raises its one-line `PeerLost`. They run on every rank of the
group in the same order: call `forward`, `encode_sparse`, `training_loss` and `gather_full` on every rank.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from interp import distributed
from interp.errors import InterpError
from saes.architectures import SAE, SAEConfig, TrainOutput, sae_from_tensors
from saes.sparse import sparse_decode, topk_encode

__all__ = ["ShardedTopK"]

_SHARD_NAMES = ("W_enc", "b_enc", "W_dec")
_LATENT_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0}


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
        return distributed.all_reduce(t.clone(), group=group)

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
        return distributed.all_reduce(grad.clone(), group=ctx.group), None


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
        place = distributed.world(group)
        world = place.size
        if cfg.d_sae % world:
            raise InterpError(
                f"d_sae={cfg.d_sae} is not divisible by the {world} ranks that shard the latents; "
                f"choose a width that is a multiple of {world} (e.g. {cfg.d_sae + world - cfg.d_sae % world})"
            )
        self.cfg, self.group = cfg, group
        self.world, self.rank = world, place.rank
        self.m = cfg.d_sae // world
        self.offset = self.rank * self.m
        dtype = cfg.torch_dtype
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, self.m, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(self.m, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(self.m, cfg.d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))

    # What does not depend on the sharding is the unsharded SAE's own code (it reads only `cfg`,
    # `W_enc` and `W_dec`): the sizes, the input check and the unit-norm rows (rows are independent).
    d_in = SAE.d_in
    d_sae = SAE.d_sae
    _flat = SAE._flat
    normalize_decoder = SAE.normalize_decoder

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
        tensors = {"b_dec": self.b_dec.detach()}
        for name in _SHARD_NAMES:
            pieces = distributed.gather(getattr(self, name).detach(), dst, self.group)
            if pieces is not None:
                tensors[name] = torch.cat(pieces, dim=_LATENT_DIM[name])
        if self.rank != dst:
            return None
        return sae_from_tensors(replace(self.cfg), {k: v.cpu() for k, v in tensors.items()}).to(self.W_enc.device)

    # --- forward ------------------------------------------------------------------------------
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
        all_values = distributed.all_gather(values.detach(), self.group)
        all_idx = distributed.all_gather(global_idx, self.group)
        cand_values, cand_idx = torch.cat(all_values, 1), torch.cat(all_idx, 1)  # (n, W * K), rank-major
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

    def _reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Encode this shard, select the global top k, decode the winners and sum over the ranks.

        x `(n, d_in)` -> x_hat `(n, d_in)` (the same on every rank), this rank's candidate values and
        local indices `(n, K)`, which of them won `(n, K)` bool, and the winners' values `(n, k)`.
        """
        values, local = topk_encode(x, self.W_enc, self.b_enc, self._b_dec_in(), min(self.cfg.k, self.m))
        keep, top_values, _ = self._select(values, local + self.offset, self.cfg.k)
        x_hat = _SumOverRanks.apply(sparse_decode(values * keep, local, self.W_dec), self.group) + self.b_dec
        return x_hat, values, local, keep, top_values

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of the full SAE, x `(n, d_in)` -> `(n, d_in)`, the same on every rank (a collective)."""
        return self._reconstruct(self._flat(x))[0]

    def training_loss(self, x: Tensor, dead: Tensor | None = None, aux_k: int = 512, aux_coefficient: float = 1 / 32) -> TrainOutput:
        """`TopKSAE.training_loss` of the full SAE on a batch x `(n, d_in)` (the same on every rank).

        `dead` `(m,)` bool marks this rank's dead latents. The output's `loss`, `mse`, `l0` and
        `terms` are the full SAE's; `fired` `(m,)` covers this rank's latents.
        """
        x = self._flat(x)
        x_hat, values, local, keep, top_values = self._reconstruct(x)
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
        n_dead = int(distributed.all_reduce(dead.sum().reshape(1), group=self.group))
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

"""Sparse TopK encode/decode with backward passes that touch only the selected latents.

A TopK SAE keeps `k` of `d_sae` latents per token. The dense autograd path builds an
`(n, d_sae)` activation matrix and multiplies it by the decoder in both directions, so the
backward costs two more `(n, d_in, d_sae)` matmuls than the forward. Here the activations stay
as `(n, k)` values and indices:

- `TopKEncode`: `pre = (x - b_dec) @ W_enc + b_enc` (the one dense matmul), keep the top `k`
  per row, ReLU them. Backward scatters the `(n, k)` value gradients into the `k` selected
  columns of `W_enc`, `b_enc` and (through the input centring) `b_dec`.
- `SparseDecode`: `x_hat = sum_j values[:, j] * W_dec[indices[:, j]]`. Backward gathers
  `W_dec` rows for the value gradient and scatters into the selected rows of `W_dec`.

The three primitives below are built on `F.embedding_bag`, whose kernels loop over
(index, weight) pairs without materialising `(n, k, d_in)` or `(n, d_sae)` tensors. A training
step then costs the encoder matmul `2 * n * d_in * d_sae` FLOPs plus `O(n * k * d_in)` terms.

On the CPU the encoder runs in row blocks (about 16 MB, at least 1024 rows) (`ENCODE_BLOCK_FLOATS`), so each block's
pre-activations are selected while still in cache and no `(n, d_sae)` tensor exists, and the
selection is `select_topk`: the top `k` of a row lie in the `k` groups with the largest maxima, so
the maxima of a few interleaved groups are taken in one pass and only those groups' members are
ranked (exact; 1.3-1.7x faster than `torch.topk` at 4608-32768 latents).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def gather_sum(indices: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """`out[t] = sum_j weights[t, j] * table[indices[t, j]]`.

    indices `(n, k)` long, weights `(n, k)`, table `(m, d)` -> `(n, d)`.
    """
    return F.embedding_bag(indices, table, per_sample_weights=weights.to(table.dtype), mode="sum")


def scatter_sum(indices: Tensor, weights: Tensor, rows: Tensor, m: int) -> Tensor:
    """`out[i] = sum_{t, j : indices[t, j] == i} weights[t, j] * rows[t]` (the transpose of `gather_sum`).

    indices `(n, k)` long, weights `(n, k)`, rows `(n, d)` -> `(m, d)`.
    Implemented as an embedding bag over `rows`, one bag per latent, after sorting the pairs
    by latent.
    """
    n, k = indices.shape
    flat = indices.reshape(-1)
    order = _sort_order(flat, m)
    counts = torch.bincount(flat, minlength=m)
    offsets = torch.zeros(m, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.cumsum(counts, 0)[:-1]
    token = torch.div(order, k, rounding_mode="floor")
    return F.embedding_bag(token, rows, offsets, per_sample_weights=weights.reshape(-1)[order].to(rows.dtype), mode="sum")


def _sort_order(flat: Tensor, m: int) -> Tensor:
    """Stable argsort of latent ids `(p,)` in `[0, m)`.

    On CPU numpy's stable sort of 16-bit keys is a radix sort, tens of times faster than
    torch's parallel comparison sort, which also stalls on a busy machine.
    """
    if flat.device.type == "cpu" and m <= 2**15:
        return torch.from_numpy(np.argsort(flat.numpy().astype(np.int16), kind="stable"))
    return torch.sort(flat, stable=True).indices


def gather_dot(indices: Tensor, table: Tensor, rows: Tensor) -> Tensor:
    """`out[t, j] = rows[t] . table[indices[t, j]]`.

    indices `(n, k)` long, table `(m, d)`, rows `(n, d)` -> `(n, k)`.
    This is the gradient of `gather_sum` with respect to its weights: the embedding-bag kernel for
    that gradient is called directly (half the time of going through autograd, which first runs the
    bag forward), else through autograd.
    """
    n, k = indices.shape
    flat = indices.reshape(-1)
    try:
        offsets = torch.arange(0, n * k, k, device=flat.device)
        bag_of = torch.arange(n, device=flat.device).repeat_interleave(k)
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            rows.to(table.dtype).contiguous(), table.detach(), flat, offsets, bag_of, 0, -1)
        return out.view(n, k)
    except (AttributeError, RuntimeError, TypeError):  # a torch without this kernel's signature
        pass
    with torch.enable_grad():
        w = torch.ones(indices.shape, dtype=table.dtype, device=table.device, requires_grad=True)
        out = F.embedding_bag(indices, table.detach(), per_sample_weights=w, mode="sum")
        (grad,) = torch.autograd.grad(out, w, rows)
    return grad


GROUPS = 4  # group size of `select_topk`
ENCODE_BLOCK_FLOATS = 2**22  # pre-activations per encoder block on the CPU (16 MB in float32)
ENCODE_MIN_ROWS = 1024  # rows per block at least: each block reads all of W_enc, so it must be long


def select_topk(a: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The `k` largest entries of each row of `a (n, m)`: (values `(n, k)`, indices `(n, k)`), unordered.

    Equal to `torch.topk(a, k, sorted=False)` up to the order within a row (and which of tied entries
    is kept). Row entries are split into `GROUPS`-sized interleaved groups `{j, j + w, j + 2w, ...}`
    (`w = m / GROUPS`). Every group holding one of the top `k` has a maximum at least the `k`-th
    largest value, and at most `k` groups hold them, so the `k` groups with the largest maxima
    (found the same way, recursively) contain the top `k`: only their `k * GROUPS` members are
    ranked. Falls back to `torch.topk` off the CPU (its selection is already a radix select) and
    where the groups would be too few.
    """
    n, m = a.shape
    w = m // GROUPS
    if a.device.type != "cpu" or m % GROUPS or w < 4 * k:
        return torch.topk(a, k, dim=-1, sorted=False)
    _, group = select_topk(a.view(n, GROUPS, w).amax(1), k)
    members = (group.unsqueeze(-1) + torch.arange(0, m, w)).reshape(n, k * GROUPS)
    values, pos = torch.topk(torch.gather(a, 1, members), k, dim=-1, sorted=False)
    return values, torch.gather(members, 1, pos)


_buffers = threading.local()


def _scratch(n: int, m: int, like: Tensor) -> Tensor:
    """An `(n, m)` buffer for one block of pre-activations, reused from call to call on this thread.

    The pre-activations are read once by the selection and never saved, so one buffer serves every
    block and step: a fresh tensor per step costs a page fault per 4 KiB on first write.
    """
    buf = getattr(_buffers, "pre", None)
    if buf is None or buf.dtype != like.dtype or buf.numel() < n * m:
        buf = _buffers.pre = torch.empty(n * m, dtype=like.dtype)
    return buf[: n * m].view(n, m)


def encode_topk(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-`k` pre-activations of `x_c @ W_enc + b_enc` per row, not yet ReLU'd: (values, indices) `(n, k)`.

    CPU: in row blocks of about `ENCODE_BLOCK_FLOATS` pre-activations, each selected while in cache.
    Elsewhere: one matmul and `torch.topk`.
    """
    if x_c.device.type != "cpu":
        return torch.topk(torch.addmm(b_enc, x_c, W_enc), k, dim=-1, sorted=False)
    n, m = x_c.shape[0], W_enc.shape[1]
    step = max(ENCODE_MIN_ROWS, ENCODE_BLOCK_FLOATS // m)
    values = torch.empty(n, k, dtype=x_c.dtype)
    indices = torch.empty(n, k, dtype=torch.long)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        pre = torch.addmm(b_enc, x_c[rows], W_enc, out=_scratch(rows.stop - start, m, x_c))
        values[rows], indices[rows] = select_topk(pre, k)
    return values, indices


class TopKEncode(torch.autograd.Function):
    """Top-k latents of `relu`-free pre-activations, then ReLU on the kept values.

    Forward inputs:
        x      `(n, d_in)`      activations
        W_enc  `(d_in, d_sae)`
        b_enc  `(d_sae,)`
        b_dec  `(d_in,)`        subtracted from `x` before encoding
        k      int              latents kept per row
    Forward outputs:
        values  `(n, k)`  `relu(top-k pre-activations)`, >= 0
        indices `(n, k)`  long, latent of each value (not differentiable)
    Backward: gradients for x `(n, d_in)` (only if needed), W_enc `(d_in, d_sae)`,
    b_enc `(d_sae,)`, b_dec `(d_in,)`; non-zero only in the selected columns of W_enc / b_enc.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int):
        x_c = x - b_dec
        values, indices = encode_topk(x_c, W_enc, b_enc, k)
        values = values.relu_()
        ctx.save_for_backward(x_c, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices: Tensor | None):
        x_c, W_enc, values, indices = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        g = grad_values * (values > 0)  # ReLU gradient
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if ctx.needs_input_grad[1]:
            # made latent by latent, (d_sae, d_in) rows: the memory layout of a W_enc made as W_dec.T, so
            # autograd keeps it as is (a W_enc in another layout gets a copy)
            grad_W = scatter_sum(indices, g, x_c, d_sae).t()
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            col_sum = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, indices.reshape(-1), g.reshape(-1))
            grad_b_enc = col_sum if ctx.needs_input_grad[2] else None
            grad_b_dec = -(W_enc @ col_sum) if ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[0]:
            grad_x = gather_sum(indices, g, W_enc.t().contiguous())
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None


class SparseDecode(torch.autograd.Function):
    """`x_hat[t] = sum_j values[t, j] * W_dec[indices[t, j]]` (no decoder bias).

    Forward inputs:
        values  `(n, k)`
        indices `(n, k)` long
        W_dec   `(d_sae, d_in)`
    Forward output: `(n, d_in)`.
    Backward: gradients for values `(n, k)` and W_dec `(d_sae, d_in)` (non-zero only in the
    rows that some token selected).
    """

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, W_dec)
        return gather_sum(indices, values, W_dec)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        grad_values = gather_dot(indices, W_dec, grad_out) if ctx.needs_input_grad[0] else None
        grad_W = scatter_sum(indices, values, grad_out, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_W


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Sparse TopK encoder: x `(n, d_in)` -> (values `(n, k)`, indices `(n, k)`).

    Under `torch.autocast` the encoder matmul runs in the autocast dtype (autocast does not reach
    inside a custom Function, and not an `out=` matmul): the inputs are cast here, and the values
    come back in `W_enc`'s dtype, so the decoder and the loss stay in the master weights' precision.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return TopKEncode.apply(x, W_enc, b_enc, b_dec, k)
    low = torch.get_autocast_dtype(x.device.type)
    values, indices = TopKEncode.apply(x.to(low), W_enc.to(low), b_enc.to(low), b_dec.to(low), k)
    return values.to(W_enc.dtype), indices


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Sparse decoder without bias: values, indices `(n, k)`, W_dec `(d_sae, d_in)` -> `(n, d_in)`."""
    return SparseDecode.apply(values, indices, W_dec)

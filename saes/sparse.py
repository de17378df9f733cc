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
    This is the gradient of `gather_sum` with respect to its weights, so it reuses the fused
    embedding-bag kernel for that gradient.
    """
    with torch.enable_grad():
        w = torch.ones(indices.shape, dtype=table.dtype, device=table.device, requires_grad=True)
        out = F.embedding_bag(indices, table.detach(), per_sample_weights=w, mode="sum")
        (grad,) = torch.autograd.grad(out, w, rows)
    return grad


_buffers = threading.local()


def _scratch(n: int, m: int, like: Tensor) -> Tensor:
    """An `(n, m)` buffer for the pre-activations, reused from call to call on this thread (CPU only).

    The pre-activations are read once by `topk` and never saved, so one buffer serves every step.
    On the CPU a fresh `(n, d_sae)` tensor per step costs a page fault per 4 KiB on first write
    (a 4096 x 4608 float32 batch: 75 MB, about a tenth of the step); CUDA's caching allocator
    already reuses its blocks.
    """
    if like.device.type != "cpu":
        return torch.empty((n, m), dtype=like.dtype, device=like.device)
    buf = getattr(_buffers, "pre", None)
    if buf is None or buf.dtype != like.dtype or buf.numel() < n * m:
        buf = _buffers.pre = torch.empty(n * m, dtype=like.dtype)
    return buf[: n * m].view(n, m)


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
        pre = torch.addmm(b_enc, x_c, W_enc, out=_scratch(x_c.shape[0], W_enc.shape[1], x_c))
        values, indices = torch.topk(pre, k, dim=-1, sorted=False)
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
            # (d_sae, d_in) transposed: the layout of a W_enc made as W_dec.T, so autograd keeps it as is
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

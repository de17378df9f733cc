"""JumpReLU SAEs: per-latent learned thresholds trained through straight-through estimators.

`z = pre * H(pre - theta)` with `theta = exp(log_threshold)`; the threshold gets gradients from a
straight-through estimator with a rectangle kernel of width `jumprelu_bandwidth`, and the L0
penalty `sum H(pre - theta)` is trained through the same estimator (Rajamanoharan et al. 2024).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from saes.base import SAE, SAEConfig


class _Step(torch.autograd.Function):
    """H(pre - theta); d/dtheta = -(1/eps) K((pre - theta)/eps), rectangle K; no gradient to pre."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        window = ((pre - theta).abs() < ctx.eps / 2).to(grad.dtype)
        return None, -(grad * window).sum(0) / ctx.eps, None


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); d/dpre = H(pre - theta), d/dtheta = -(theta/eps) K((pre - theta)/eps)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        window = ((pre - theta).abs() < ctx.eps / 2).to(grad.dtype)
        return grad * (pre > theta), -(theta / ctx.eps) * (grad * window).sum(0), None


class JumpReLUSAE(SAE):
    """Per-latent learned thresholds, trained with an L0 penalty through straight-through estimators."""

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold)))

    @property
    def threshold(self) -> Tensor:
        """Thresholds `(d_sae,)` (SAELens key `threshold`)."""
        return self.log_threshold.exp()

    def activate(self, pre: Tensor, x: Tensor) -> Tensor:
        return pre * (pre > self.threshold)

    def train_activate(self, pre: Tensor, x: Tensor) -> Tensor:
        return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def penalty(self, z: Tensor, pre: Tensor, x: Tensor) -> dict[str, Tensor]:
        l0 = _Step.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth).sum(-1).mean()
        return {"l0": self.cfg.l0_coefficient * l0}

    def state_tensors(self) -> dict[str, Tensor]:
        return {**super().state_tensors(), "threshold": self.threshold.detach()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_state_tensors(tensors)
        with torch.no_grad():
            self.log_threshold.copy_(tensors["threshold"].clamp_min(1e-30).log())

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.log_threshold -= math.log(scale)

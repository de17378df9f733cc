"""Integrated gradients over input tokens (Sundararajan et al., 2017), through `HookManager`.

For a scalar objective `f` of the model's logits and token embeddings `x` (`(n, d)`, read at the
embedding hook point), with a baseline `x'` that sets the attributed positions to zero:

    IG_i = sum_d (x_id - x'_id) * integral_0^1 df/dx_id (x' + a (x - x')) da

The integral is the midpoint rule over `steps` points `a_k = (k + 1/2) / steps`, evaluated as one
batch (or chunks of `batch_steps`), so the sum of attributions approaches `f(x) - f(x')`
(completeness) with an error that shrinks as `steps` grows (O(1/steps^2) for smooth `f`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from interp.errors import InterpError
from interp.hooks import HookManager
from interp.models import model_device

EMBED_POINT = "hook_embed"
Objective = Callable[[torch.Tensor], torch.Tensor]  # logits (batch, pos, vocab) -> (batch,)


@dataclass
class Attribution:
    """Integrated-gradient attributions `scores` `(n,)` (0 outside `positions`), the objective at
    the input and at the baseline, and the number of integration steps."""

    scores: torch.Tensor
    f_input: float
    f_baseline: float
    steps: int
    positions: list[int]

    @property
    def completeness_error(self) -> float:
        """`|sum(scores) - (f(x) - f(x'))|`."""
        return abs(float(self.scores.sum()) - (self.f_input - self.f_baseline))


def embed_point(hm: HookManager) -> str:
    """The embedding hook point of a transformer bridge."""
    if EMBED_POINT in hm.hook_points:
        return EMBED_POINT
    if "embed.hook_out" in hm.hook_points:
        return "embed.hook_out"
    raise InterpError("this model exposes no embedding hook point (hook_embed): integrated gradients need one")


def replace_embeddings(hm: HookManager, values: torch.Tensor):
    """An edit context that replaces the token embeddings of the whole batch by `values` `(batch, pos, d)`."""
    return hm.edit(embed_point(hm), lambda act: values.to(act.dtype))


def integrated_gradients(
    hm: HookManager,
    tokens: torch.Tensor,
    objective: Objective,
    positions: Sequence[int] | None = None,
    steps: int = 32,
    batch_steps: int | None = None,
) -> Attribution:
    """Attribute `objective(logits)` to the input tokens `tokens` `(1, n)` at `positions`
    (default: every position after the first, so BOS keeps its embedding in the baseline)."""
    if steps < 1:
        raise InterpError(f"integrated gradients need at least 1 step, got {steps}")
    tokens = tokens.reshape(1, -1).to(model_device(hm.model))
    n = tokens.shape[1]
    positions = list(range(1, n)) if positions is None else [int(p) for p in positions]
    if not positions or min(positions) < 0 or max(positions) >= n:
        raise InterpError(f"attribution positions {positions} fall outside the input of {n} tokens")
    point = embed_point(hm)
    with torch.no_grad():
        x = hm.collect(tokens, point, device=None)[point].float()           # (1, n, d)
    base = x.clone()
    base[:, positions] = 0.0
    delta = x - base
    grads = torch.zeros_like(x[0])
    batch_steps = steps if batch_steps is None else max(1, int(batch_steps))
    alphas = (torch.arange(steps, dtype=torch.float32, device=x.device) + 0.5) / steps
    for lo in range(0, steps, batch_steps):
        a = alphas[lo : lo + batch_steps].reshape(-1, 1, 1)
        path = (base + a * delta).detach().requires_grad_(True)             # (c, n, d)
        with torch.enable_grad(), replace_embeddings(hm, path):
            values = objective(hm.model(tokens.expand(len(a), -1)))
            (grad,) = torch.autograd.grad(values.sum(), path)
        grads += grad.sum(0)
    scores = (delta[0] * grads / steps).sum(-1).detach().float().cpu()
    with torch.no_grad():
        ends = torch.cat([x, base])
        with replace_embeddings(hm, ends):
            f_in, f_base = objective(hm.model(tokens.expand(2, -1))).float().tolist()
    return Attribution(scores, f_in, f_base, steps, positions)


def logit_difference(positive_id: int, negative_id: int, position: int = -1) -> Objective:
    """`logit(positive) - logit(negative)` at `position`: the log-probability difference of the two
    next tokens (the softmax normaliser cancels)."""
    def objective(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, position, positive_id] - logits[:, position, negative_id]

    return objective

"""Concept activation vectors (Kim et al., 2018) and directional derivatives along them.

A CAV is the unit normal of a linear boundary between activations of concept examples and
of random examples, pointing toward the concept. The directional derivative of a target
(a logit, a class score, any scalar of the output) along the CAV says whether nudging the
activation toward the concept raises the target.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from interp import readout
from interp.errors import InterpError
from interp.models import model_device
from interp.readout import as_hook_manager, tensor_inputs
from probes.linear import LinearProbe
from probes.sweep import check_split

Target = str | int | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CAV:
    """A concept activation vector: `vector` `(d,)`, unit norm, pointing from random toward the concept.

    `accuracy` is the held-out accuracy of the concept-vs-random classifier behind it.
    """

    vector: torch.Tensor = field(repr=False)
    accuracy: float
    point: str | None = None
    concept: str = "concept"
    n_concept: int = 0
    n_random: int = 0


def train_cav(
    concept_acts: torch.Tensor | np.ndarray,
    random_acts: torch.Tensor | np.ndarray,
    C: float = 1.0,
    test_size: float = 0.25,
    seed: int = 0,
    point: str | None = None,
    concept: str = "concept",
) -> CAV:
    """Fit a logistic-regression boundary between `concept_acts` `(n, d)` and `random_acts` `(m, d)`.

    The CAV is the boundary's unit normal in activation space (standardisation undone),
    oriented toward the concept; its accuracy is measured on a held-out stratified split.
    """
    concept_acts = torch.as_tensor(concept_acts).float()
    random_acts = torch.as_tensor(random_acts).float()
    if concept_acts.ndim != 2 or random_acts.ndim != 2 or concept_acts.shape[1] != random_acts.shape[1]:
        raise InterpError(
            f"CAV activations must be (n, d) and (m, d) with the same d; got {tuple(concept_acts.shape)} and {tuple(random_acts.shape)}"
        )
    X = torch.cat([concept_acts, random_acts]).numpy()
    y = np.r_[np.ones(len(concept_acts), dtype=int), np.zeros(len(random_acts), dtype=int)]
    if len(concept_acts) < 2 or len(random_acts) < 2:
        raise InterpError(f"a CAV needs at least 2 concept and 2 random examples; got {len(concept_acts)} and {len(random_acts)}")
    check_split(y, len(y), "classification", test_size)
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=y)
    probe = LinearProbe(C=C, random_state=seed).fit(X[train], y[train])
    return CAV(
        vector=torch.as_tensor(probe.direction_, dtype=torch.float32),  # classes_ == [0, 1]: toward the concept
        accuracy=probe.score(X[test], y[test]),
        point=point, concept=concept, n_concept=len(concept_acts), n_random=len(random_acts),
    )


def resolve_target(model: Any, target: Target, is_bridge: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Turn `target` into `f(output) -> (n,)`.

    `output` is what the model returns for a plain module (e.g. logits `(n, n_classes)`), or the
    logits at each text's last real token `(n, d_vocab)` for a transformer. A string must be a
    single token of the model's tokenizer; an int indexes the output's last dimension.
    """
    if callable(target):
        return target
    if isinstance(target, str):
        if not is_bridge:
            raise InterpError(f"target {target!r} is a token, but this model has no tokenizer: give an output index or a callable")
        ids = model.to_tokens(target, prepend_bos=False)[0].tolist()
        if len(ids) != 1:
            pieces = model.to_str_tokens(target, prepend_bos=False)
            raise InterpError(f"target {target!r} splits into {len(ids)} tokens {pieces}: pick a single-token target (try one of those pieces)")
        target = int(ids[0])
    if not isinstance(target, (int, np.integer)) or isinstance(target, bool):
        raise InterpError(f"target must be a token string, an output index or a callable; got {type(target).__name__}")
    index = int(target)

    def pick(output: torch.Tensor) -> torch.Tensor:
        if not -output.shape[-1] <= index < output.shape[-1]:
            raise InterpError(f"target index {index} is out of range for an output of size {output.shape[-1]}")
        return output[..., index]

    return pick


def _keep_live(store: dict[str, torch.Tensor], name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit that records the activation as a tensor autograd can differentiate with respect to."""
    def fn(act: torch.Tensor) -> torch.Tensor:
        live = act if act.requires_grad else act.detach().requires_grad_(True)
        store[name] = live
        # Downstream modules get a copy, so an in-place op after this point cannot alter `live`.
        return live.clone()

    return fn


def target_gradients(
    model_or_hm: Any,
    inputs: Sequence[str] | torch.Tensor,
    points: str | Sequence[str],
    target: Target,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Gradient of the target scalar with respect to the activation at each point, `{point: (n, d)}`.

    One forward and one backward per batch serve every point. Gradients flow through the frozen
    model (weights need no grad). On a transformer, inputs are texts and the gradient is taken at
    each text's LAST real token, where the target logit is read too. On a plain module, inputs
    are a tensor `(n, ...)` and the gradient is flattened to `(n, d)`; keep the module in eval
    mode so examples do not interact (batch norm).
    """
    hm = as_hook_manager(model_or_hm)
    names = hm.resolve(points)
    pick = resolve_target(hm.model, target, hm.is_bridge)
    device = model_device(hm.model)
    if hm.is_bridge:
        tokens, lengths = readout.tokenize(hm.model, inputs)
        n = len(tokens)
    else:
        inputs = tensor_inputs(inputs)
        n = len(inputs)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for lo in tqdm(range(0, n, batch_size), desc="gradients", disable=not progress, leave=False):
        store: dict[str, torch.Tensor] = {}
        with torch.enable_grad(), ExitStack() as stack:
            for name in names:
                stack.enter_context(hm.edit(name, _keep_live(store, name)))
            if hm.is_bridge:
                lens = lengths[lo : lo + batch_size]
                rows = torch.arange(len(lens))
                logits = hm.model(tokens[lo : lo + batch_size, : int(lens.max())].to(device))
                scalar = pick(logits[rows, lens.to(logits.device) - 1])
            else:
                batch = inputs[lo : lo + batch_size].to(device)
                scalar = pick(hm.model(batch))
            if scalar.ndim != 1:
                raise InterpError(f"the target must give one scalar per input, shape (n,); got {tuple(scalar.shape)}")
            missing = [name for name in names if name not in store]
            if missing:
                raise InterpError(f"the forward pass never reached {missing[0]}: pick a point the model runs through")
            grads = torch.autograd.grad(scalar.sum(), [store[name] for name in names], allow_unused=True)
        for name, grad in zip(names, grads):
            grad = torch.zeros_like(store[name]) if grad is None else grad
            if hm.is_bridge:
                grad = grad[rows, lens.to(grad.device) - 1]
            out[name].append(grad.detach().float().reshape(grad.shape[0], -1).cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def directional_derivatives(
    model_or_hm: Any,
    inputs: Sequence[str] | torch.Tensor,
    point: str,
    cav: CAV | torch.Tensor,
    target: Target,
    batch_size: int = 16,
) -> torch.Tensor:
    """`(n,)`: the gradient of the target at `point` (last real token for texts) dotted with the CAV."""
    vector = cav.vector if isinstance(cav, CAV) else torch.as_tensor(cav)
    grads = target_gradients(model_or_hm, inputs, point, target, batch_size=batch_size)
    grad = next(iter(grads.values()))
    if grad.shape[1] != vector.numel():
        raise InterpError(f"the CAV has size {vector.numel()} but the activation at {point} has size {grad.shape[1]}")
    return grad @ vector.float().reshape(-1)

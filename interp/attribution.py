"""Attribution patching (AtP): every site's activation-patching effect from one forward and one backward.

Nanda (2023), "Attribution patching: activation patching at industrial scale": the effect of
patching site n from the clean into the corrupted run is estimated to first order at the
corrupted run,

    AtP(n) = (a_clean(n) - a_corrupted(n)) . dLD/da(n) |_corrupted

so one forward (clean and corrupted prompts as two rows of one batch) and one backward of the
corrupted rows' logit difference give the estimate for every site at once. Scores are divided by
`LD_clean - LD_corrupted` like activation patching's (`interp.patching`).

AtP* (Kramar et al. 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour to
components") fixes two failure modes. The one implemented here is the QK fix, for query and key
sites (`q`, `k`): a query or key enters the model only through its head's attention scores, where
the softmax can be saturated, so that the gradient through it is near zero although patching
moves the attention a lot. For a query node (head h, position t) the attention row t is recomputed
exactly from the clean query and the corrupted keys, `A'_t = softmax(scale * q_clean_t . K)`; for a
key node (key head g, position s) every row t >= s of every query head sharing that key is
renormalised with score (t, s) recomputed from the clean key. Only the step after the attention
pattern is linearised: `AtP*(n) = sum (A' - A) . dLD/dA`. The pattern is the head's own
(post-softmax) one, with its mask, scale and soft-capping, checked against the model's scores.
Head outputs (`z`) and residual sites do not pass through their own softmax, so plain AtP is
already the AtP* estimate there. Not implemented: GradDrop (AtP*'s second change: L extra
backward passes, each with the gradient through one layer's residual contribution zeroed, whose
absolute estimates are averaged to expose cancellations between direct and indirect effects);
it yields magnitudes rather than signed estimates and L+1 backward passes instead of one.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Sequence

import torch

from interp.errors import InterpError
from interp.hooks import HookManager
from interp.patching import (DEFAULT_HOOKS, PatchResult, Site, check_shapes, enumerate_sites, heads_view, kind_of, layout_of,
                             make_result, n_heads_of, normalise)
from interp.prompt_pairs import Metric, PromptPair, logit_diff_metric, tokenize_pairs

LEAF_POINT = "blocks.0.hook_resid_pre"


def attribute(
    hm: HookManager,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    sites: Sequence[Site],
    metric: Metric,
    qk_fix: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-order estimates of every site's patching effect on `metric`, for n prompt pairs.

    `clean`, `corrupted`: inputs `(n, ...)`, run as one batch of 2n rows in one forward; one
    backward of the summed corrupted metrics gives every gradient (rows do not interact). Returns
    the estimated change of the metric `(n, n_sites)` and the clean and corrupted metrics `(n,)`.
    """
    sites = list(sites)
    n = clean.shape[0]
    fixed = {s.point for s in sites if qk_fix and kind_of(s.point) in ("q", "k")}
    grad_points = list(dict.fromkeys(s.point for s in sites if s.point not in fixed))
    value_points = list(dict.fromkeys(s.point for s in sites))
    for point in sorted(fixed):  # the QK fix reads the layer's queries, keys and scores, and needs dLD/dpattern
        prefix = point.rsplit(".", 1)[0]
        value_points += [p for p in (f"{prefix}.hook_rot_q", f"{prefix}.hook_rot_k", f"{prefix}.hook_attn_scores") if p not in value_points]
        if f"{prefix}.hook_pattern" not in grad_points:
            grad_points.append(f"{prefix}.hook_pattern")
    hm.resolve(grad_points + value_points)
    inputs = torch.cat([clean, corrupted])
    tracked: dict[str, torch.Tensor] = {}

    def track(point: str):
        def fn(act: torch.Tensor) -> torch.Tensor:
            if not act.requires_grad:  # the first tracked point: the graph starts here (weights need no grad)
                act = act.detach().requires_grad_(True)
            if point in grad_points:
                tracked[point] = act
            return act
        return fn

    with ExitStack() as stack:
        if hm.is_bridge:
            stack.enter_context(hm.edit(LEAF_POINT, track(LEAF_POINT)))
        elif inputs.is_floating_point():
            inputs = inputs.detach().requires_grad_(True)
        else:
            raise InterpError("attribution patching of a plain module needs floating-point inputs (the gradient starts there); "
                              "load language models with interp.load_model")
        acts = stack.enter_context(hm.capture(value_points, device=None))
        for point in grad_points:
            stack.enter_context(hm.edit(point, track(point)))
        with torch.enable_grad():
            values = metric(hm.forward(inputs))
            grads = torch.autograd.grad(values[n:].sum(), [tracked[p] for p in grad_points], allow_unused=True)
    check_shapes({p: acts[p] for p in dict.fromkeys(s.point for s in sites)}, inputs.shape[1])
    grad = {p: (g if g is not None else torch.zeros_like(tracked[p])).detach() for p, g in zip(grad_points, grads)}
    out = torch.empty(n, len(sites))
    for i in range(n):
        per_point = _per_point(hm, acts, grad, list(dict.fromkeys(s.point for s in sites)), fixed, i, n)
        for j, site in enumerate(sites):
            out[i, j] = _pick(per_point[site.point], site)
    values = values.detach().float().cpu()
    return out, values[:n], values[n:]


def _per_point(hm: HookManager, acts: dict, grad: dict, points: list[str], fixed: set, i: int, n: int) -> dict[str, torch.Tensor]:
    """Per site point, pair i's estimate in every (position, head) cell: `(pos,)`, `(pos, heads)` or `(heads, pos)`."""
    heads = n_heads_of(hm, "q") if hm.is_bridge else 1
    res: dict[str, torch.Tensor] = {}
    for point in points:
        if point in fixed:
            prefix = point.rsplit(".", 1)[0]
            q_est, k_est = qk_fix_estimates(
                q_clean=acts[f"{prefix}.hook_rot_q"][i], q_corrupted=acts[f"{prefix}.hook_rot_q"][n + i],
                k_clean=acts[f"{prefix}.hook_rot_k"][i], k_corrupted=acts[f"{prefix}.hook_rot_k"][n + i],
                scores=acts[f"{prefix}.hook_attn_scores"][n + i], grad_pattern=grad[f"{prefix}.hook_pattern"][n + i],
                attn=_attention_module(hm, prefix), where=prefix)
            res[point] = (q_est if point.endswith("rot_q") else k_est).cpu()
            continue
        layout = layout_of(point)
        clean, corrupted = (heads_view(acts[point][r : r + 1], layout, heads)[0] for r in (i, n + i))
        g = heads_view(grad[point][n + i : n + i + 1], layout, heads)[0]
        res[point] = ((clean.double() - corrupted.double()) * g.double()).sum(-1).cpu()
    return res


def _pick(cells: torch.Tensor, site: Site) -> float:
    """A site's estimate from its point's cells (summed over positions when `position` is None)."""
    layout = layout_of(site.point)
    pos = slice(None) if site.position is None else site.position
    if layout == "resid":
        return float(cells[pos].sum())
    if layout == "z":
        return float(cells[pos, site.head].sum())
    return float(cells[site.head, pos].sum())


def _attention_module(hm: HookManager, prefix: str) -> Any:
    """The HuggingFace attention module under the bridge's `blocks.L.attn` (holds `scaling`, soft-capping)."""
    module = hm.model.get_submodule(prefix)
    return getattr(module, "original_component", module)


def qk_fix_estimates(
    q_clean: torch.Tensor,
    q_corrupted: torch.Tensor,
    k_clean: torch.Tensor,
    k_corrupted: torch.Tensor,
    scores: torch.Tensor,
    grad_pattern: torch.Tensor,
    attn: Any,
    where: str = "attention",
) -> tuple[torch.Tensor, torch.Tensor]:
    """AtP* estimates for every query and key node of one attention layer, one prompt pair.

    `q_*` `(heads, pos, d_head)` and `k_*` `(kv_heads, pos, d_head)`: rotated queries and keys
    of the clean and corrupted runs; `scores` `(heads, pos, pos)`: the corrupted run's masked
    pre-softmax scores; `grad_pattern` `(heads, pos, pos)`: dLD/dpattern at the corrupted run;
    `attn`: the attention module (`scaling`, optional `attn_logit_softcapping`). Query head h reads
    key head `h // (heads // kv_heads)`. Returns `(heads, pos)` for queries and `(kv_heads, pos)`
    for keys: sum over the changed pattern entries of `(A' - A) * dLD/dA`.
    """
    heads, kv_heads = q_corrupted.shape[0], k_corrupted.shape[0]
    groups = heads // kv_heads
    scale = float(getattr(attn, "scaling", q_corrupted.shape[-1] ** -0.5))
    softcap = getattr(attn, "attn_logit_softcapping", None)
    masked = scores <= torch.finfo(scores.dtype).min / 2
    q_clean, q_corrupted, k_clean, k_corrupted = (t.double() for t in (q_clean, q_corrupted, k_clean, k_corrupted))

    def logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        s = q @ k.repeat_interleave(groups, dim=0).transpose(-1, -2) * scale
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        return s.masked_fill(masked, float("-inf"))

    s = logits(q_corrupted, k_corrupted)
    seen = scores.double().masked_fill(masked, 0.0)
    if not torch.allclose(s.masked_fill(masked, 0.0), seen, rtol=1e-3, atol=1e-4 * float(seen.abs().max()) + 1e-5):
        raise InterpError(f"the QK fix recomputes {where}'s attention scores as scale * q.k, which does not match this model's "
                          "scores: run without it (--no-qk-fix)")
    g = grad_pattern.double()
    a = torch.softmax(s, dim=-1)
    # Query nodes: row t recomputed from the clean query t against the corrupted keys.
    q_est = ((torch.softmax(logits(q_clean, k_corrupted), dim=-1) - a) * g).sum(-1)
    # Key nodes: entry (t, s) of each row recomputed from the clean key s, the row renormalised.
    s_key = logits(q_corrupted, k_clean)
    top = torch.maximum(s.amax(-1, keepdim=True), s_key.amax(-1, keepdim=True))
    e, e_key = torch.exp(s - top), torch.exp(s_key - top)
    z, weighted = e.sum(-1, keepdim=True), (e * g).sum(-1, keepdim=True)
    change = (weighted - e * g + e_key * g) / (z - e + e_key) - weighted / z  # (heads, t, s)
    k_est = change.masked_fill(masked, 0.0).sum(1).reshape(kv_heads, groups, -1).sum(1)
    return q_est, k_est


def attribution_patching(
    model: Any,
    pairs: Sequence[PromptPair],
    hooks: str | Sequence[str] = DEFAULT_HOOKS,
    qk_fix: bool = True,
    batch_tokens: int = 2048,
) -> PatchResult:
    """Attribution patching (AtP, with AtP*'s QK fix for `q`/`k` sites) of every site of `hooks`.

    All pairs run in one forward and one backward when they fit in `batch_tokens` (clean and
    corrupted rows both count); more pairs are split into several.
    """
    from interp.models import model_device
    from interp.readout import as_hook_manager

    hm = as_hook_manager(model)
    toks = tokenize_pairs(hm.model, pairs)
    n_pos = toks.clean.shape[1]
    sites = enumerate_sites(hm, hooks, n_pos)
    per_batch = batch_tokens // (2 * n_pos)
    if per_batch < 1:
        raise InterpError(f"--batch-tokens {batch_tokens} is smaller than one clean + corrupted pair ({2 * n_pos} tokens): raise it")
    device = model_device(hm.model)
    deltas, m_clean, m_corrupted = [], [], []
    for lo in range(0, len(pairs), per_batch):
        part = slice(lo, lo + per_batch)
        metric = logit_diff_metric(torch.cat([toks.answer[part]] * 2), torch.cat([toks.wrong[part]] * 2))
        est, c, k = attribute(hm, toks.clean[part].to(device), toks.corrupted[part].to(device), sites, metric, qk_fix=qk_fix)
        deltas.append(est)
        m_clean.append(c)
        m_corrupted.append(k)
    m_clean_t, m_corrupted_t = torch.cat(m_clean), torch.cat(m_corrupted)
    recovered = normalise(torch.cat(deltas), m_clean_t, m_corrupted_t)
    return make_result("attribution", hm, sites, recovered, pairs, m_clean_t, m_corrupted_t, toks,
                   {"batch_tokens": batch_tokens, "qk_fix": qk_fix})

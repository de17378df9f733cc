"""Activation patching: which activations carry the difference between a clean and a corrupted prompt.

A clean prompt ("The Eiffel Tower is in the city of", answer " Paris") and a corrupted prompt of
the same token length ("The Colosseum is in the city of", which pushes toward " Rome") differ in a
few tokens. The metric is the logit difference at the last position, `LD = logit(answer) -
logit(wrong)`. Patching a site runs the corrupted prompt with the activation at that site replaced
by its value in the clean run; the site's score is the share of the clean-corrupted gap it restores:

    recovered = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)

0 means the site carries none of the difference, 1 all of it. Over a file of prompt pairs the
score is the mean of the pairs' scores.

Sites (`Site`): a residual-shaped point `(batch, pos, d)` (`blocks.L.hook_resid_pre`,
`hook_resid_post`, `hook_attn_out`, `hook_mlp_out`, or any such point or module path) at one
position; one attention head's output (`blocks.L.attn.hook_z`, the per-head mix of values before
the output projection, `(batch, pos, n_heads * d_head)` on the bridge) at every position; and,
on rotary models, one head's query or key (`blocks.L.attn.hook_rot_q` `(batch, n_heads, pos,
d_head)`, `hook_rot_k` `(batch, n_kv_heads, pos, d_head)`) at one position. Selectors:
`KIND:LAYERS` with KIND in `resid_pre|resid_mid|resid_post|attn_out|mlp_out|z|q|k`.

Batching. One forward runs many copies of the corrupted prompt, row r patched at its own site by
an edit hook that writes the clean activation into row r only; rows are chunked to bound memory.
The clean activations and both reference logit differences come from one forward of the batch
`[clean, corrupted]`. Attribution patching (one forward and one backward for every site) is in
`interp.attribution`.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.hooks import SITES, HookManager, parse_layers
from interp.prompt_pairs import Metric, PairTokens, PromptPair, logit_diff_metric, tokenize_pairs

HEAD_KINDS = {"z": "attn.hook_z", "q": "attn.hook_rot_q", "k": "attn.hook_rot_k"}
KINDS = (*SITES, *HEAD_KINDS)
DEFAULT_HOOKS = "resid_pre:all;resid_post:all;attn_out:all;mlp_out:all;z:all"
RESID_HOOKS = "resid_pre:all;resid_post:all;attn_out:all;mlp_out:all"
_KIND_RE = re.compile(r"^blocks\.(\d+)\.(?:hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)|attn\.hook_(z|rot_q|rot_k))$")



@dataclass(frozen=True)
class Site:
    """One place to patch: `point` at `position` (None: every position), `head` (None: all of it)."""

    point: str
    position: int | None = None
    head: int | None = None

    @property
    def kind(self) -> str:
        """`resid_pre|resid_mid|resid_post|attn_out|mlp_out|z|q|k`, or `other` for any other point."""
        return kind_of(self.point)

    @property
    def layer(self) -> int | None:
        m = _KIND_RE.match(self.point)
        return int(m.group(1)) if m else None


def kind_of(point: str) -> str:
    """The site kind of a point name (`other` for points outside the known kinds)."""
    m = _KIND_RE.match(point)
    if not m:
        return "other"
    if m.group(2):
        return m.group(2)
    return {"z": "z", "rot_q": "q", "rot_k": "k"}[m.group(3)]


def layout_of(point: str) -> str:
    """How a site indexes the activation: `resid` `(b, pos, d)`, `z` `(b, pos, heads*d_head)`, `qk` `(b, heads, pos, d_head)`."""
    kind = kind_of(point)
    return {"z": "z", "q": "qk", "k": "qk"}.get(kind, "resid")


# ------------------------------------------------------------------- sites
def resolve_points(hm: HookManager, hooks: str | Sequence[str]) -> list[str]:
    """Point names from `;`-separated names or selectors (`KIND:LAYERS`, KIND as in `KINDS`)."""
    items = [p.strip() for p in (hooks.split(";") if isinstance(hooks, str) else hooks) if p.strip()]
    if not items:
        raise InterpError(f"no hook point given: name points or selectors such as {DEFAULT_HOOKS}")
    points: list[str] = []
    for item in items:
        kind, _, layers = item.partition(":")
        if kind in HEAD_KINDS:
            if not hm.is_bridge:
                raise InterpError(f"{item!r}: per-head sites need a TransformerLens bridge; name residual-shaped module paths instead")
            names = [f"blocks.{layer}.{HEAD_KINDS[kind]}" for layer in parse_layers(layers or "all", hm.n_layers)]
            missing = [n for n in names if n not in hm.hook_points]
            if missing:
                raise InterpError(f"this model has no {missing[0]}: {kind} sites need rotary attention (llama, gemma, ...); "
                                  "use z or residual sites")
        else:
            names = hm.resolve(item)
        points.extend(n for n in names if n not in points)
    return points


def enumerate_sites(hm: HookManager, hooks: str | Sequence[str], n_positions: int) -> list[Site]:
    """Every site of the points in `hooks` for prompts of `n_positions` tokens (BOS included).

    Residual-shaped points give one site per position; `z` one per head (all positions at once);
    `q` and `k` one per head and position (`k` heads are key-value heads).
    """
    sites: list[Site] = []
    for point in resolve_points(hm, hooks):
        kind = kind_of(point)
        if kind == "z":
            sites.extend(Site(point, None, h) for h in range(n_heads_of(hm, "q")))
        elif kind in ("q", "k"):
            sites.extend(Site(point, p, h) for h in range(n_heads_of(hm, kind)) for p in range(n_positions))
        else:
            sites.extend(Site(point, p) for p in range(n_positions))
    return sites


def n_heads_of(hm: HookManager, kind: str) -> int:
    """Heads per layer for `z`/`q` sites, key-value heads for `k` (bridges only)."""
    cfg = hm.model.cfg
    if kind == "k":
        return int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    return int(cfg.n_heads)


def heads_view(act: torch.Tensor, layout: str, n_heads: int) -> torch.Tensor:
    """The activation with heads on their own axis for `z` (`(b, pos, heads, d_head)`); as is otherwise."""
    return act.reshape(*act.shape[:2], n_heads, -1) if layout == "z" else act


def _index(site: Site, layout: str) -> tuple:
    """Where a site lives in `heads_view(act)` after the batch axis."""
    pos = slice(None) if site.position is None else site.position
    if layout == "resid":
        if site.head is not None:
            raise InterpError(f"{site.point} has no heads: give head=None")
        return (pos,)
    if site.head is None:
        raise InterpError(f"{site.point} is per head: give a head")
    return (pos, site.head) if layout == "z" else (site.head, pos)


def check_shapes(acts: dict[str, torch.Tensor], n_positions: int) -> None:
    """Refuse a residual-layout point whose activation is not `(batch, pos, d)` (e.g. an attention pattern)."""
    for point, act in acts.items():
        if layout_of(point) == "resid" and (act.ndim != 3 or act.shape[1] != n_positions):
            raise InterpError(f"{point} has activations of shape {tuple(act.shape)}, not (batch, {n_positions} positions, d): "
                              "patch points with one vector per position, or z/q/k for heads")


# ------------------------------------------------------------------- running
def reference_run(
    hm: HookManager, clean: torch.Tensor, corrupted: torch.Tensor, points: Sequence[str], metric: Metric
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One forward of `[clean; corrupted]` (`(2n, ...)`): clean activations and both metrics.

    Returns `{point: (n, ...)}` clean activations (detached, on the model's device), and the
    metric on the clean and on the corrupted rows, each `(n,)`.
    """
    n = clean.shape[0]
    with torch.no_grad(), hm.capture(points, device=None) as acts:
        values = metric(hm.forward(torch.cat([clean, corrupted]))).float()
    return {p: a[:n] for p, a in acts.items()}, values[:n], values[n:]


def run_patched(
    hm: HookManager, inputs: torch.Tensor, rows: Sequence[Site | None], clean: dict[str, torch.Tensor], metric: Metric
) -> torch.Tensor:
    """One forward of `inputs` (`(R, ...)`), row r patched at `rows[r]` (None: unpatched) with `clean`.

    `clean[point]` is the clean activation `(1, ...)` in the point's own layout. Returns the metric
    per row `(R,)`.
    """
    by_point: dict[str, list[tuple[int, Site]]] = {}
    for r, site in enumerate(rows):
        if site is not None:
            by_point.setdefault(site.point, []).append((r, site))
    with torch.no_grad(), ExitStack() as stack:
        for point, entries in by_point.items():
            stack.enter_context(hm.edit(point, _writer(entries, clean[point], n_heads_of(hm, "q") if hm.is_bridge else 1)))
        return metric(hm.forward(inputs)).float()


def _writer(entries: list[tuple[int, Site]], clean: torch.Tensor, n_heads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    layout = layout_of(entries[0][1].point)
    index = [(r, _index(site, layout)) for r, site in entries]

    def fn(act: torch.Tensor) -> torch.Tensor:
        out = act.clone(memory_format=torch.contiguous_format)
        view, src = heads_view(out, layout, n_heads), heads_view(clean.to(act.device, act.dtype), layout, n_heads)
        for r, idx in index:
            view[(r, *idx)] = src[(0, *idx)]
        return out

    return fn


def patch_metrics(
    hm: HookManager,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    sites: Sequence[Site],
    metric: Metric,
    batch_rows: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activation patching of every site, for n prompt pairs.

    `clean`, `corrupted`: inputs `(n, ...)` (token ids `(n, pos)` for a bridge), row i of each
    forming pair i. `metric` maps the model's output on R rows to `(R,)`. Each forward runs up to
    `batch_rows` patched copies of one corrupted input. Returns the patched metric `(n, n_sites)`,
    and the clean and corrupted metrics `(n,)`.
    """
    if batch_rows < 1:
        raise InterpError(f"the batch must hold at least one row, got {batch_rows}")
    sites = list(sites)
    points = list(dict.fromkeys(s.point for s in sites))
    acts, m_clean, m_corrupted = reference_run(hm, clean, corrupted, points, metric)
    check_shapes(acts, clean.shape[1])
    n = clean.shape[0]
    out = torch.empty(n, len(sites))
    chunks = [sites[i : i + batch_rows] for i in range(0, len(sites), batch_rows)]
    with tqdm(total=n * len(chunks), desc="patch", unit="batch", disable=not progress) as bar:
        for i in range(n):
            source = {p: a[i : i + 1] for p, a in acts.items()}
            done = 0
            for chunk in chunks:
                inputs = corrupted[i : i + 1].expand(len(chunk), *corrupted.shape[1:])
                out[i, done : done + len(chunk)] = run_patched(hm, inputs, chunk, source, metric).cpu()
                done += len(chunk)
                bar.update(1)
    return out, m_clean.cpu(), m_corrupted.cpu()


# ------------------------------------------------------------------- results
@dataclass
class PatchResult:
    """Scores of every site, averaged over prompt pairs.

    `recovered` `(n_sites,)`: mean over pairs of (LD_patched - LD_corrupted) / (LD_clean -
    LD_corrupted) (`method` `activation`), or of its first-order estimate (`attribution`).
    `clean_logit_diff`, `corrupted_logit_diff`: one per pair. `tokens`: the first pair's clean
    and corrupted tokens, for labels.
    """

    method: str
    sites: list[Site]
    recovered: np.ndarray
    pairs: list[PromptPair]
    clean_logit_diff: list[float]
    corrupted_logit_diff: list[float]
    tokens: dict[str, list[str]]
    n_layers: int
    n_heads: int
    options: dict[str, Any] = field(default_factory=dict)

    def site_rows(self) -> list[dict]:
        return [{"point": s.point, "position": s.position, "head": s.head, "recovered": float(v)}
                for s, v in zip(self.sites, self.recovered)]

    def top(self, n: int = 10) -> list[dict]:
        """The `n` sites with the largest |recovered|, largest first."""
        order = np.argsort(-np.abs(self.recovered), kind="stable")[:n]
        rows = self.site_rows()
        return [rows[i] for i in order]

    def to_json(self, model: str) -> dict:
        single = len(self.pairs) == 1
        return {
            "method": self.method,
            "model": model,
            "metric": "(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted), LD = logit(answer) - logit(wrong) at the last position",
            "n_pairs": len(self.pairs),
            "clean_logit_diff": self.clean_logit_diff[0] if single else float(np.mean(self.clean_logit_diff)),
            "corrupted_logit_diff": self.corrupted_logit_diff[0] if single else float(np.mean(self.corrupted_logit_diff)),
            "pairs": [{"clean": p.clean, "corrupted": p.corrupted, "answer": p.answer, "wrong": p.wrong,
                       "clean_logit_diff": c, "corrupted_logit_diff": k}
                      for p, c, k in zip(self.pairs, self.clean_logit_diff, self.corrupted_logit_diff)],
            "tokens": self.tokens,
            "options": self.options,
            "sites": self.site_rows(),
        }


def normalise(delta: torch.Tensor, m_clean: torch.Tensor, m_corrupted: torch.Tensor) -> np.ndarray:
    """Mean over pairs of `delta (n, sites) / (clean - corrupted) (n,)`; refuses a pair with no gap."""
    gap = (m_clean - m_corrupted).double()
    flat = (gap.abs() <= 1e-6 * (m_clean.abs() + m_corrupted.abs()).double().clamp_min(1.0)).nonzero()
    if len(flat):
        i = int(flat[0])
        raise InterpError(f"pair {i + 1}: the clean and corrupted prompts give the same logit difference ({float(m_clean[i]):.4g}): "
                          "nothing to recover; pick a corrupted prompt that moves the answer")
    return (delta.double() / gap[:, None]).mean(0).numpy()


def activation_patching(
    model: Any,
    pairs: Sequence[PromptPair],
    hooks: str | Sequence[str] = DEFAULT_HOOKS,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> PatchResult:
    """Patch every site of `hooks` from each clean prompt into its corrupted prompt.

    `batch_tokens` bounds one forward: `batch_tokens // pos` patched copies per forward.
    """
    from interp.models import model_device
    from interp.readout import as_hook_manager

    hm = as_hook_manager(model)
    toks = tokenize_pairs(hm.model, pairs)
    n_pos = toks.clean.shape[1]
    sites = enumerate_sites(hm, hooks, n_pos)
    if batch_tokens < n_pos:
        raise InterpError(f"--batch-tokens {batch_tokens} is smaller than one prompt ({n_pos} tokens): raise it")
    device = model_device(hm.model)
    deltas, m_clean, m_corrupted = [], [], []
    for i in range(len(pairs)):  # each pair its own metric (answers differ between pairs)
        metric = logit_diff_metric(toks.answer[i : i + 1], toks.wrong[i : i + 1])
        patched, c, k = patch_metrics(hm, toks.clean[i : i + 1].to(device), toks.corrupted[i : i + 1].to(device), sites, metric,
                                      batch_rows=batch_tokens // n_pos, progress=progress)
        deltas.append(patched - k[:, None])
        m_clean.append(c)
        m_corrupted.append(k)
    m_clean_t, m_corrupted_t = torch.cat(m_clean), torch.cat(m_corrupted)
    recovered = normalise(torch.cat(deltas), m_clean_t, m_corrupted_t)
    return make_result("activation", hm, sites, recovered, pairs, m_clean_t, m_corrupted_t, toks, {"batch_tokens": batch_tokens})


def make_result(method: str, hm: HookManager, sites: list[Site], recovered: np.ndarray, pairs: Sequence[PromptPair],
            m_clean: torch.Tensor, m_corrupted: torch.Tensor, toks: PairTokens, options: dict) -> PatchResult:
    return PatchResult(method, sites, recovered, list(pairs), [float(v) for v in m_clean], [float(v) for v in m_corrupted],
                       {"clean": toks.clean_tokens, "corrupted": toks.corrupted_tokens},
                       int(hm.model.cfg.n_layers), int(hm.model.cfg.n_heads), options)

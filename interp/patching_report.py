"""Heatmaps of a patching result, written as `results.json` + a self-contained `report.html`.

One heatmap per site kind: layer x position for residual-shaped kinds, layer x head for head
outputs (`z`), (layer, head) x position for queries and keys; red where patching the clean value
recovers the answer, blue where it pushes further away.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from interp.atomic import write_json
from interp.hooks import SITES
from interp.patching import PatchResult
from interp.reports import html_table, write_report

_ORDER = (*SITES, "z", "q", "k", "other")
_TITLES = {
    "resid_pre": "residual stream before each block (resid_pre)",
    "resid_mid": "residual stream between attention and MLP (resid_mid)",
    "resid_post": "residual stream after each block (resid_post)",
    "attn_out": "attention output (attn_out)",
    "mlp_out": "MLP output (mlp_out)",
    "z": "attention heads (z: each head's output at every position)",
    "q": "queries (per head and position)",
    "k": "keys (per key-value head and position)",
    "other": "other points",
}


def position_labels(tokens: list[str]) -> list[str]:
    """Unique axis labels `i 'token'` (plotly merges repeated category names)."""
    return [f"{i} {tok!r}" for i, tok in enumerate(tokens)]


def _heatmap(z: np.ndarray, x: list, y: list, title: str, x_title: str, y_title: str) -> go.Figure:
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale="RdBu_r", zmid=0.0, zmin=-bound, zmax=bound,
                               colorbar={"title": "recovered"},
                               hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>recovered %{{z:.3f}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=max(300, 18 * len(y) + 150))
    return fig


def figures(result: PatchResult) -> list[go.Figure]:
    """One heatmap per site kind present in the result."""
    labels = position_labels(result.tokens["clean"])
    by_kind: dict[str, list[int]] = {}
    for i, site in enumerate(result.sites):
        by_kind.setdefault(site.kind, []).append(i)
    figs = []
    for kind in _ORDER:
        idx = by_kind.get(kind)
        if not idx:
            continue
        sites = [result.sites[i] for i in idx]
        values = result.recovered[idx]
        if kind == "z":
            layers = sorted({s.layer for s in sites})
            grid = np.full((len(layers), result.n_heads), np.nan)
            for s, v in zip(sites, values):
                grid[layers.index(s.layer), s.head] = v
            figs.append(_heatmap(grid, list(range(result.n_heads)), layers, _TITLES[kind], "head", "layer"))
            continue
        if kind in ("q", "k"):
            rows = sorted({(s.layer, s.head) for s in sites})
            names = [f"L{layer}.H{head}" for layer, head in rows]
            key = lambda s: rows.index((s.layer, s.head))  # noqa: E731
        elif kind == "other":
            names = list(dict.fromkeys(s.point for s in sites))
            key = lambda s: names.index(s.point)  # noqa: E731
        else:
            layers = sorted({s.layer for s in sites})
            names = layers
            key = lambda s: layers.index(s.layer)  # noqa: E731
        grid = np.full((len(names), len(labels)), np.nan)
        for s, v in zip(sites, values):
            grid[key(s), s.position] = v
        figs.append(_heatmap(grid, labels, names, _TITLES[kind], "position", "layer" if kind not in ("q", "k", "other") else ""))
    return figs


def write_patching(result: PatchResult, out: str | os.PathLike, model: str, top_n: int = 10) -> tuple[Path, Path]:
    """Write `results.json` and `report.html` into `out`; returns their paths."""
    out = Path(out)
    results, report = out / "results.json", out / "report.html"
    write_json(results, result.to_json(model))
    pair = result.pairs[0]
    method = {"activation": "Activation patching",
              "attribution": "Attribution patching (AtP" + ("*, QK fix" if result.options.get("qk_fix") else "") + ")"}[result.method]
    prompts = (f"clean {pair.clean!r} (answer {pair.answer!r}) vs corrupted {pair.corrupted!r} (wrong {pair.wrong!r})"
               if len(result.pairs) == 1 else f"mean over {len(result.pairs)} prompt pairs (first: {pair.clean!r} vs {pair.corrupted!r})")
    intro = (f"{html.escape(method)} on {html.escape(model)}: {html.escape(prompts)}. "
             "Score per site: (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted), LD = logit(answer) - logit(wrong) "
             f"at the last position; LD clean {np.mean(result.clean_logit_diff):.3f}, corrupted {np.mean(result.corrupted_logit_diff):.3f}. "
             "1 = the site restores the clean answer on its own; 0 = it carries none of the difference.")
    table = f"<h2>Top {top_n} sites by |recovered|</h2>" + html_table(result.top(top_n), ["point", "position", "head", "recovered"])
    write_report(report, f"{method}: {pair.clean}", figures(result), [table], intro)
    return results, report

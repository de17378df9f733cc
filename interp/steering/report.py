"""Figures and the HTML report of a steering evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.atomic import write_json
from interp.reports import html_table, write_report


def eval_figure(curve: Sequence[dict], title: str = "steering effect") -> go.Figure:
    """Scorer means (left axis) and fluency loss (right axis) against alpha."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    alphas = [r["alpha"] for r in curve]
    for key in curve[0]:
        if key not in ("alpha", "fluency_loss") and not key.endswith("_by_seed"):
            fig.add_trace(go.Scatter(x=alphas, y=[r[key] for r in curve], mode="lines+markers", name=key), secondary_y=False)
    fig.add_trace(go.Scatter(x=alphas, y=[r["fluency_loss"] for r in curve], mode="lines+markers", name="fluency loss",
                             line={"dash": "dot"}), secondary_y=True)
    fig.update_layout(title=title, xaxis_title="alpha")
    fig.update_yaxes(title_text="score", secondary_y=False)
    fig.update_yaxes(title_text="loss under unsteered model (nats/token)", secondary_y=True)
    return fig


def write_eval_report(result: dict, out: str | Path, title: str = "Steering evaluation") -> Path:
    """`results.json` and `report.html` (curves + side-by-side samples) in `out`."""
    out = Path(out)
    write_json(out / "results.json", result)
    alphas = [str(a) for a in result["settings"]["alphas"]]
    rows = [{"prompt": s["prompt"], "seed": s["seed"], **{f"alpha {a}": s["texts"].get(a, "") for a in alphas}}
            for s in result["samples"]]
    sections = ["<h2>Means per alpha</h2>", html_table([{k: v for k, v in r.items() if not k.endswith("_by_seed")} for r in result["curve"]]), "<h2>Samples (same seed across alphas)</h2>",
                html_table(rows).replace("<td>", "<td style='text-align:left;vertical-align:top'>")]
    intro = (f"Vector: {result.get('vector', {}).get('method', '?')} at {', '.join(result.get('vector', {}).get('points', []))}; "
             f"alpha unit: {result['settings']['alpha_unit']}. Scores come from scorers independent of the vector; "
             "fluency loss is the unsteered model's mean per-token loss on each continuation (lower is more fluent).")
    write_report(out / "report.html", title, figures=[eval_figure(result["curve"])], sections=sections, intro=intro)
    return out


def layer_sweep_figure(rows: Sequence[dict]) -> go.Figure:
    """Score against point (layer) for each alpha, from `layer_sweep` rows."""
    fig = go.Figure()
    for a in sorted({r["alpha"] for r in rows}):
        sel = [r for r in rows if r["alpha"] == a]
        fig.add_trace(go.Scatter(x=[r["layer"] if r["layer"] is not None else r["point"] for r in sel],
                                 y=[r["score"] for r in sel], mode="lines+markers", name=f"alpha {a:g}"))
    fig.update_layout(title="steering effect by layer", xaxis_title="layer", yaxis_title="score")
    return fig

"""HTML reports of `interp fv build|apply`, `interp lrc` and `interp grains build` (plotly, self-contained)."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from interp.reports import html_table, write_report


def fv_build_report(result: dict, path: Path) -> None:
    """Heat map of every head's average indirect effect, and the layer sweep of the vector."""
    effects = result["effects"]
    heat = go.Figure(go.Heatmap(z=effects, x=[f"H{j}" for j in range(len(effects[0]))], y=[f"L{i}" for i in range(len(effects))],
                                colorscale="RdBu", zmid=0, colorbar={"title": "AIE"}))
    heat.update_layout(title="average indirect effect of each head (rise of P(answer) on shuffled-label prompts)",
                       xaxis_title="head", yaxis_title="layer", height=700)
    figures = [heat]
    sweep = result.get("layer_accuracy") or {}
    if sweep:
        layers = sorted(int(k) for k in sweep)
        line = go.Figure(go.Scatter(x=layers, y=[sweep[str(k)] for k in layers], mode="lines+markers"))
        line.update_layout(title="zero-shot accuracy on training items with the vector added after each layer",
                           xaxis_title="layer", yaxis_title="accuracy", yaxis_range=[0, 1])
        figures.append(line)
    rows = [{"layer": h["layer"], "head": h["head"], "AIE": h["effect"]} for h in result["heads"]]
    params = {k: v for k, v in result["params"].items() if not isinstance(v, list)}
    write_report(path, f"function vector: {result['task']} ({result['model_name']})", figures,
                 sections=["<h2>summed heads</h2>", html_table(rows), "<h2>settings</h2>", html_table([params])],
                 intro=f"vector norm {result['norm']:.3g}, added after layer {result['layer']} ({html.escape(result['point'])}) "
                       "at the last token of each prompt.")


def fv_apply_report(result: dict, path: Path) -> None:
    """Grouped bars: held-out accuracy zero-shot and few-shot, without and with the vector."""
    conditions = ["zero_shot", "few_shot"]
    labels = ["zero-shot", f"{result['n_demos']}-shot"]
    fig = go.Figure([go.Bar(name="without vector", x=labels, y=[result[c]["base"] for c in conditions]),
                     go.Bar(name="with vector", x=labels, y=[result[c]["fv"] for c in conditions])])
    fig.update_layout(barmode="group", title=f"held-out accuracy on {result['task']} ({result['n_test']} items)",
                      yaxis_title="top-1 accuracy (first answer token)", yaxis_range=[0, 1])
    rows = [{"condition": lab, "accuracy without": result[c]["base"], "accuracy with": result[c]["fv"],
             "P(answer) without": result["prob"][c]["base"], "P(answer) with": result["prob"][c]["fv"]}
            for c, lab in zip(conditions, labels)]
    write_report(path, f"function vector applied: {result['task']}", [fig], sections=[html_table(rows)],
                 intro=f"vector added after layer {result['layer']} with alpha {result['alpha']}.")


def lrc_report(result: dict, path: Path) -> None:
    """Bars: held-out accuracy and causal-edit success of the concepts and of the probe."""
    acc, edits = result["accuracy"], result["edits"]
    fig = go.Figure([go.Bar(name="LRC", x=["held-out accuracy", "edit success"], y=[acc["lrc"], edits["lrc"]]),
                     go.Bar(name="logistic probe", x=["held-out accuracy", "edit success"], y=[acc["probe"], edits["probe"]])])
    fig.add_hline(y=acc["chance"], line_dash="dot", annotation_text="majority class")
    fig.update_layout(barmode="group", yaxis_range=[0, 1], title=f"{result['relation']}: concepts at layer {result['subject_layer']}")
    sv = go.Figure(go.Scatter(y=result["lre_singular_values"], mode="lines+markers"))
    sv.update_layout(title="singular values of the LRE weight W", xaxis_title="index", yaxis_type="log")
    write_report(path, f"linear relational concepts: {result['relation']}", [fig, sv],
                 sections=["<h2>edit examples</h2>", html_table(result["edit_examples"]),
                           "<h2>counts</h2>", html_table([{"split": k, **v} for k, v in result["counts"].items()])],
                 intro=f"template {html.escape(result['template'])!s}; subject layer {result['subject_layer']}, object layer "
                       f"{result['object_layer']}, rank {result['rank']}, {result['n_lre']} Jacobians; "
                       f"{result['n_train']} training and {result['n_test']} held-out prompts the model answers.")


def grains_report(result: dict, path: Path) -> None:
    """Norm of the vector per point and its cosine with the mean-difference vector; the chosen tokens."""
    vec = result["vector"]
    points = vec["points"]
    fig = go.Figure(go.Bar(x=points, y=[result["cosine_with_mean_diff"][p] for p in points]))
    fig.update_layout(title="cosine of the GrAInS direction with the mean-difference direction", yaxis_range=[-1, 1])
    examples = [{"text": e["text"], "f(x)": e["f"], "T+": " | ".join(e["plus"]), "T-": " | ".join(e["minus"])}
                for e in vec["params"].get("examples", [])]
    write_report(path, "GrAInS steering vector", [fig], sections=["<h2>top tokens (first texts)</h2>", html_table(examples)],
                 intro=f"top-k {vec['params']['top_k']}, {vec['params']['steps']} integration steps, aggregate "
                       f"{vec['params']['aggregate']}; mean completeness error {vec['params']['mean_completeness_error']:.3g}.")

"""Plotly figures written as self-contained HTML (plotly.js embedded; readers are often offline)."""

from __future__ import annotations

import html
import os
from typing import Sequence

import plotly.graph_objects as go
import plotly.io as pio

from interp.atomic import write_text


def figure_html(fig: go.Figure, include_js: bool) -> str:
    """One figure as an HTML fragment; `include_js` embeds plotly.js in it (do it once per page)."""
    return pio.to_html(fig, full_html=False, include_plotlyjs=True if include_js else False)


def write_report(
    path: str | os.PathLike,
    title: str,
    figures: Sequence[go.Figure] = (),
    sections: Sequence[str] = (),
    intro: str = "",
) -> None:
    """Write a standalone HTML page: a title, an intro paragraph, figures, then raw HTML sections.

    plotly.js is embedded once, so the page works with no network. Written atomically.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f4f4f4}.tok{white-space:pre}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if intro:
        parts.append(f"<p>{intro}</p>")
    if figures:
        # plotly.js goes in once, with the first figure.
        parts.extend(figure_html(fig, include_js=(i == 0)) for i, fig in enumerate(figures))
    parts.extend(sections)
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))


def html_table(rows: Sequence[dict], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """A list of dicts as an HTML table (floats rounded to `digits`)."""
    if not rows:
        return "<p>(no rows)</p>"
    columns = list(columns or rows[0].keys())

    def cell(v):
        return f"{v:.{digits}g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"

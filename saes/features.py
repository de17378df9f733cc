"""What SAE latents respond to and what they do: top contexts, density, logit effects, dashboards.

- `top_activations` scans token batches once (capturing the SAE's hook point), keeps for each
  requested latent the `n_top` tokens where it fires hardest with the activations of a window of
  tokens around each, and counts how often every latent fires (BOS positions excluded).
- `logit_weights` gives each latent's direct effect on the output logits: its decoder row through
  the unembedding, `W_dec[i] @ W_U` (optionally after the final norm's scale, `W_dec[i] * w_ln @ W_U`),
  so its largest entries are the tokens it promotes and its smallest those it suppresses.
- `analyze_features` combines them into a JSON-ready dict; `write_dashboard` renders it as one
  self-contained HTML page (plotly.js embedded) and writes features.json beside it.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp.atomic import write_json
from interp.data import token_batches
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.models import model_device, model_name
from interp.reports import write_report
from saes.architectures import SAE
from saes.evaluate import density_figure
from saes.io import check_sae


def _latent_index(latents: Sequence[int] | None, d_sae: int) -> torch.Tensor:
    if latents is None:
        return torch.arange(d_sae)
    idx = torch.as_tensor(list(latents), dtype=torch.long)
    if idx.numel() == 0:
        raise InterpError("no latents requested: give latent indices, e.g. 0-99 or 3,17,42")
    bad = idx[(idx < 0) | (idx >= d_sae)]
    if bad.numel():
        raise InterpError(f"latent {int(bad[0])} is out of range: the SAE has {d_sae} latents (0 to {d_sae - 1})")
    return idx


@torch.no_grad()
def top_activations(
    sae: SAE,
    model: Any,
    source: str,
    n_tokens: int,
    latents: Sequence[int] | None = None,
    point: str | None = None,
    n_top: int = 10,
    before: int = 10,
    after: int = 4,
    ctx_len: int | None = None,
    batch_size: int = 8,
    text_field: str = "text",
    progress: bool = True,
) -> dict[str, Any]:
    """Scan `n_tokens` tokens of `source` and find each latent's strongest activations.

    Returns a dict of tensors (L = number of requested latents, W = before + 1 + after):
    `latents (L,)`, `values (L, n_top)` descending, `context (L, n_top)` and `pos (L, n_top)`
    (where each value occurred; -1 where a latent fired fewer than `n_top` times), `window (L, n_top, W)`
    (the latent's activation on the tokens around each, the top token at index `before`),
    `tokens` (list of `(ctx,)` token-id tensors, one per context), `fired (d_sae,)` counts over
    all latents, and `n_tokens` (non-BOS tokens scanned).
    """
    if n_tokens <= 0:
        raise InterpError(f"token count must be positive, got {n_tokens}: pass --tokens N")
    hm = HookManager(model)
    name = check_sae(sae, hm, point)
    device = model_device(model)
    sae = sae.to(device).eval()
    idx = _latent_index(latents, sae.cfg.d_sae).to(device)
    L, W = idx.numel(), before + 1 + after
    values = torch.full((0, L), -1.0, device=device)
    where = torch.zeros((0, L), dtype=torch.long, device=device)  # global token index: context * stride + pos
    window = torch.zeros((0, L, W), device=device)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
    contexts: list[torch.Tensor] = []
    stride = ctx_len or sae.cfg.context_size or 128
    scanned = 0
    bar = tqdm(total=n_tokens, unit="tok", desc="features", disable=not progress)
    with bar:
        for tokens in token_batches(model, source, stride, batch_size, n_tokens, text_field):
            tokens = tokens.to(device)
            b, P = tokens.shape
            acts = hm.collect(tokens, name, device=device)[name]
            z = sae.encode(acts.reshape(-1, acts.shape[-1]).to(sae.W_enc.dtype)).reshape(b, P, -1)
            fired += (z[:, 1:] > 0).sum((0, 1))
            zl = z[..., idx].float()  # (b, P, L)
            zl[:, 0] = 0.0  # BOS is left out, as in training: shown as 0 in windows
            rank = zl.clone()
            rank[:, 0] = -1.0  # and never a top token
            flat = rank.reshape(b * P, L)
            n_cand = min(n_top, b * P)
            cand_vals, cand_rows = flat.topk(n_cand, dim=0)  # (n_cand, L)
            bi, pi = cand_rows // P, cand_rows % P
            padded = F.pad(zl, (0, 0, before, after))  # (b, P + W - 1, L)
            offs = torch.arange(W, device=device)
            lat = torch.arange(L, device=device)
            cand_win = padded[bi[..., None], pi[..., None] + offs, lat[None, :, None]]  # (n_cand, L, W)
            cand_where = (len(contexts) + bi) * stride + pi
            values = torch.cat([values, cand_vals])
            where = torch.cat([where, cand_where])
            window = torch.cat([window, cand_win])
            keep_vals, keep = values.topk(min(n_top, values.shape[0]), dim=0)
            values = keep_vals
            where = where.gather(0, keep)
            window = window.gather(0, keep[..., None].expand(-1, -1, W))
            contexts.extend(tokens.cpu())
            scanned += b * (P - 1)
            bar.update(b * (P - 1))
    found = values > 0
    values_t = torch.where(found, values, torch.zeros_like(values)).t().cpu()
    where_t = where.t().cpu()
    found_t = found.t().cpu()
    return {
        "hook_name": name,
        "latents": idx.cpu(),
        "values": values_t,
        "context": torch.where(found_t, where_t // stride, -1),
        "pos": torch.where(found_t, where_t % stride, -1),
        "window": window.permute(1, 0, 2).cpu() * found_t[..., None],
        "before": before,
        "tokens": contexts,
        "fired": fired.cpu(),
        "n_tokens": scanned,
    }


def _final_norm_weight(model: Any) -> torch.Tensor | None:
    """The final norm's per-dimension scale `(d_model,)`, if the model has one."""
    ln = getattr(model, "ln_final", None)
    if ln is None:
        return None
    for pname, p in ln.named_parameters():
        if pname.split(".")[-1] == "weight" and p.ndim == 1:
            return p.detach()
    return None


@torch.no_grad()
def logit_weights(sae: SAE, model: Any, latents: Sequence[int] | None = None, use_final_norm: bool = True) -> torch.Tensor:
    """Direct logit effect of each latent's decoder direction: `(L, d_vocab)`.

    `W_dec[latents] @ W_U`, with the decoder rows first scaled by the final norm's weight when
    `use_final_norm` (the norm's division by the residual's scale is left out: it is per token).
    """
    W_U = getattr(model, "W_U", None)
    if W_U is None:
        raise InterpError("the model exposes no unembedding W_U: logit effects need a TransformerLens bridge")
    if W_U.shape[0] != sae.cfg.d_in:
        raise InterpError(f"the SAE's d_in {sae.cfg.d_in} differs from the unembedding's d_model {W_U.shape[0]}: logit effects need a residual-width SAE")
    idx = _latent_index(latents, sae.cfg.d_sae)
    rows = sae.W_dec.detach()[idx.to(sae.W_dec.device)].float().to(W_U.device)
    if use_final_norm:
        w = _final_norm_weight(model)
        if w is not None:
            rows = rows * w.float().to(rows.device)
    return rows @ W_U.float()


class _Vocab:
    """Token id -> display string, decoded one id at a time (so spaces show), cached."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tid: int) -> str:
        tid = int(tid)
        if tid not in self.cache:
            self.cache[tid] = self.tok.decode([tid]) if self.tok is not None else str(tid)
        return self.cache[tid]


def analyze_features(
    sae: SAE,
    model: Any,
    source: str,
    n_tokens: int,
    latents: Sequence[int] | None = None,
    point: str | None = None,
    n_top: int = 10,
    n_logits: int = 10,
    before: int = 10,
    after: int = 4,
    use_final_norm: bool = True,
    ctx_len: int | None = None,
    batch_size: int = 8,
    text_field: str = "text",
    progress: bool = True,
) -> dict[str, Any]:
    """Everything a dashboard shows, as a JSON-ready dict.

    Keys: model, hook_name, arch, d_sae, data, n_tokens, feature_density (all latents), and
    `latents`: one entry per requested latent with index, density, max_act, examples (value,
    context, pos, tokens (strings), acts (floats), center), promoted and suppressed
    ([token, logit weight] pairs, strongest first; None when the SAE is not residual-width).
    """
    scan = top_activations(sae, model, source, n_tokens, latents, point, n_top, before, after, ctx_len, batch_size, text_field, progress)
    idx = scan["latents"]
    try:
        logits = logit_weights(sae, model, idx.tolist(), use_final_norm).cpu()
    except InterpError:
        logits = None
    vocab = _Vocab(getattr(model, "tokenizer", None))
    density = (scan["fired"].double() / max(scan["n_tokens"], 1))
    out_latents = []
    for row, latent in enumerate(idx.tolist()):
        examples = []
        for j in range(scan["values"].shape[1]):
            c = int(scan["context"][row, j])
            if c < 0:
                continue
            p = int(scan["pos"][row, j])
            ctx = scan["tokens"][c]
            lo, hi = max(0, p - before), min(len(ctx), p + after + 1)
            acts = scan["window"][row, j, lo - (p - before): hi - (p - before)]
            examples.append({
                "value": float(scan["values"][row, j]),
                "context": c,
                "pos": p,
                "tokens": [vocab(t) for t in ctx[lo:hi].tolist()],
                "acts": [round(float(a), 5) for a in acts],
                "center": p - lo,
            })
        entry: dict[str, Any] = {
            "index": latent,
            "density": float(density[latent]),
            "max_act": examples[0]["value"] if examples else 0.0,
            "examples": examples,
            "promoted": None,
            "suppressed": None,
        }
        if logits is not None:
            top = logits[row].topk(n_logits)
            bottom = (-logits[row]).topk(n_logits)
            entry["promoted"] = [[vocab(t), round(float(v), 5)] for v, t in zip(top.values, top.indices)]
            entry["suppressed"] = [[vocab(t), round(float(-v), 5)] for v, t in zip(bottom.values, bottom.indices)]
        out_latents.append(entry)
    return {
        "model": model_name(model),
        "hook_name": scan["hook_name"],
        "arch": sae.cfg.arch,
        "d_sae": sae.cfg.d_sae,
        "data": source,
        "n_tokens": scan["n_tokens"],
        "use_final_norm": use_final_norm,
        "feature_density": density.tolist(),
        "latents": out_latents,
    }


def _token_spans(tokens: list[str], acts: list[float], center: int, scale: float) -> str:
    spans = []
    for i, (t, a) in enumerate(zip(tokens, acts)):
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, a / scale))
        style = f"background:rgba(255,120,0,{alpha:.3f})"
        if i == center:
            style += ";outline:2px solid #c0392b"
        text = html.escape(t).replace("\n", "\u21b5")
        spans.append(f"<span class='tok' style='{style}' title='{a:.4g}'>{text}</span>")
    return "".join(spans)


def _latent_section(entry: dict[str, Any]) -> str:
    i = entry["index"]
    head = (
        f"<div class='latent' id='latent-{i}'><h2>Latent {i}</h2>"
        f"<p>density {entry['density']:.3g} (fires on {100 * entry['density']:.3g}% of tokens), "
        f"max activation {entry['max_act']:.4g}</p>"
    )
    if entry["examples"]:
        rows = "".join(
            f"<tr><td>{ex['value']:.4g}</td><td style='text-align:left'>{_token_spans(ex['tokens'], ex['acts'], ex['center'], entry['max_act'])}</td></tr>"
            for ex in entry["examples"]
        )
        contexts = f"<table><tr><th>activation</th><th>context (top token outlined)</th></tr>{rows}</table>"
    else:
        contexts = "<p><em>never fired in the scanned tokens (dead here)</em></p>"
    logits = ""
    if entry.get("promoted") is not None:
        def cells(pairs):
            return "".join(f"<tr><td class='tok' style='text-align:left'>{html.escape(t)}</td><td>{v:+.3f}</td></tr>" for t, v in pairs)

        logits = (
            "<div style='display:flex;gap:2em'>"
            f"<div><h3>promotes</h3><table>{cells(entry['promoted'])}</table></div>"
            f"<div><h3>suppresses</h3><table>{cells(entry['suppressed'])}</table></div></div>"
        )
    return head + "<h3>top activations</h3>" + contexts + logits + "<p><a href='#top'>back to top</a></p></div>"


def write_dashboard(path: str | os.PathLike, analysis: dict[str, Any], title: str | None = None) -> tuple[Path, Path]:
    """Write `analysis` (from `analyze_features`) as one HTML page at `path` and features.json beside it.

    The page has a latent selector and an index of anchors, the density histogram over all
    latents, and per latent its top contexts (tokens shaded by activation) and promoted /
    suppressed tokens. plotly.js is embedded; the page needs no network.
    """
    path = Path(path)
    json_path = path.with_name("features.json")
    write_json(json_path, analysis)
    entries = analysis["latents"]
    options = "".join(f"<option value='latent-{e['index']}'>latent {e['index']} (density {e['density']:.2g})</option>" for e in entries)
    selector = (
        "<a id='top'></a><h2>Latents</h2>"
        "<p><label>jump to <select onchange=\"if(this.value)location.hash=this.value\">"
        f"<option value=''>choose a latent</option>{options}</select></label></p>"
        "<p class='index'>" + " ".join(f"<a href='#latent-{e['index']}'>{e['index']}</a>" for e in entries) + "</p>"
    )
    style = (
        "<style>.tok{white-space:pre;font-family:ui-monospace,monospace}.latent{border-top:1px solid #ddd;margin-top:1.5em}"
        ".index a{margin-right:.4em}</style>"
    )
    intro = (
        f"{html.escape(str(analysis['arch']))} SAE with {analysis['d_sae']} latents at <code>{html.escape(analysis['hook_name'])}</code> "
        f"of {html.escape(str(analysis['model']))}; {analysis['n_tokens']:,} tokens of {html.escape(str(analysis['data']))} scanned. "
        "Token shading is the latent's activation relative to its maximum; hover a token for its value. "
        "Promoted / suppressed tokens come from the decoder direction through the unembedding"
        + (" after the final norm's scale." if analysis.get("use_final_norm") else ".")
    )
    write_report(
        path,
        title or f"SAE features: {analysis['hook_name']}",
        figures=[density_figure(analysis["feature_density"])],
        sections=[style, selector, *(_latent_section(e) for e in entries)],
        intro=intro,
    )
    return path, json_path

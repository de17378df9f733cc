"""Non-negative concept activation vectors (NCAV / ICE, Zhang et al., 2021) for any layer.

Activations `A (n, d)` (one row per token, or per text / input) are made non-negative, then
factorised by non-negative matrix factorisation, `A+ ~ S P`, with concept scores `S (n, k) >= 0`
and concept vectors `P (k, d+) >= 0`. Each concept is a direction in activation space; its rows
with the highest scores say what it is, and the directional derivative of a target along it
says what it does (the ICE importance: with `A ~ S P`, `dy/dS_k = grad_A y . P_k`).

Making activations non-negative (`nonneg`):

- `split` (default): `A+ = [max(A, 0), max(-A, 0)]` `(n, 2d)`. Lossless (`A = A+[:, :d] - A+[:, d:]`),
  so a concept's direction in activation space is its positive half minus its negative half.
  Needed for gated MLPs: SmolLM2's `blocks.L.mlp.hook_post` is `silu(gate) * up`, half of its
  entries negative and holding most of its energy. Caveat: a concept may use both halves of the
  same unit, and the factorisation sees twice the width.
- `clip`: `max(A, 0)`. Right for ReLU layers (CNN feature maps, ReLU MLPs: nothing is lost);
  elsewhere it discards the negative part, and `fve_activation` shows what that costs.
- `shift`: `A - min(A)` per column (the minimum of the fitting data; new rows below it are clipped).
  Keeps every value but puts a constant offset into every row, which the factorisation must
  spend concepts on; directions are those of the shifted activations.
- `none`: the activations must already be non-negative (e.g. a ReLU output).

Fidelity. `fve` is the fraction of variance of `A+` explained by `S P`; `fve_activation` that of
`A` explained by the reconstruction mapped back (the number to quote for signed activations).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import NMF
from sklearn.utils.validation import check_is_fitted

from interp import readout
from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.manifest import make_manifest
from interp.models import model_name
from probes.blas import one_blas_thread
from interp.readout import as_hook_manager
from interp.reports import html_table, write_report
from probes.cav import Target, resolve_target, target_gradients

NONNEG = ("split", "clip", "shift", "none")
LEVELS = ("token", "text")


def fraction_of_variance_explained(x: np.ndarray, x_hat: np.ndarray) -> float:
    """`1 - ||x - x_hat||^2 / ||x - mean(x)||^2` for `(n, d)` arrays (column means)."""
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    total = ((x - x.mean(0)) ** 2).sum()
    return float(1.0 - ((x - x_hat) ** 2).sum() / total) if total > 0 else float("nan")


class NMFConcepts(BaseEstimator, TransformerMixin):
    """`k` non-negative concepts of activations `(n, d)`: `fit`, `transform` (scores), `inverse_transform`.

    Learned: `components_` `(k, d+)` non-negative concept vectors in the factorised space
    (`d+ = 2d` for `split`), `directions_` `(k, d)` unit concept directions in activation space,
    `shift_` `(d,)` (`shift` only), `scores_` `(n, k)` of the fitting data, `fve_` and
    `fve_activation_` on it, `n_features_in_`.
    """

    def __init__(self, k: int = 10, nonneg: str = "split", max_iter: int = 500, tol: float = 1e-4,
                 init: str = "nndsvda", random_state: int | None = 0):
        self.k = k
        self.nonneg = nonneg
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state

    # ------------------------------------------------------------ sign handling
    def _to_nonneg(self, X: np.ndarray) -> np.ndarray:
        if self.nonneg == "split":
            return np.concatenate([np.maximum(X, 0), np.maximum(-X, 0)], axis=1)
        if self.nonneg == "clip":
            return np.maximum(X, 0)
        if self.nonneg == "shift":
            return np.maximum(X - self.shift_, 0)
        if X.min() < 0:
            raise InterpError(f"nonneg='none' needs non-negative activations, but the minimum is {X.min():.3g}: "
                              "use nonneg='split' (lossless), 'clip' or 'shift'")
        return X

    def _to_activation(self, Y: np.ndarray, offset: bool = True) -> np.ndarray:
        """Rows of the factorised space `(m, d+)` back in activation space `(m, d)`."""
        if self.nonneg == "split":
            d = Y.shape[1] // 2
            return Y[:, :d] - Y[:, d:]
        if self.nonneg == "shift" and offset:
            return Y + self.shift_
        return Y

    @staticmethod
    def _array(X: Any) -> np.ndarray:
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().double().numpy()
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise InterpError(f"NMF concepts need activations of shape (n, d); got {X.shape}")
        if not np.isfinite(X).all():
            raise InterpError("activations hold NaN or infinite values: check the readout (dtype overflow?)")
        return X

    # ---------------------------------------------------------------------- API
    def fit(self, X: Any, y: Any = None) -> "NMFConcepts":
        """Factorise activations `X` `(n, d)` into `k` concepts; returns self."""
        if self.nonneg not in NONNEG:
            raise InterpError(f"unknown nonneg {self.nonneg!r}: use {', '.join(NONNEG)}")
        X = self._array(X)
        if not 1 <= self.k <= min(X.shape):
            raise InterpError(f"k={self.k} concepts for {X.shape[0]} rows of width {X.shape[1]}: pick 1 <= k <= {min(X.shape)}")
        if self.nonneg == "shift":
            self.shift_ = X.min(0)
        Xp = self._to_nonneg(X)
        self.nmf_ = NMF(n_components=self.k, init=self.init, max_iter=self.max_iter, tol=self.tol, random_state=self.random_state)
        with one_blas_thread():  # small solves: extra threads only wait on each other
            S = self.nmf_.fit_transform(Xp)
        self.components_ = self.nmf_.components_
        raw = self._to_activation(self.components_, offset=False)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        self.directions_ = raw / np.where(norms > 0, norms, 1.0)
        self.n_features_in_ = X.shape[1]
        self.fve_ = fraction_of_variance_explained(Xp, S @ self.components_)
        self.fve_activation_ = fraction_of_variance_explained(X, self._to_activation(S @ self.components_))
        self.scores_ = S
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Concept scores `(n, k)` (non-negative) of activations `X` `(n, d)`, components held fixed."""
        check_is_fitted(self, "components_")
        with one_blas_thread():
            return self.nmf_.transform(self._to_nonneg(self._array(X)))

    def inverse_transform(self, S: Any) -> np.ndarray:
        """Activations `(n, d)` rebuilt from concept scores `S` `(n, k)`."""
        check_is_fitted(self, "components_")
        return self._to_activation(np.asarray(S, dtype=np.float64) @ self.components_)

    def fve(self, X: Any) -> float:
        """Fraction of the variance of activations `X` `(n, d)` that the concepts reconstruct."""
        X = self._array(X)
        return fraction_of_variance_explained(X, self.inverse_transform(self.transform(X)))


def fve_by_k(acts: Any, ks: Sequence[int], nonneg: str = "split", max_iter: int = 500, seed: int = 0) -> dict[int, dict[str, float]]:
    """`{k: {"fve": ..., "fve_activation": ...}}`: reconstruction fidelity for each number of concepts."""
    out = {}
    for k in ks:
        est = NMFConcepts(k=k, nonneg=nonneg, max_iter=max_iter, random_state=seed).fit(acts)
        out[int(k)] = {"fve": est.fve_, "fve_activation": est.fve_activation_}
    return out


# ------------------------------------------------------------------ on a model
def _read(hm: Any, inputs: Any, point: str, level: str, batch_size: int,
          progress: bool = False) -> tuple[torch.Tensor, np.ndarray, list[str] | None]:
    """Activations `(n_rows, d)`, the input each row came from `(n_rows,)`, and each row's token (texts, token level)."""
    if hm.is_bridge and level == "token":
        acts, text_index, token_ids = readout.read_tokens(hm, list(inputs), point, batch_size=batch_size, progress=progress)
        tokens = [hm.model.tokenizer.decode([int(t)]) for t in token_ids]
        return acts[point], text_index.numpy(), tokens
    acts = readout.read(hm, inputs, point, pool="mean", batch_size=batch_size, progress=progress)
    return acts[point], np.arange(len(inputs)), None


def _context(tokens: list[str], text_index: np.ndarray, row: int, width: int = 6) -> str:
    """The token at `row` in brackets with up to `width` tokens of its text on either side."""
    lo, hi = row, row
    while lo > 0 and text_index[lo - 1] == text_index[row] and row - lo < width:
        lo -= 1
    while hi + 1 < len(tokens) and text_index[hi + 1] == text_index[row] and hi - row < width:
        hi += 1
    return "".join(tokens[lo:row]) + "[[" + tokens[row] + "]]" + "".join(tokens[row + 1 : hi + 1])


def nmf_concepts(
    model: Any,
    inputs: Sequence[str] | torch.Tensor,
    point: str,
    k: int = 10,
    target: Target | None = None,
    class_inputs: Sequence[str] | torch.Tensor | None = None,
    nonneg: str = "split",
    level: str = "token",
    top_n: int = 10,
    max_iter: int = 500,
    seed: int = 0,
    batch_size: int = 16,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Find `k` NMF concepts in the activations of `inputs` at `point`, with top examples and importance.

    `model`: a transformer bridge (`inputs` are texts; `level='token'` factorises every non-BOS
    token's activation, `level='text'` each text's mean, `interp.readout`) or any `nn.Module`
    (`inputs` a tensor `(n, ...)`, one flattened row per input). `point`: one hook point, e.g.
    `blocks.6.mlp.hook_post`. With a `target` (a single-token string, an output index or
    `f(output) -> (n,)`), each concept's importance is measured on `class_inputs` (default:
    `inputs`): the directional derivative of the target along the concept's unit direction (at the
    last real token for texts), its mean and the fraction of inputs where it is positive (the TCAV
    score).

    Returns a JSON-ready dict: `fve`, `fve_activation`, `n_rows`, `width`, and per concept its
    `share` (of all concept score mass), `top` rows (token with context, or text / input index,
    and score), `top_texts` (texts ranked by their highest token score) and, with a target,
    `tcav_score` and `mean_derivative`; `directions` `(k, d)` as lists. With `out_dir`, writes
    `results.json`, `directions.safetensors` and `report.html` there (`write_nmf_concepts`).
    `progress`: progress bars for the readout and the gradients.
    """
    if level not in LEVELS:
        raise InterpError(f"unknown level {level!r}: use {' or '.join(LEVELS)}")
    hm = as_hook_manager(model)
    names = hm.resolve(point)
    if len(names) != 1:
        raise InterpError(f"NMF concepts read one point at a time; {point!r} names {len(names)}: {names[:4]}")
    name = names[0]
    if target is not None:
        resolve_target(hm.model, target, hm.is_bridge)
    acts, text_index, tokens = _read(hm, inputs, name, level, batch_size, progress)
    est = NMFConcepts(k=k, nonneg=nonneg, max_iter=max_iter, random_state=seed).fit(acts)
    S = est.scores_
    directions = torch.tensor(est.directions_, dtype=torch.float32)
    derivative = None
    if target is not None:
        grads = target_gradients(hm, inputs if class_inputs is None else class_inputs, name, target, batch_size=batch_size,
                                  progress=progress)[name]
        derivative = (grads @ directions.T).numpy()  # (n_class, k)
    texts = list(inputs) if hm.is_bridge else None
    concepts = []
    for c in range(k):
        order = np.argsort(-S[:, c])[:top_n]
        top = []
        for row in order:
            entry = {"row": int(row), "input": int(text_index[row]), "score": float(S[row, c])}
            if tokens is not None:
                entry.update(token=tokens[row], context=_context(tokens, text_index, int(row)))
            elif texts is not None:
                entry["text"] = texts[int(text_index[row])]
            top.append(entry)
        per_text = np.full(int(text_index.max()) + 1, -np.inf)
        np.maximum.at(per_text, text_index, S[:, c])
        best = np.argsort(-per_text)[:top_n]
        concept = {
            "index": c, "share": float(S[:, c].sum() / max(S.sum(), 1e-12)),
            "top": top,
            "top_texts": [{"input": int(i), "score": float(per_text[i]), **({"text": texts[i]} if texts else {})} for i in best],
        }
        if derivative is not None:
            concept["tcav_score"] = float((derivative[:, c] > 0).mean())
            concept["mean_derivative"] = float(derivative[:, c].mean())
        concepts.append(concept)
    fingerprint = readout.texts_fingerprint(list(inputs)) if hm.is_bridge else None
    result = {
        "method": "NCAV / ICE (Zhang et al., 2021): NMF of non-negative activations; importance = directional derivative",
        "model": model_name(hm.model), "point": name, "k": k, "nonneg": nonneg, "level": level if hm.is_bridge else "input",
        "n_inputs": len(inputs), "n_rows": int(acts.shape[0]), "width": int(acts.shape[1]),
        "fve": est.fve_, "fve_activation": est.fve_activation_, "nmf_iterations": int(est.nmf_.n_iter_),
        "target": None if target is None else (target if isinstance(target, (str, int)) else getattr(target, "__name__", "callable")),
        "concepts": concepts,
        "directions": est.directions_.tolist(),
        "manifest": make_manifest(model_name(hm.model), {name: int(acts.shape[1])}, fingerprint),
    }
    if out_dir is not None:
        write_nmf_concepts(result, out_dir)
    return result


def nmf_figure(result: Mapping[str, Any]) -> go.Figure:
    """Each concept's share of the score mass, coloured by its TCAV score when there is a target."""
    cs = result["concepts"]
    labels = [f"{c['index']}: " + (c["top"][0].get("token") or c["top"][0].get("text", str(c["top"][0]["input"])))[:20] for c in cs]
    has_target = result["target"] is not None
    marker = dict(color=[c["tcav_score"] for c in cs], colorscale="RdBu", cmin=0, cmax=1, colorbar=dict(title="TCAV")) if has_target else {}
    fig = go.Figure(go.Bar(x=labels, y=[c["share"] for c in cs], marker=marker))
    fig.update_layout(title=f"NMF concepts at {result['point']} (k={result['k']}, FVE {result['fve_activation']:.3f})",
                      xaxis_title="concept: top example", yaxis_title="share of concept score mass")
    return fig


def write_nmf_concepts(result: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write `results.json` (all but the directions), `directions.safetensors` `(k, d)` and `report.html`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {key: v for key, v in result.items() if key != "directions"})
    write_safetensors(out / "directions.safetensors", {"directions": torch.tensor(result["directions"], dtype=torch.float32)},
                      metadata={"format": "interp.nmf_concepts", "model": str(result["model"]), "point": result["point"],
                                "nonneg": result["nonneg"]})
    rows = []
    for c in result["concepts"]:
        examples = " | ".join(t.get("context") or t.get("text") or str(t["input"]) for t in c["top"][:5])
        row = {"concept": c["index"], "share": c["share"], "top examples": examples}
        if "tcav_score" in c:
            row.update({"TCAV score": c["tcav_score"], "mean derivative": c["mean_derivative"]})
        rows.append(row)
    intro = (f"{result['k']} NMF concepts of {result['n_rows']} rows at {html.escape(result['point'])} "
             f"(non-negative by '{result['nonneg']}'). Fraction of variance explained: {result['fve']:.4f} in the factorised "
             f"space, {result['fve_activation']:.4f} in activation space. Token in [[ ]] is the one scored.")
    write_report(out / "report.html", f"NMF concepts: {result['point']}", figures=[nmf_figure(result)],
                 sections=[html_table(rows)], intro=intro)
    return out

"""Building steering vectors: from contrast sets (`mean_diff`, `pca_diff`), or any direction
(`from_direction`: a probe or CAV normal, an SAE decoder row, ...).

Contrast sets are read through `interp.readout.read` (one forward per batch for every point, the
BOS token never read), so a vector sees exactly the activations a probe or CAV on the same texts
sees.
"""

from __future__ import annotations

from typing import Sequence

import torch

from interp import readout
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.models import model_name
from interp.readout import text_hash, texts_fingerprint
from interp.steering.vector import SteeringVector

BUILD_POOLS = ("last", "mean")


def _source(positive: Sequence[str], negative: Sequence[str]) -> dict:
    texts = list(positive) + list(negative)
    hashes = [text_hash(t) for t in texts] if len(texts) <= 20000 else []
    return {"fingerprint": texts_fingerprint(texts), "n_positive": len(positive), "n_negative": len(negative), "text_hashes": hashes}


def _contrast_activations(model, positive: Sequence[str], negative: Sequence[str], points, pool: str, batch_size: int,
                          progress: bool) -> tuple[readout.Readout, int]:
    """Pooled activations of positive then negative texts `{point: (n_pos + n_neg, d_model)}`."""
    if not positive or not negative:
        side = "positive" if not positive else "negative"
        raise InterpError(f"the {side} contrast set is empty: give at least one text on each side")
    if pool not in BUILD_POOLS:
        raise InterpError(f"unknown pool {pool!r}: use last or mean")
    names = HookManager(model).resolve(points)
    acts = readout.read(model, list(positive) + list(negative), names, pool=pool, batch_size=batch_size,
                        progress=progress, desc="contrast activations")
    return acts, len(positive)


def mean_diff(
    model,
    positive_texts: Sequence[str],
    negative_texts: Sequence[str],
    points: str | Sequence[str],
    pool: str = "last",
    batch_size: int = 16,
    progress: bool = True,
) -> SteeringVector:
    """Contrastive activation addition: `mean(pos acts) - mean(neg acts)` at each point `(d_model,)`.

    The vector keeps its raw magnitude; `resid_norms` records the mean token norm at each point on
    the same texts (BOS excluded).
    """
    acts, n = _contrast_activations(model, positive_texts, negative_texts, points, pool, batch_size, progress)
    dirs = {p: a[:n].mean(0) - a[n:].mean(0) for p, a in acts.items()}
    return SteeringVector(dirs, model_name(model), "mean_diff", acts.mean_norms, _source(positive_texts, negative_texts),
                          {"pool": pool, "batch_size": batch_size})


def pca_diff(
    model,
    positive_texts: Sequence[str],
    negative_texts: Sequence[str],
    points: str | Sequence[str],
    pool: str = "last",
    batch_size: int = 16,
    progress: bool = True,
) -> SteeringVector:
    """First principal component of paired differences `pos_i - neg_i` (uncentred, as in RepE).

    The sign is chosen so it points along the mean difference, and the unit component is scaled by
    the mean projection of the differences onto it, so its magnitude is comparable to `mean_diff`.
    """
    if positive_texts and negative_texts and len(positive_texts) != len(negative_texts):
        raise InterpError(f"pca needs paired texts but got {len(positive_texts)} positive and {len(negative_texts)} "
                          "negative: give the same number on each side (line i of one pairs with line i of the other)")
    acts, n = _contrast_activations(model, positive_texts, negative_texts, points, pool, batch_size, progress)
    dirs = {}
    for p, a in acts.items():
        diffs = (a[:n] - a[n:]).double()
        _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
        pc = vh[0]
        proj = float((diffs @ pc).mean())
        if proj < 0:
            pc, proj = -pc, -proj
        dirs[p] = (pc * proj).float()
    return SteeringVector(dirs, model_name(model), "pca_diff", acts.mean_norms, _source(positive_texts, negative_texts),
                          {"pool": pool, "batch_size": batch_size})


def from_direction(
    direction: torch.Tensor,
    point: str | Sequence[str],
    model_name: str,
    method: str = "probe",
    resid_norm: float | None = None,
    data_fingerprint: str | None = None,
    **params,
) -> SteeringVector:
    """Wrap a direction `(d_model,)` (a probe or CAV normal, ...) as a vector at one or several points.

    `data_fingerprint` names the data the direction was learnt from (recorded in the manifest).
    """
    points = [point] if isinstance(point, str) else list(point)
    if direction.dim() != 1:
        raise InterpError(f"a steering direction must be 1-D (d_model,), got shape {tuple(direction.shape)}")
    norms = {p: float(resid_norm) for p in points} if resid_norm is not None else {}
    source = {"fingerprint": data_fingerprint} if data_fingerprint else {}
    return SteeringVector({p: direction.clone() for p in points}, model_name, method, norms, source, params)

"""GrAInS (Nguyen et al., 2025): steering vectors from the tokens that integrated gradients single out.

For each text `x` of the contrast sets, framed as a prompt (`frame`, default
`"{text} Overall, it was"`), the contrastive objective is the log-probability margin of a
preferred over a dispreferred next token,

    f(x) = log p(y+ | x) - log p(y- | x) = logit_y+(x) - logit_y-(x),

attributed to the text's tokens by integrated gradients (zero-embedding baseline,
`interp.integrated_gradients`). The `top_k` tokens with the largest positive attributions (`T+`,
they push towards y+) and the `top_k` with the most negative ones (`T-`) are ablated (their
embeddings set to the baseline), and at every steered point the last-token activation shifts

    delta+ = h(x) - h(x without T+)        delta- = h(x) - h(x without T-)

are collected over all texts. The steering direction at each point is `v = agg(delta+) - agg(delta-)`
where `agg` is the first principal component (the paper's choice, signed along the mean and scaled
by the mean projection so its size compares with a mean difference) or the mean. At inference the
paper adds `lambda * v` and rescales each activation to its original norm
(`apply(..., norm_preserve=True)` / `steer generate --norm-preserve`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from interp import readout
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.integrated_gradients import embed_point, integrated_gradients, logit_difference, replace_embeddings
from interp.models import model_device, model_name
from interp.readout import text_hash, texts_fingerprint
from interp.steering.vector import SteeringVector

AGGREGATES = ("pca", "mean")
DEFAULT_FRAME = "{text} Overall, it was"
DEFAULT_TARGETS = (" good", " bad")


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InterpError(f"target {text!r} is {len(ids)} tokens: give targets that are one token each (e.g. ' good', ' bad')")
    return int(ids[0])


def _text_positions(tokenizer, framed: str, start: int, end: int) -> list[int]:
    """Token positions (BOS counted as 0) whose characters fall inside `framed[start:end]`."""
    enc = tokenizer(framed, add_special_tokens=False, return_offsets_mapping=True)
    return [k + 1 for k, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]


def aggregate(deltas: torch.Tensor, how: str) -> torch.Tensor:
    """One direction from shifts `(n, d)`: their mean, or their first principal component (centred),
    signed along the mean and scaled by the mean projection onto it."""
    if how == "mean":
        return deltas.mean(0)
    centred = deltas.double() - deltas.double().mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    pc = vh[0]
    proj = float((deltas.double() @ pc).mean())
    if proj < 0:
        pc, proj = -pc, -proj
    return (pc * proj).float()


def grains_vector(
    model,
    positive_texts: Sequence[str],
    negative_texts: Sequence[str],
    points: str | Sequence[str],
    top_k: int = 3,
    steps: int = 16,
    frame: str = DEFAULT_FRAME,
    targets: tuple[str, str] = DEFAULT_TARGETS,
    how: str = "pca",
    progress: bool = True,
) -> SteeringVector:
    """A GrAInS steering vector at `points` from the texts of both contrast sets (see module doc).

    `params` of the result record the settings, the mean objective, the mean completeness error of
    the attributions and, for the first texts, the tokens chosen as `T+` and `T-`.
    """
    if how not in AGGREGATES:
        raise InterpError(f"unknown aggregate {how!r}: use pca or mean")
    if top_k < 1 or steps < 1:
        raise InterpError(f"top_k and steps must be at least 1 (got {top_k} and {steps})")
    if "{text}" not in frame:
        raise InterpError(f"frame {frame!r} has no {{text}} slot: e.g. '{{text}} Overall, it was'")
    texts = list(positive_texts) + list(negative_texts)
    if not positive_texts or not negative_texts:
        raise InterpError("GrAInS needs texts on both sides of the contrast: give positive and negative texts")
    hm = readout.as_hook_manager(model)
    names = hm.resolve(points)
    tok = model.tokenizer
    objective = logit_difference(_single_token(tok, targets[0]), _single_token(tok, targets[1]))
    before = frame.index("{text}")
    plus: dict[str, list[torch.Tensor]] = {p: [] for p in names}
    minus: dict[str, list[torch.Tensor]] = {p: [] for p in names}
    f_values, errors, examples = [], [], []
    for text in tqdm(texts, desc="GrAInS attributions", disable=not progress, leave=False):
        framed = frame.format(text=text)
        tokens, _ = readout.tokenize(model, [framed])
        positions = _text_positions(tok, framed, before, before + len(text))
        attr = integrated_gradients(hm, tokens, objective, positions=positions, steps=steps)
        f_values.append(attr.f_input)
        errors.append(attr.completeness_error)
        scores = attr.scores[positions]
        order = torch.argsort(scores, descending=True)
        top_pos = [positions[int(i)] for i in order[:top_k] if scores[i] > 0]
        top_neg = [positions[int(i)] for i in order.flip(0)[:top_k] if scores[i] < 0]
        acts = _ablated_last(hm, tokens, [top_pos, top_neg], names)
        for p in names:
            plus[p].append(acts[p][0] - acts[p][1])
            minus[p].append(acts[p][0] - acts[p][2])
        if len(examples) < 8:
            ids = tokens[0].tolist()
            examples.append({"text": text, "f": attr.f_input, "plus": [tok.decode([ids[i]]) for i in top_pos],
                             "minus": [tok.decode([ids[i]]) for i in top_neg]})
    dirs = {p: aggregate(torch.stack(plus[p]), how) - aggregate(torch.stack(minus[p]), how) for p in names}
    norms = readout.read(model, texts, names, pool="mean").mean_norms
    source = {"fingerprint": texts_fingerprint(texts), "n_positive": len(positive_texts), "n_negative": len(negative_texts),
              "text_hashes": [text_hash(t) for t in texts] if len(texts) <= 20000 else []}
    params = {"top_k": top_k, "steps": steps, "frame": frame, "targets": list(targets), "aggregate": how,
              "mean_objective_positive": float(torch.tensor(f_values[: len(positive_texts)]).mean()),
              "mean_objective_negative": float(torch.tensor(f_values[len(positive_texts):]).mean()),
              "mean_completeness_error": float(torch.tensor(errors).mean()), "examples": examples}
    return SteeringVector(dirs, model_name(model), "grains", norms, source, params)


def _ablated_last(hm: HookManager, tokens: torch.Tensor, ablations: list[list[int]], names: list[str]) -> dict[str, torch.Tensor]:
    """Last-token activations at `names` for the input, then the input with each position list of
    `ablations` set to the zero (baseline) embedding: `{point: (1 + len(ablations), d)}`."""
    point = embed_point(hm)
    tokens = tokens.to(model_device(hm.model))
    rows = 1 + len(ablations)
    with torch.no_grad():
        emb = hm.collect(tokens, point, device=None)[point]
        batch = emb.expand(rows, -1, -1).clone()
        for r, pos in enumerate(ablations, start=1):
            if pos:
                batch[r, pos] = 0.0
        with replace_embeddings(hm, batch):
            cap = readout.capture(hm, tokens.expand(rows, -1), names, positions=-1)
    return {p: cap[p].float().cpu() for p in names}

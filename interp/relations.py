"""Linear relational embeddings and concepts (Hernandez et al. 2023; Chanin et al. 2023).

For a relation (city -> country, ...) a prompt such as "Lyon is a city in the country of" holds a
subject `s` (the subject's last token at `blocks.l.hook_resid_post`) and an object representation
`o` (the last prompt token, which predicts the object, at a later layer). The LRE models the
model's map between them as affine, from its Jacobian at a few prompts:

    W = mean_i J_i,   J_i = d o / d s  at prompt i        (d_obj, d_subj)
    b = mean_i (o_i - J_i s_i)                            (d_obj,)

Inverting it with a rank-r pseudo-inverse `W_r^+ = V_r S_r^-1 U_r^T` maps each object back onto
the subject space; the linear relational concept (LRC) of object k is the unit vector

    v_k = normalise( mean_{i: object k} W_r^+ (o_i - b) )                  (d_subj,)

It classifies subject activations (`argmax_k v_k . s`) and steers: adding
`alpha * |s| * (v_target - v_source)` to the subject token makes the model answer the target.
Every read and write goes through `HookManager`; on a plain `torch.nn.Module` the points are module
paths whose outputs are `(1, d)` and positions are None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from interp import readout
from interp.errors import InterpError
from interp.hooks import HookManager, StopForward
from interp.models import model_device

TEMPLATES = {
    "city_country": "{subject} is a city in the country of",
    "country_capital": "The capital city of {subject} is",
}
RESID_POINT = "blocks.{layer}.hook_resid_post"


# --------------------------------------------------------------------- the Jacobian
def _pick(act: torch.Tensor, pos: int | None) -> torch.Tensor:
    return act[0] if pos is None else act[0, pos]


def jacobian(
    hm: HookManager,
    inputs: Any,
    subject_point: str,
    object_point: str,
    subject_pos: int | None = None,
    object_pos: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(J, s, o)` for one input (batch 1): `J = d o / d s` `(d_obj, d_subj)` where `s` is the activation
    at `subject_point` (position `subject_pos`) and `o` at `object_point` (position `object_pos`).

    `s` is replaced by a leaf with the same value; the forward stops once `o` is read, and every row
    of `J` comes from one backward pass batched over the identity (`is_grads_batched`).
    """
    state: dict[str, torch.Tensor] = {}

    def put(act: torch.Tensor) -> torch.Tensor:
        leaf = _pick(act, subject_pos).detach().clone().requires_grad_(True)
        out = act.clone()
        if subject_pos is None:
            out[0] = leaf
        else:
            out[0, subject_pos] = leaf
        state["s"] = leaf
        return out

    def take(act: torch.Tensor) -> None:
        state["o"] = _pick(act, object_pos)
        raise StopForward

    with torch.enable_grad(), hm.edit(subject_point, put), hm.edit(object_point, take):
        hm.forward(inputs)
    if "o" not in state or "s" not in state or not state["o"].requires_grad:
        raise InterpError(f"{object_point} does not depend on {subject_point}: pick an object point after the subject point")
    s, o = state["s"], state["o"]
    eye = torch.eye(o.numel(), dtype=o.dtype, device=o.device)
    (jac,) = torch.autograd.grad(o, s, grad_outputs=eye, is_grads_batched=True)
    return jac.detach().float().cpu(), s.detach().float().cpu(), o.detach().float().cpu()


@dataclass
class LinearRelation:
    """An affine map `o ~ W s + b` between two points (an LRE): `weight` `(d_obj, d_subj)`, `bias` `(d_obj,)`."""

    weight: torch.Tensor
    bias: torch.Tensor
    subject_point: str
    object_point: str
    n_prompts: int = 0

    def __call__(self, subjects: torch.Tensor) -> torch.Tensor:
        """`W s + b` for subjects `(n, d_subj)` -> `(n, d_obj)`."""
        return subjects @ self.weight.T + self.bias

    def pinv(self, rank: int | None = None) -> torch.Tensor:
        """Rank-`rank` pseudo-inverse `V_r S_r^-1 U_r^T` `(d_subj, d_obj)` (None: every nonzero singular value)."""
        u, s, vh = torch.linalg.svd(self.weight.double(), full_matrices=False)
        keep = int((s > s[0] * 1e-10).sum()) if rank is None else min(int(rank), len(s))
        if keep < 1:
            raise InterpError(f"rank must be at least 1, got {rank}")
        return (vh[:keep].T @ torch.diag(1.0 / s[:keep]) @ u[:, :keep].T).float()


def fit_lre(
    model_or_hm: Any,
    inputs: Sequence[Any],
    subject_point: str,
    object_point: str,
    subject_positions: Sequence[int | None] | None = None,
    object_positions: Sequence[int | None] | None = None,
    progress: bool = False,
) -> LinearRelation:
    """The LRE from the Jacobians at `inputs` (each a batch-1 input: token ids `(1, n)` or a tensor
    `(1, ...)`): `W = mean J_i`, `b = mean (o_i - J_i s_i)`."""
    hm = readout.as_hook_manager(model_or_hm)
    if not inputs:
        raise InterpError("fitting a linear relation needs at least one prompt")
    sp = list(subject_positions) if subject_positions is not None else [None] * len(inputs)
    op = list(object_positions) if object_positions is not None else [None] * len(inputs)
    w_sum, b_sum = None, None
    for x, s_pos, o_pos in tqdm(list(zip(inputs, sp, op)), desc="Jacobians", disable=not progress, leave=False):
        x = x.to(model_device(hm.model)) if isinstance(x, torch.Tensor) else x
        jac, s, o = jacobian(hm, x, subject_point, object_point, s_pos, o_pos)
        bias = o - jac @ s
        w_sum = jac.double() if w_sum is None else w_sum + jac.double()
        b_sum = bias.double() if b_sum is None else b_sum + bias.double()
    n = len(inputs)
    return LinearRelation((w_sum / n).float(), (b_sum / n).float(), subject_point, object_point, n)


# ----------------------------------------------------------------------- concepts
@dataclass
class LinearRelationalConcepts:
    """One unit concept direction per object, from an inverted LRE (scikit-learn style).

    `fit(relation, object_acts (n, d_obj), objects (n,))` sets `classes_` (object names) and
    `directions_` `(n_classes, d_subj)`; `predict(subject_acts (n, d_subj))` is the argmax of
    `subject_acts @ directions_.T`.
    """

    rank: int | None = None
    classes_: list[str] = field(default_factory=list)
    directions_: torch.Tensor | None = None

    def fit(self, relation: LinearRelation, object_acts: torch.Tensor, objects: Sequence[str]) -> "LinearRelationalConcepts":
        if len(objects) != len(object_acts) or not len(objects):
            raise InterpError(f"got {len(object_acts)} object activations for {len(objects)} objects: give one per prompt")
        inv = relation.pinv(self.rank)
        back = (object_acts.float() - relation.bias) @ inv.T          # (n, d_subj): W+ (o_i - b)
        self.classes_ = sorted(set(objects))
        rows = []
        for name in self.classes_:
            mean = back[[i for i, o in enumerate(objects) if o == name]].mean(0)
            rows.append(mean / mean.norm().clamp_min(1e-12))
        self.directions_ = torch.stack(rows)
        return self

    def decision_function(self, subject_acts: torch.Tensor) -> torch.Tensor:
        """`subject_acts @ directions_.T`: `(n, n_classes)`."""
        if self.directions_ is None:
            raise InterpError("the concepts are not fitted yet: call fit first")
        return subject_acts.float() @ self.directions_.T

    def predict(self, subject_acts: torch.Tensor) -> list[str]:
        return [self.classes_[int(k)] for k in self.decision_function(subject_acts).argmax(-1)]

    def score(self, subject_acts: torch.Tensor, objects: Sequence[str]) -> float:
        """Accuracy of `predict` against `objects`."""
        pred = self.predict(subject_acts)
        return sum(p == o for p, o in zip(pred, objects)) / max(len(objects), 1)

    def direction(self, name: str) -> torch.Tensor:
        if name not in self.classes_:
            raise InterpError(f"no concept for {name!r}: known objects are {', '.join(self.classes_)}")
        return self.directions_[self.classes_.index(name)]

    def steering_vector(self, target: str, source: str | None, point: str, model_name: str):
        """`v_target - v_source` (or `v_target` alone) as a `SteeringVector` at `point`."""
        from interp.steering.build import from_direction

        vec = self.direction(target) - (self.direction(source) if source is not None else 0)
        return from_direction(vec, point, model_name, method="lrc", target=target, source=source)


# ------------------------------------------------------------ prompts on a transformer
@dataclass
class RelationPrompts:
    """Prompts of a relation: `tokens` `(n, max_len)` (BOS first, right-padded), `lengths` `(n,)`,
    `subject_index` `(n,)` (the subject's last token), `answers` `(n,)` (the object's first token)."""

    texts: list[str]
    subjects: list[str]
    objects: list[str]
    tokens: torch.Tensor
    lengths: torch.Tensor
    subject_index: torch.Tensor
    answers: torch.Tensor

    def subset(self, keep: Sequence[int]) -> "RelationPrompts":
        idx = torch.as_tensor(list(keep), dtype=torch.long)
        pick = lambda xs: [xs[i] for i in idx.tolist()]  # noqa: E731
        return RelationPrompts(pick(self.texts), pick(self.subjects), pick(self.objects), self.tokens[idx],
                               self.lengths[idx], self.subject_index[idx], self.answers[idx])


def relation_prompts(model, pairs: Sequence[tuple[str, str]], template: str) -> RelationPrompts:
    """Fill `template` (with `{subject}`) for each (subject, object) pair and locate the subject's last token."""
    from interp.tasks import answer_token

    if "{subject}" not in template:
        raise InterpError(f"template {template!r} has no {{subject}}: e.g. '{{subject}} is a city in the country of'")
    if not pairs:
        raise InterpError("no (subject, object) pairs given")
    texts = [template.format(subject=s) for s, _ in pairs]
    tokens, lengths = readout.tokenize(model, texts)
    subj_idx = []
    for text, (subject, _) in zip(texts, pairs):
        start = text.index(subject)
        end = start + len(subject)
        enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        inside = [k for k, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
        subj_idx.append(inside[-1] + 1)  # +1: BOS is column 0
    answers = torch.tensor([answer_token(model.tokenizer, o) for _, o in pairs], dtype=torch.long)
    return RelationPrompts(texts, [s for s, _ in pairs], [o for _, o in pairs], tokens, lengths,
                           torch.tensor(subj_idx, dtype=torch.long), answers)


def activations_at(hm: HookManager, prompts: RelationPrompts, layer: int, where: str, batch_texts: int = 32) -> torch.Tensor:
    """Residual activations after block `layer` at each prompt's subject token (`where="subject"`)
    or last token (`"last"`): `(n, d_model)` float32."""
    point = RESID_POINT.format(layer=layer)
    pos = prompts.subject_index if where == "subject" else prompts.lengths - 1
    out = []
    for lo in range(0, len(prompts.texts), batch_texts):
        sl = slice(lo, lo + batch_texts)
        lens = prompts.lengths[sl]
        cap = readout.capture(hm, prompts.tokens[sl, : int(lens.max())], [point])[point]
        out.append(cap[torch.arange(len(lens)), pos[sl]])
    return torch.cat(out).float()


def predictions(hm: HookManager, prompts: RelationPrompts, batch_texts: int = 32, edit=None) -> torch.Tensor:
    """The model's top-1 next token after each prompt `(n,)` (with `edit(lo, hi)` an optional
    context manager factory applied to the rows lo..hi of each batch)."""
    preds = []
    for lo in range(0, len(prompts.texts), batch_texts):
        sl = slice(lo, lo + batch_texts)
        lens = prompts.lengths[sl]
        tokens = prompts.tokens[sl, : int(lens.max())].to(model_device(hm.model))
        with torch.no_grad():
            if edit is None:
                logits = hm.model(tokens)
            else:
                with edit(lo, lo + len(lens)):
                    logits = hm.model(tokens)
        preds.append(logits[torch.arange(len(lens)), (lens - 1).to(logits.device)].argmax(-1).cpu())
    return torch.cat(preds)


def fit_relation(
    model,
    prompts: RelationPrompts,
    subject_layer: int,
    object_layer: int,
    progress: bool = False,
) -> LinearRelation:
    """The LRE between the subject token after `subject_layer` and the last token after `object_layer`."""
    hm = readout.as_hook_manager(model)
    if not 0 <= subject_layer < object_layer < hm.n_layers:
        raise InterpError(f"need 0 <= subject layer < object layer < {hm.n_layers}; got {subject_layer} and {object_layer}")
    inputs = [prompts.tokens[i : i + 1, : int(prompts.lengths[i])] for i in range(len(prompts.texts))]
    return fit_lre(hm, inputs, RESID_POINT.format(layer=subject_layer), RESID_POINT.format(layer=object_layer),
                   prompts.subject_index.tolist(), (prompts.lengths - 1).tolist(), progress=progress)


def swap_edit(hm: HookManager, layer: int, prompts: RelationPrompts, deltas: torch.Tensor, alpha: float):
    """An `edit(lo, hi)` factory for `predictions`: adds `alpha * |s| * deltas[i]` to prompt i's subject
    token after block `layer` (`deltas` `(n, d_model)`, e.g. `v_target - v_source`)."""
    point = RESID_POINT.format(layer=layer)

    def factory(lo: int, hi: int):
        rows = torch.arange(hi - lo)
        pos = prompts.subject_index[lo:hi]
        delta = deltas[lo:hi]

        def fn(act: torch.Tensor) -> torch.Tensor:
            out = act.clone()
            s = out[rows, pos.to(act.device)]
            out[rows, pos.to(act.device)] = s + alpha * s.norm(dim=-1, keepdim=True) * delta.to(act.device, act.dtype)
            return out

        return hm.edit(point, fn)

    return factory

"""Linear relational concepts on a shipped relation, measured: held-out classification and causal
edits, each against a logistic-regression probe on the same subject activations.

Only prompts the model answers correctly (top-1 first object token) are used, as in Chanin et al.:
a concept of the model's relation cannot be read where the model does not hold the fact.
"""

from __future__ import annotations

import random

import torch

from interp.errors import InterpError
from interp.hooks import HookManager
from interp.relations import (
    LinearRelationalConcepts,
    activations_at,
    fit_relation,
    predictions,
    relation_prompts,
    swap_edit,
)
from interp.tasks import Task, answer_token


def _balanced(objects: list[str], n: int, rng: random.Random) -> list[int]:
    """Up to `n` indices, taking objects in turn so every object is represented (Chanin et al.)."""
    by: dict[str, list[int]] = {}
    for i, o in enumerate(objects):
        by.setdefault(o, []).append(i)
    for idx in by.values():
        rng.shuffle(idx)
    out: list[int] = []
    while len(out) < n and any(by.values()):
        for o in sorted(by):
            if by[o] and len(out) < n:
                out.append(by[o].pop())
    return sorted(out)


def _probe(s_train: torch.Tensor, y_train: list[str], seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(s_train.numpy())
    clf = LogisticRegression(max_iter=5000, random_state=seed).fit(scaler.transform(s_train.numpy()), y_train)
    # the probe's class directions in the raw activation space (the scaler divides by sigma)
    raw = torch.tensor(clf.coef_ / scaler.scale_, dtype=torch.float32)
    if raw.shape[0] == 1:  # two classes: one boundary, the second class's direction is its negative
        raw = torch.cat([-raw, raw])
    return scaler, clf, raw / raw.norm(dim=-1, keepdim=True)


def run_lrc(model, task: Task, template: str, subject_layer: int, object_layer: int, rank: int, n_lre: int,
            alpha: float, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """Fit an LRE and its concepts on the task's training items and measure them on the held-out ones.

    Returns the results (accuracies, edit success rates, settings, counts) and the tensors to save
    (`directions` `(n_objects, d_model)`, `lre_weight`, `lre_bias`, `probe_directions`).
    """
    hm = HookManager(model)
    n_layers = hm.n_layers
    object_layer = object_layer % n_layers if -n_layers <= object_layer < n_layers else object_layer
    if not 0 <= subject_layer < object_layer < n_layers:
        raise InterpError(f"need 0 <= --subject-layer < --object-layer < {n_layers}; got {subject_layer} and {object_layer}")
    rng = random.Random(seed)
    splits = {}
    counts = {}
    for name, pairs in (("train", task.train), ("test", task.test)):
        prompts = relation_prompts(model, pairs, template)
        ok = (predictions(hm, prompts) == prompts.answers).nonzero().flatten().tolist()
        counts[name] = {"items": len(pairs), "answered": len(ok)}
        splits[name] = prompts.subset(ok) if ok else None
    train, test = splits["train"], splits["test"]
    if train is None or len(set(train.objects)) < 2:
        raise InterpError(f"the model answers too few training prompts of {task.name} ({counts['train']['answered']} of "
                          f"{counts['train']['items']}) to give two concepts: try another --template or model")
    classes = sorted(set(train.objects))
    keep = [i for i, o in enumerate(test.objects) if o in classes] if test is not None else []
    if not keep:
        raise InterpError(f"none of the held-out prompts of {task.name} that the model answers has an object seen in training")
    test = test.subset(keep)
    lre_rows = _balanced(train.objects, n_lre, rng)
    lre = fit_relation(model, train.subset(lre_rows), subject_layer, object_layer, progress=True)
    concepts = LinearRelationalConcepts(rank=rank).fit(lre, activations_at(hm, train, object_layer, "last"), train.objects)
    s_train = activations_at(hm, train, subject_layer, "subject")
    s_test = activations_at(hm, test, subject_layer, "subject")
    scaler, clf, probe_dirs = _probe(s_train, train.objects, seed)
    probe_pred = clf.predict(scaler.transform(s_test.numpy())).tolist()
    accuracy = {
        "lrc": concepts.score(s_test, test.objects),
        "probe": sum(p == o for p, o in zip(probe_pred, test.objects)) / len(test.objects),
        "lrc_train": concepts.score(s_train, train.objects),
        "probe_train": float(clf.score(scaler.transform(s_train.numpy()), train.objects)),
        "chance": max(test.objects.count(c) for c in classes) / len(test.objects),
    }
    targets = [rng.choice([c for c in classes if c != o]) for o in test.objects]
    target_ids = torch.tensor([answer_token(model.tokenizer, t) for t in targets])
    probe_index = {c: i for i, c in enumerate(clf.classes_.tolist())}
    edits, examples = {}, []
    for name, direction in (("lrc", lambda c: concepts.direction(c)), ("probe", lambda c: probe_dirs[probe_index[c]])):
        deltas = torch.stack([direction(t) - direction(o) for t, o in zip(targets, test.objects)])
        preds = predictions(hm, test, edit=swap_edit(hm, subject_layer, test, deltas, alpha))
        edits[name] = float((preds == target_ids).float().mean())
        for i in range(min(6, len(targets))):
            if len(examples) <= i:
                examples.append({"prompt": test.texts[i], "source": test.objects[i], "target": targets[i]})
            examples[i][name] = model.tokenizer.decode([int(preds[i])])
    _, sv, _ = torch.linalg.svd(lre.weight.double(), full_matrices=False)
    result = {
        "relation": task.name, "template": template, "subject_layer": subject_layer, "object_layer": object_layer,
        "rank": rank, "n_lre": len(lre_rows), "alpha": alpha, "seed": seed, "classes": classes,
        "n_train": len(train.objects), "n_test": len(test.objects), "counts": counts, "accuracy": accuracy,
        "edits": edits, "edit_examples": examples, "lre_singular_values": [float(x) for x in sv[:32]],
        "points": {"subject": lre.subject_point, "object": lre.object_point},
    }
    tensors = {"directions": concepts.directions_, "lre_weight": lre.weight, "lre_bias": lre.bias, "probe_directions": probe_dirs}
    return result, tensors

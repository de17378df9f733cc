"""Semantic entropy on planted answer lists, and probes that find (or fail to find) a planted entropy direction."""

import json
import math

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from probes.semantic_entropy import (
    binarize,
    cluster_answers,
    first_sentence,
    load_questions,
    normalize_answer,
    probe_entropy,
    sample_answers,
    semantic_entropy,
    semantic_entropy_probe,
)


def test_semantic_entropy_of_planted_answers_matches_hand_computation():
    answers = ["Paris", "paris.", "The Paris", "London"]
    assert cluster_answers(answers) == [0, 0, 0, 1]
    assert semantic_entropy(answers) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert semantic_entropy(["Rome"] * 5) == 0.0
    assert semantic_entropy(["a cat", "dog", "Bird!", "fish", "an owl"]) == pytest.approx(math.log(5))
    assert normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffel tower in paris"
    assert first_sentence("\n Paris. It is in France.\nQ: next") == "Paris."
    assert first_sentence("Washington, D.C. is the capital") == "Washington, D.C."


def test_a_user_equivalence_changes_the_clusters():
    answers = ["Paris", "Paris, France", "the city of Paris", "London"]
    assert cluster_answers(answers) == [0, 1, 2, 3]

    def mentions_same_city(a, b):
        cities = ("paris", "london")
        return [c in a.lower() for c in cities] == [c in b.lower() for c in cities]

    assert cluster_answers(answers, mentions_same_city) == [0, 0, 0, 1]
    assert semantic_entropy(answers, mentions_same_city) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_best_split_and_median_thresholds():
    h = [0.0, 0.0, 0.1, 0.2, 1.5, 1.6, 1.6]
    labels, cut = binarize(h)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1] and 0.2 < cut < 1.5
    # by hand: the cut between 0.2 and 1.5 gives the smallest within-side squared deviation
    def sse(c):
        a, b = np.array([x for x in h if x <= c]), np.array([x for x in h if x > c])
        return ((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()
    assert all(sse(cut) <= sse(c) for c in (0.05, 0.15, 1.55))
    labels, cut = binarize(h, "median")
    assert cut == 0.2 and labels.sum() == 3
    with pytest.raises(InterpError, match="same semantic entropy"):
        binarize([0.5, 0.5, 0.5])


def planted_states(n=240, d=32, seed=0):
    """Hidden states whose projection on one direction sets the entropy (plus a little noise)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    X = rng.standard_normal((n, d))
    entropy = math.log(5) / (1 + np.exp(-3 * X @ v)) + 0.05 * rng.standard_normal(n)
    return {"layer0": torch.tensor(X, dtype=torch.float32), "noise": torch.tensor(rng.standard_normal((n, d)), dtype=torch.float32)}, entropy


def test_probe_recovers_a_planted_entropy_direction():
    feats, entropy = planted_states()
    r = probe_entropy(feats, entropy, task="classification")
    assert r["n_high"] + r["n_low"] == 240 and r["n_high"] >= 40 and r["n_low"] >= 40
    assert r["per_point"]["layer0"]["auroc"] >= 0.95 and r["per_point"]["layer0"]["accuracy"] >= 0.85
    assert abs(r["per_point"]["layer0"]["shuffled_auroc"] - 0.5) < 0.05  # shuffled targets: chance
    assert r["per_point"]["layer0"]["shuffled_auroc_p95"] < 0.7
    assert r["per_point"]["layer0"]["p_value"] == pytest.approx(1 / 21)  # beats all 20 permutations
    assert abs(r["per_point"]["noise"]["auroc"] - 0.5) < 0.12  # states unrelated to entropy: chance
    assert r["per_point"]["noise"]["p_value"] > 0.05
    reg = probe_entropy(feats, entropy, task="regression")
    assert reg["per_point"]["layer0"]["r2"] >= 0.8 and reg["per_point"]["layer0"]["pearson"] >= 0.9
    assert reg["per_point"]["layer0"]["shuffled_r2"] < 0.1 and reg["per_point"]["layer0"]["p_value"] == pytest.approx(1 / 21)
    assert reg["per_point"]["noise"]["r2"] < 0.1


def test_probe_refuses_unusable_targets():
    feats, _ = planted_states(n=10)
    with pytest.raises(InterpError, match="same semantic entropy"):
        probe_entropy(feats, [0.3] * 10)
    with pytest.raises(InterpError, match="one side"):
        probe_entropy(feats, [0.0] * 9 + [1.0])
    with pytest.raises(InterpError, match="n_shuffles"):
        probe_entropy(feats, [0.0, 1.0] * 5, n_shuffles=0)
    with pytest.raises(InterpError, match="got 9 entropies"):
        probe_entropy(feats, [0.0, 1.0] * 4 + [0.5])


def test_shipped_questions():
    rows = load_questions()
    assert 60 <= len(rows) <= 100
    assert len({r["question"] for r in rows}) == len(rows)
    kinds = [r["kind"] for r in rows]
    assert {"easy", "obscure"} == set(kinds) and abs(kinds.count("easy") - kinds.count("obscure")) <= 10
    assert all(r["answer"] and r["question"].endswith("?") for r in rows)


def test_pipeline_on_a_tiny_model(tiny_model, tmp_path):
    questions = ["What is red?", "Where is the sea?", "Who is he?", "Why is it cold?",
                 "What is a cat?", "How big is it?", "When did it rain?", "Which one is blue?"]
    again = sample_answers(tiny_model, ["Q: What is red?\nA:"], n_samples=3, max_new_tokens=3, temperature=1.0, seed=4)
    assert len(again) == 1 and len(again[0]) == 3
    assert again == sample_answers(tiny_model, ["Q: What is red?\nA:"], n_samples=3, max_new_tokens=3, temperature=1.0, seed=4)

    def first_letter(a, b):  # a coarse equivalence, so that random text gives varied entropies
        return a[:1].lower() == b[:1].lower()

    r = semantic_entropy_probe(tiny_model, questions, points="resid_post:0,2", n_samples=4, max_new_tokens=3,
                               equivalent=first_letter, prompt_template="Q: {question}\nA:", threshold="median",
                               n_folds=2, out_dir=tmp_path)
    assert r["points"] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    for q in r["questions"]:
        assert len(q["answers"]) == 4
        assert q["clusters"] == cluster_answers(q["answers"], first_letter)
        assert q["entropy"] == pytest.approx(semantic_entropy(q["answers"], first_letter))
    for m in r["per_point"].values():
        assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["shuffled_auroc"] <= 1.0 and 1 / 21 <= m["p_value"] <= 1.0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["equivalence"] == "first_letter" and data["n_questions"] == 8
    assert "plotly" in (tmp_path / "report.html").read_text()
    with pytest.raises(InterpError, match="temperature"):
        sample_answers(tiny_model, ["Q"], temperature=0.0)

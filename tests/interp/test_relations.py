"""Linear relational embeddings and concepts: a planted affine relation is recovered exactly, and the
Jacobian read through `HookManager` equals one computed with TransformerLens hooks and
`torch.autograd.functional.jacobian` (row by row, no batched backward)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from interp.errors import InterpError
from interp.hooks import HookManager
from interp.relations import LinearRelationalConcepts, fit_lre, jacobian, relation_prompts


class Planted(nn.Module):
    """x = subject -> A s + c = object -> a nonlinear head (never read)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.subject = nn.Identity()
        self.relation = nn.Linear(weight.shape[1], weight.shape[0])
        self.object = nn.Identity()
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(weight.shape[0], 3))
        with torch.no_grad():
            self.relation.weight.copy_(weight)
            self.relation.bias.copy_(bias)

    def forward(self, x):
        return self.head(self.object(self.relation(self.subject(x))))


def test_planted_affine_relation_and_its_concepts_are_recovered():
    torch.manual_seed(0)
    d, rank, n_objects = 24, 6, 4
    basis = torch.linalg.qr(torch.randn(d, d))[0]
    weight = basis[:, :rank] @ torch.diag(torch.linspace(3.0, 1.0, rank)) @ torch.linalg.qr(torch.randn(d, d))[0][:, :rank].T
    bias = torch.randn(d)
    model = Planted(weight, bias)
    hm = HookManager(model)
    # inputs whose subject representations cluster around one centre per object, inside W's row space
    row_space = torch.linalg.svd(weight)[2][:rank]
    centres = torch.randn(n_objects, rank) @ row_space * 0.6
    labels = [k % n_objects for k in range(40)]
    subjects = torch.stack([centres[k] + 0.02 * torch.randn(d) for k in labels])
    inputs = [s[None] for s in subjects]
    lre = fit_lre(hm, inputs[:5], "subject", "object")
    cos = float(torch.nn.functional.cosine_similarity(lre.weight.flatten(), weight.flatten(), dim=0))
    assert cos >= 0.999
    torch.testing.assert_close(lre.bias, bias, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        objects = model.relation(subjects)
    names = [f"o{k}" for k in labels]
    concepts = LinearRelationalConcepts(rank=rank).fit(lre, objects[:28], names[:28])
    planted = centres / centres.norm(dim=-1, keepdim=True)
    found = torch.nn.functional.cosine_similarity(concepts.directions_, planted, dim=-1)
    assert float(found.min()) >= 0.95
    assert concepts.score(subjects[28:], names[28:]) == 1.0
    assert concepts.classes_ == ["o0", "o1", "o2", "o3"]


def test_jacobian_through_hook_manager_equals_autograd_with_transformerlens_hooks(tiny_model):
    tokens = tiny_model.to_tokens("Paris is the capital of France")
    s_name, o_name, s_pos, o_pos = "blocks.0.hook_resid_post", "blocks.2.hook_resid_post", 1, tokens.shape[1] - 1
    jac, s0, o0 = jacobian(HookManager(tiny_model), tokens, s_name, o_name, s_pos, o_pos)

    def object_of(s: torch.Tensor) -> torch.Tensor:
        store = {}

        def put(act, hook):
            act = act.clone()
            act[0, s_pos] = s
            return act

        def take(act, hook):
            store["o"] = act[0, o_pos]

        tiny_model.run_with_hooks(tokens, fwd_hooks=[(s_name, put), (o_name, take)])
        return store["o"]

    ref = torch.autograd.functional.jacobian(object_of, s0.clone())
    assert jac.shape == (64, 64)
    torch.testing.assert_close(jac, ref, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(o0, object_of(s0).detach(), atol=1e-5, rtol=1e-5)
    assert float(jac.abs().max()) > 1e-3


def test_relation_prompts_find_the_subjects_last_token(tiny_model):
    prompts = relation_prompts(tiny_model, [("France", "Paris"), ("United Kingdom", "London")], "The capital city of {subject} is")
    for row, length, idx, subject in zip(prompts.tokens, prompts.lengths, prompts.subject_index, prompts.subjects):
        upto = tiny_model.tokenizer.decode(row[1 : int(idx) + 1].tolist())
        assert upto.endswith(subject) and int(idx) < int(length) - 1
    with pytest.raises(InterpError, match="subject"):
        relation_prompts(tiny_model, [("a", "b")], "no slot here")

"""No public context manager leaves grad mode, hooks or thread counts changed, also on errors,
and each one works inside a training step (autograd through the edited forward)."""

from __future__ import annotations

import pytest
import torch

from interp import HookManager

POINT = "blocks.1.hook_resid_post"


def _state(model) -> tuple:
    """Grad mode, hooks attached anywhere in the model, torch threads.

    The bridge attaches some hooks of its own on its first forward pass; a warm-up pass runs
    before the first reading, so only hooks left behind by the code under test count.
    """
    with torch.no_grad():
        model(model.to_tokens("warm up"))
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return torch.is_grad_enabled(), hooks, torch.get_num_threads()


def _context_managers(hm: HookManager, d: int):
    vec = torch.randn(d)
    return {
        "capture": lambda: hm.capture(POINT),
        "capture_stop_early": lambda: hm.capture(POINT, stop_early=True),
        "edit": lambda: hm.edit(POINT, lambda a: a * 1.5),
        "patch": lambda: hm.patch(POINT, torch.zeros(d), positions=0),
        "ablate_zero": lambda: hm.ablate(POINT, "zero", positions=0),
        "ablate_direction": lambda: hm.ablate(POINT, "direction", direction=vec),
        "splice": lambda: hm.splice(POINT, lambda x: x * 0.5),
        "steer": lambda: hm.steer(vec, 2.0, POINT),
    }


@pytest.mark.parametrize("name", ["capture", "capture_stop_early", "edit", "patch", "ablate_zero", "ablate_direction", "splice", "steer"])
def test_context_manager_inside_a_training_step_leaves_no_trace(tiny_model, name):
    hm = HookManager(tiny_model)
    before = _state(tiny_model)
    tokens = tiny_model.to_tokens("the cat sat on the mat")
    probe = torch.nn.Parameter(torch.ones(int(tiny_model.cfg.d_model)))
    with _context_managers(hm, int(tiny_model.cfg.d_model))[name]():
        assert torch.is_grad_enabled()
        with hm.edit("blocks.2.hook_resid_pre", lambda a: a * probe):  # downstream of every edit at POINT
            logits = hm.forward(tokens)
        if logits is not None:  # a stop_early capture ends the forward before the logits
            logits.float().pow(2).mean().backward()
            assert probe.grad is not None and torch.isfinite(probe.grad).all() and probe.grad.abs().sum() > 0
    assert _state(tiny_model) == before


@pytest.mark.parametrize("name", ["capture", "edit", "steer", "splice"])
def test_context_manager_cleans_up_after_an_exception(tiny_model, name):
    hm = HookManager(tiny_model)
    before = _state(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        with torch.no_grad(), _context_managers(hm, int(tiny_model.cfg.d_model))[name]():
            tiny_model(tiny_model.to_tokens("hello"))
            raise RuntimeError("boom")
    assert _state(tiny_model) == before
    assert hm.n_active == 0


def test_collect_restores_grad_mode(tiny_model):
    hm = HookManager(tiny_model)
    before = _state(tiny_model)
    acts = hm.collect(tiny_model.to_tokens("the cat"), "resid_post:all")
    assert len(acts) == tiny_model.cfg.n_layers
    assert _state(tiny_model) == before

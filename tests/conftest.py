"""Shared fixtures: tiny random models (fast, offline) and the real SmolLM2 (loaded once)."""

from __future__ import annotations

import pytest
import torch

from interp import load_model, make_tiny_model


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama", n_layers=3, d_model=64)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_gpt2"), arch="gpt2", n_layers=3, d_model=64)


@pytest.fixture(scope="session")
def tiny_model(tiny_llama_dir):
    """A 3-layer, d_model 64 llama-shaped TransformerBridge with random weights."""
    return load_model(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="session")
def smol():
    """The embedded default model, SmolLM2-135M-Instruct (30 layers, d_model 576), on CPU."""
    return load_model("default", device="cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""SAE tests: small problems, so torch runs them on one thread (no thread-pool overhead)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems are small: one thread avoids thread-pool overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""What the two routes of a capture share: `HookManager`'s hooks on the bridge and `interp.fastpath`'s
plain HuggingFace forward both select positions the same way and end a forward early the same way."""

from __future__ import annotations

from typing import Sequence

import torch

Positions = int | slice | Sequence[int] | None


class StopForward(Exception):
    """Raised inside a hook to end the forward pass once every requested point is captured."""


def select_positions(act: torch.Tensor, positions: Positions) -> torch.Tensor:
    """`act (batch, pos, d)` at `positions` (None: all; an int drops the position axis)."""
    if positions is None:
        return act
    if isinstance(positions, (int, slice)):
        return act[:, positions]
    return act[:, list(positions)]

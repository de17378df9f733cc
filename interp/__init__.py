"""interp: one hook manager over a pretrained transformer for capture, probes, SAEs, CAVs and steering."""

from interp.errors import InterpError
from interp.hooks import HookManager
from interp.models import load_model, make_tiny_model

__all__ = ["HookManager", "InterpError", "load_model", "make_tiny_model"]
__version__ = "0.1.0"

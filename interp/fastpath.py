"""Harvest residual-stream activations by running the model's plain HuggingFace modules.

A `TransformerBridge` wraps every HuggingFace submodule in a bridge component that fires its
TransformerLens hook points; some of that work (the normalization wrappers recompute RMS
statistics for `hook_scale`/`hook_normalized`, the attention wrapper rebuilds attention step by
step) costs time on every forward even when nothing listens. For the five residual sites
(`blocks.L.hook_resid_pre|resid_mid|resid_post|attn_out|mlp_out`) a harvest only needs the
tensors flowing between a decoder layer's submodules, so this module runs a plain HuggingFace
copy of the model instead, captures with forward hooks on its modules and stops after the last
requested point.

The plain copy is built once per bridge on the meta device and then given the bridge's own
parameter and buffer tensors (the same objects: no extra memory, and in-place weight changes are
seen by both). It is cached on the bridge; if the bridge's tensors are later replaced (a
`.to(device)` that swaps buffers, new `Parameter` objects), the copy is rebuilt on the next call.
Whatever changes the bridge's computation without touching those tensors (weight processing,
compatibility mode, split-QKV inputs, training mode, a hook on the bridge or its HookPoints)
sends `applies` to False, and `HookManager.collect`, the one caller, takes the bridge path.

Only model types whose activations were shown to be bit-identical (`torch.equal`) to the
bridge's `run_with_cache` at every supported site are served here (`PROVEN_MODEL_TYPES`). GPT-2
is not: the bridge splits its fused QKV projection, which changes rounding.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from interp.errors import InterpError
from interp.forward import Positions, StopForward, select_positions

# A model type joins only together with a test proving torch.equal against run_with_cache.
PROVEN_MODEL_TYPES = frozenset({"llama"})
FAST_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
_NAME_RE = re.compile(rf"^blocks\.(\d+)\.hook_({'|'.join(FAST_SITES)})$")
_CACHE_ATTR = "_interp_plain"
# Config flags under which the bridge computes attention differently from HuggingFace.
_BRIDGE_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_attn_result")


class _Unsupported(Exception):
    """The bridge's tensors do not map one to one onto a plain HuggingFace model."""


@dataclass
class _Plain:
    """A plain HuggingFace model sharing the bridge's tensors, and what keeps it valid.

    `links` pairs each plain tensor slot `(module._parameters or _buffers, key)` with the bridge
    slot it was taken from; `watched` are the modules whose hooks send a harvest to the bridge.
    """

    model: nn.Module
    links: list[tuple[dict, str, dict, str]]
    watched: list[nn.Module]

    def fresh(self) -> bool:
        """True while every plain tensor is still the very tensor object the bridge holds."""
        return all(mine[key] is theirs[src_key] for mine, key, theirs, src_key in self.links)


def _strip(name: str) -> str:
    return name.replace("._original_component", "")


def _bridge_ok(bridge: Any) -> bool:
    """The bridge is in the state in which its hook values equal plain HuggingFace tensors."""
    hf = getattr(bridge, "original_model", None)
    config = getattr(hf, "config", None)
    return (
        config is not None
        and getattr(config, "model_type", None) in PROVEN_MODEL_TYPES
        and getattr(config, "_attn_implementation", None) == "eager"
        and not bridge.training
        and not getattr(bridge, "compatibility_mode", False)
        and not getattr(bridge, "_weights_processed", False)
        and not any(getattr(bridge.cfg, flag, False) for flag in _BRIDGE_FLAGS)
    )


def _build(bridge: Any) -> _Plain:
    """A plain HuggingFace model whose parameters and buffers are the bridge's own tensors."""
    from transformer_lens.hook_points import HookPoint
    from transformers import AutoModelForCausalLM

    hf = bridge.original_model
    config = copy.deepcopy(hf.config)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    plain.eval()
    sources: dict[str, tuple[dict, str]] = {}
    for prefix, module in hf.named_modules(remove_duplicate=False):
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is not None:
                    sources.setdefault(_strip(f"{prefix}.{key}" if prefix else key), (store, key))
    links = []
    for prefix, module in plain.named_modules(remove_duplicate=False):
        for store in (module._parameters, module._buffers):
            for key in list(store):
                name = f"{prefix}.{key}" if prefix else key
                if store[key] is None:
                    continue
                if _strip(name) not in sources:
                    raise _Unsupported(name)
                theirs, src_key = sources[_strip(name)]
                if theirs[src_key].shape != store[key].shape:
                    raise _Unsupported(name)
                store[key] = theirs[src_key]
                links.append((store, key, theirs, src_key))
    # Users read and write through HookPoints (TransformerLens and HookManager alike). Other
    # modules carry hooks that transformers and the bridge keep for their own bookkeeping.
    watched = [bridge, *(m for m in bridge.modules() if isinstance(m, HookPoint))]
    return _Plain(plain, links, watched)


def _cached(bridge: Any) -> _Plain | None:
    """The plain twin kept on the bridge (built, or rebuilt when stale); None if there is none."""
    cached = bridge.__dict__.get(_CACHE_ATTR)
    if cached is False:
        return None
    if cached is None or not cached.fresh():
        try:
            cached = _build(bridge)
        except _Unsupported:
            cached = False
        # In __dict__, not as a submodule: the bridge's parameters, state_dict and .to() stay as they were.
        bridge.__dict__[_CACHE_ATTR] = cached
    return cached or None


def plain_model(bridge: Any) -> nn.Module:
    """The cached plain HuggingFace model sharing `bridge`'s weights (built on first use).

    Its parameters are the bridge's `Parameter` objects themselves (same `data_ptr`), so it adds
    no memory; it is rebuilt when the bridge's tensors are replaced.
    """
    if not _bridge_ok(bridge) or (cached := _cached(bridge)) is None:
        raise InterpError(
            f"{getattr(bridge, 'interp_name', type(bridge).__name__)} has no plain HuggingFace fast path "
            f"(it serves {', '.join(sorted(PROVEN_MODEL_TYPES))} bridges in their default state): use HookManager.collect"
        )
    return cached.model


def _hooked(modules: Sequence[nn.Module]) -> bool:
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in modules)


def applies(hm: Any, names: Sequence[str]) -> bool:
    """True when `collect` gives exactly what capturing through `hm`'s hooks would (a `HookManager`;
    `names`: full point names).

    Needs a bridge of a proven model type in its default state, only the five residual sites,
    and no hook on the bridge or any of its HookPoints (an edit, steer or capture in effect must
    be honoured, so it takes the bridge path). Raw torch hooks a user puts on the HuggingFace
    modules inside the bridge are not looked for.
    """
    if not hm.is_bridge or not names or not all(_NAME_RE.match(n) for n in names):
        return False
    bridge = hm.model
    if not _bridge_ok(bridge):
        return False
    cached = _cached(bridge)
    return cached is not None and not _hooked(cached.watched)


def collect(
    bridge: Any,
    tokens: torch.Tensor,
    names: Sequence[str],
    positions: Positions = None,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Activations at `names` for `tokens (batch, pos)` from the plain model: `{name: (batch, pos, d)}`.

    Same contract as `HookManager.collect` (positions selected, detached, on `device` in `dtype`);
    the forward stops as soon as the last point is captured. Call only where `applies` is True.
    """
    plain = plain_model(bridge)
    layers = plain.model.layers
    store: dict[str, torch.Tensor] = {}
    want = len(set(names))

    def keep(name: str, act: torch.Tensor) -> None:
        store[name] = select_positions(act, positions).detach().to(device=device, dtype=dtype)
        if len(store) == want:
            raise StopForward

    def first(output: Any) -> torch.Tensor:
        return output[0] if isinstance(output, (tuple, list)) else output

    handles = []
    try:
        for name in dict.fromkeys(names):
            layer_idx, site = _NAME_RE.match(name).groups()
            layer = layers[int(layer_idx)]
            if site == "resid_pre":
                handles.append(layer.register_forward_pre_hook(
                    lambda _m, args, kwargs, n=name: keep(n, args[0] if args else kwargs["hidden_states"]), with_kwargs=True))
            elif site == "resid_mid":
                handles.append(layer.post_attention_layernorm.register_forward_pre_hook(lambda _m, args, n=name: keep(n, args[0])))
            else:
                module = {"resid_post": layer, "attn_out": layer.self_attn, "mlp_out": layer.mlp}[site]
                handles.append(module.register_forward_hook(lambda _m, _args, out, n=name: keep(n, first(out))))
        with torch.no_grad():
            try:
                plain.model(input_ids=tokens, use_cache=False)
            except StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return store

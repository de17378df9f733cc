"""`HookManager`: the one place that reads from and writes into a model's forward pass.

On a TransformerLens `TransformerBridge`, points are its hook names (`blocks.3.hook_resid_post`),
plus selectors `SITE:LAYERS` such as `resid_post:all`, `mlp_out:0-5`, `resid_pre:-1`,
`attn_out:2,7`. On any other `torch.nn.Module`, points are module paths (`layer1.0.conv2`)
and the module's output is what is read or written.

Every capture or write-back is a context manager; hooks are removed on exit, also on
exceptions, and nested blocks compose (hooks run in the order the blocks were entered).
"""

from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from interp import fastpath
from interp.errors import InterpError
from interp.forward import Positions, StopForward, select_positions
from interp.models import model_device

SITES = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")

EditFn = Callable[[torch.Tensor], torch.Tensor | None]


class Capture(dict):
    """Activations captured during the `with` block, by point name: `(batch, pos, d)` tensors."""


def _split_output(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The tensor a module produced, and how to put a replacement back (modules may return tuples)."""
    if isinstance(output, torch.Tensor):
        return output, lambda new: new
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0], lambda new: type(output)((new, *output[1:]))
    raise InterpError(f"cannot hook a module whose output is {type(output).__name__}: pick a module that returns a tensor")


def layer_of(point: str) -> int | None:
    """The block index of a TransformerLens point name (`blocks.12.hook_resid_post` -> 12), or None
    for a point outside the blocks."""
    m = _LAYER_RE.match(point)
    return int(m.group(1)) if m else None


def parse_layers(text: str, n_layers: int) -> list[int]:
    """Layers from `all`, `N`, `-N`, `A-B` (inclusive) or comma lists of those."""
    text = text.strip()
    if text == "all":
        return list(range(n_layers))
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?\d+)-(-?\d+)", part)
        try:
            if m:
                lo, hi = (_check_layer(int(g), n_layers) for g in m.groups())
                layers.extend(range(lo, hi + 1))
            else:
                layers.append(_check_layer(int(part), n_layers))
        except ValueError:
            raise InterpError(f"bad layer selector {text!r}: use all, N, -N, A-B or a comma list") from None
    return layers


def _check_layer(layer: int, n_layers: int) -> int:
    if not -n_layers <= layer < n_layers:
        raise InterpError(f"layer {layer} is out of range: the model has {n_layers} layers (0 to {n_layers - 1}, or -1 for the last)")
    return layer % n_layers


class HookManager:
    """Capture and edit activations of `model` at named points.

    >>> hm = HookManager(model)
    >>> acts = hm.collect(tokens, "resid_post:0-3")          # {name: (batch, pos, d_model)}
    >>> with hm.steer(direction, alpha=4.0, point="blocks.6.hook_resid_post"):
    ...     model.generate(prompt)
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.is_bridge = hasattr(model, "hook_dict") and hasattr(model, "cfg")
        if self.is_bridge:
            self._points: dict[str, nn.Module] = dict(model.hook_dict)
        else:
            self._points = {name: mod for name, mod in model.named_modules() if name}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.last_route: str | None = None  # "plain" or "bridge": how the last `collect` ran

    # ------------------------------------------------------------------ names
    @property
    def n_layers(self) -> int | None:
        return int(self.model.cfg.n_layers) if self.is_bridge else None

    @property
    def d_model(self) -> int | None:
        return int(self.model.cfg.d_model) if self.is_bridge else None

    @property
    def hook_points(self) -> list[str]:
        """Every valid point name, in model order."""
        return list(self._points)

    def layer_of(self, point: str) -> int | None:
        """The block index a point belongs to, or None for points outside the blocks."""
        return layer_of(point)

    def resolve(self, points: str | Sequence[str]) -> list[str]:
        """Expand selectors into point names, validating each; order kept, duplicates dropped."""
        items = [points] if isinstance(points, str) else list(points)
        if not items:
            raise InterpError("no hook point given: name one, e.g. blocks.0.hook_resid_post or resid_post:all")
        out: list[str] = []
        for item in items:
            for part in (p.strip() for p in item.split(";") if p.strip()) if ";" in item else [item.strip()]:
                for name in self._resolve_one(part):
                    if name not in out:
                        out.append(name)
        return out

    def _resolve_one(self, item: str) -> list[str]:
        if item in self._points:
            return [item]
        if self.is_bridge:
            site, _, layers = item.partition(":")
            if site in SITES:
                return [f"blocks.{layer}.{SITES[site]}" for layer in parse_layers(layers or "all", self.n_layers)]
            m = _LAYER_RE.match(item)
            if m:
                _check_layer(int(m.group(1)), self.n_layers)
        close = difflib.get_close_matches(item, self._points, n=4, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "run `interp inspect` to list them"
        sites = f" or SITE:LAYERS with SITE in {'|'.join(SITES)}" if self.is_bridge else ""
        raise InterpError(f"unknown hook point {item!r} ({hint}); use a listed name{sites}")

    def module(self, point: str) -> nn.Module:
        """The module (TransformerLens `HookPoint` or plain submodule) behind one point."""
        return self._points[self.resolve(point)[0]]

    # ---------------------------------------------------------------- plumbing
    def _hook(self, point: str, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> None:
        def hook(_module, _args, output):
            act, put_back = _split_output(output)
            new = fn(act)
            return None if new is None else put_back(new)

        self._handles.append(self.module(point).register_forward_hook(hook))

    @contextmanager
    def _scope(self) -> Iterator[None]:
        start = len(self._handles)
        try:
            yield
        finally:
            for handle in self._handles[start:]:
                handle.remove()
            del self._handles[start:]

    @property
    def n_active(self) -> int:
        """Number of hooks this manager has attached right now (0 outside every `with` block)."""
        return len(self._handles)

    # ------------------------------------------------------------------- reads
    @contextmanager
    def capture(
        self,
        points: str | Sequence[str],
        positions: Positions = None,
        device: str | torch.device | None = "cpu",
        dtype: torch.dtype | None = None,
        stop_early: bool = False,
    ) -> Iterator[Capture]:
        """Record the activations at `points` during forward passes in the block.

        Each value is `(batch, pos, d)` (or `(batch, len(positions), d)`), detached, on `device`
        (None keeps the model's) in `dtype` (None keeps it). A later forward overwrites it.
        With `stop_early`, the forward pass ends once every point is recorded; run it through
        `HookManager.forward`, which catches that stop.
        """
        names = self.resolve(points)
        store = Capture()
        seen: set[str] = set()

        def reset(_module, _args, _kwargs=None):
            seen.clear()

        def make(name: str):
            def record(act: torch.Tensor) -> None:
                store[name] = select_positions(act, positions).detach().to(device=device, dtype=dtype)
                seen.add(name)
                if stop_early and len(seen) == len(names):
                    raise StopForward
            return record

        with self._scope():
            self._handles.append(self.model.register_forward_pre_hook(reset))
            for name in names:
                self._hook(name, make(name))
            yield store

    def forward(self, inputs: Any, **kwargs: Any) -> Any:
        """Run the model; returns its output, or None when a `stop_early` capture ended it."""
        try:
            return self.model(inputs, **kwargs)
        except StopForward:
            return None

    def collect(
        self,
        inputs: Any,
        points: str | Sequence[str],
        positions: Positions = None,
        device: str | torch.device | None = "cpu",
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> Capture:
        """One forward pass of `inputs`, stopped after the last requested point; returns the capture.

        Token ids `(batch, pos)` of a bridge are moved to the model's device first. Where it is exact,
        the forward runs the plain HuggingFace modules instead of the bridge (`interp.fastpath`: the
        residual sites of proven architectures, with no hook in effect; bit-identical values, less
        time); `last_route` then says `"plain"`, else `"bridge"`.
        """
        names = self.resolve(points)
        if self.is_bridge and isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
            inputs = inputs.to(model_device(self.model))
            if not kwargs and fastpath.applies(self, names):
                self.last_route = "plain"
                return Capture(fastpath.collect(self.model, inputs, names, positions=positions, device=device, dtype=dtype))
        self.last_route = "bridge"
        return self._collect_hooked(inputs, names, positions, device, dtype, **kwargs)

    def _collect_hooked(self, inputs: Any, names: list[str], positions: Positions, device, dtype, **kwargs: Any) -> Capture:
        """`collect` through this manager's hooks on the model's own forward."""
        with torch.no_grad(), self.capture(names, positions, device, dtype, stop_early=True) as store:
            self.forward(inputs, **kwargs)
        return store

    # ------------------------------------------------------------------ writes
    @contextmanager
    def edit(self, point: str | Sequence[str], fn: EditFn) -> Iterator[None]:
        """Replace the activation at each point by `fn(act)` (`act` is `(batch, pos, d)`; None keeps it)."""
        with self._scope():
            for name in self.resolve(point):
                self._hook(name, fn)
            yield

    @contextmanager
    def patch(self, point: str | Sequence[str], value: torch.Tensor, positions: Positions = None) -> Iterator[None]:
        """Overwrite the activation at `point` (at `positions`) with `value`, broadcast to its shape."""
        with self.edit(point, _patcher(value, positions)):
            yield

    @contextmanager
    def ablate(
        self,
        point: str | Sequence[str],
        mode: str = "zero",
        value: torch.Tensor | None = None,
        direction: torch.Tensor | None = None,
        positions: Positions = None,
    ) -> Iterator[None]:
        """Ablate the activation: `zero`, `mean` (replace by `value`, e.g. a dataset mean `(d,)`),
        or `direction` (project out the unit vector along `direction` `(d,)`)."""
        if mode == "zero":
            fn = _patcher(torch.zeros(()), positions)
        elif mode == "mean":
            if value is None:
                raise InterpError("mean ablation needs value=<mean activation (d,)>")
            fn = _patcher(value, positions)
        elif mode == "direction":
            if direction is None:
                raise InterpError("directional ablation needs direction=<tensor (d,)>")
            fn = _projector(direction / direction.norm(), positions)
        else:
            raise InterpError(f"unknown ablation mode {mode!r}: use zero, mean or direction")
        with self.edit(point, fn):
            yield

    @contextmanager
    def splice(self, point: str, module: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Replace the activation at `point` by `module(act)` (e.g. an SAE's reconstruction).

        `module` takes `(n, d)` and returns `(n, d)`; the activation is flattened over batch
        and position around the call.
        """
        def fn(act: torch.Tensor) -> torch.Tensor:
            flat = act.reshape(-1, act.shape[-1])
            out = module(flat)
            if out.shape != flat.shape:
                raise InterpError(f"splice at {point}: the module returned {tuple(out.shape)} for input {tuple(flat.shape)}; it must map (n, d) to (n, d)")
            return out.reshape(act.shape).to(act.dtype)

        with self.edit(point, fn):
            yield

    @contextmanager
    def steer(
        self,
        direction: torch.Tensor,
        alpha: float = 1.0,
        point: str | None = None,
        positions: str = "all",
        norm_preserve: bool = False,
    ) -> Iterator[None]:
        """Add `alpha * direction` (`(d,)`) to the activation at `point`.

        `positions`: `all`, `prompt` (positions of the first forward in the block) or
        `generated` (every later position), so it works with and without a KV cache.
        `norm_preserve` rescales each steered vector back to its original norm.
        """
        if point is None:
            raise InterpError("steer needs point=<hook point>, e.g. blocks.6.hook_resid_post")
        if positions not in ("all", "prompt", "generated"):
            raise InterpError(f"unknown positions {positions!r}: use all, prompt or generated")
        name = self.resolve(point)[0]
        vec = direction.detach().reshape(-1)
        if self.d_model is not None and vec.numel() != self.d_model:
            raise InterpError(f"steering vector has size {vec.numel()} but {name} has d_model {self.d_model}")
        state: dict[str, int] = {}

        def fn(act: torch.Tensor) -> torch.Tensor:
            seq = act.shape[1]
            if "prompt_len" not in state:
                state["prompt_len"] = gen_start = seq
            elif seq > state["prompt_len"]:
                gen_start = state["prompt_len"]  # no KV cache: the whole, longer sequence again
            else:
                gen_start = 0  # KV cache: only new tokens
            lo, hi = {"all": (0, seq), "prompt": (0, gen_start), "generated": (gen_start, seq)}[positions]
            if lo >= hi:
                return act
            out = act.clone()
            part = out[:, lo:hi]
            steered = part + alpha * vec.to(act.device, act.dtype)
            if norm_preserve:
                steered = steered * (part.norm(dim=-1, keepdim=True) / steered.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            out[:, lo:hi] = steered
            return out

        with self.edit(name, fn):
            yield


def _patcher(value: torch.Tensor, positions: Positions) -> EditFn:
    def fn(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        out[_index(positions)] = value.to(act.device, act.dtype)
        return out

    return fn


def _index(positions: Positions) -> tuple:
    if positions is None:
        return (Ellipsis,)
    if isinstance(positions, (int, slice)):
        return (slice(None), positions)
    return (slice(None), list(positions))


def _projector(unit: torch.Tensor, positions: Positions) -> EditFn:
    def fn(act: torch.Tensor) -> torch.Tensor:
        u = unit.to(act.device, act.dtype)
        out = act.clone()
        part = out[_index(positions)]
        out[_index(positions)] = part - (part @ u).unsqueeze(-1) * u
        return out

    return fn

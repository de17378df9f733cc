"""Carry out a `TrainPlan` (`saes.plan`): the model, the points, the source, the folders, then `saes.train`.

`run_plan` runs on every rank (under torchrun each rank calls it inside the process group) and returns
a `Trained`: the SAEs and their folders, and the text to evaluate them on. Evaluation is left to the
caller (`interp sae train` evaluates on rank 0 after the group is gone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from interp.errors import InterpError
from saes.plan import ARCHS_WITH_K, TrainPlan
from saes.sources import Text, read_text_source, store_text, stream_source


@dataclass
class Trained:
    """What a run made: `saes` and `folders` by point, the model, the text trained on (`text`; it may be
    unreadable here when a store's text moved) and `train_contexts`, the contexts from its start that
    training may have read (held-out evaluation starts after them)."""

    saes: dict[str, Any]
    folders: dict[str, Path]
    bridge: Any
    text: Text
    train_contexts: int


def run_plan(plan: TrainPlan, world, device: str | None, console: Console) -> Trained:
    """Train the SAEs `plan` asks for (every rank); see the module docstring."""
    from interp import HookManager, load_model
    from interp.manifest import make_manifest
    from interp.models import resolve_dtype
    from interp.store import ActivationStore, build_store, check_store
    from saes.architectures import SAEConfig
    from saes.io import point_width
    from saes.run_folder import point_folder
    from saes.train import split_points, train_sae, train_saes
    from saes.trainer import TrainConfig

    plan.check(world.size)
    have = ActivationStore(plan.store) if plan.store is not None and (plan.store / "manifest.json").exists() else None
    # A store carries its text: with no --data, training reads the store's; an explicit --data must be that text.
    text = store_text(have, plan.data, plan.text_field) if have is not None else read_text_source(plan.data or "builtin", plan.text_field or "text")
    bridge = load_model(plan.model, device=None if plan.device_map else device, dtype=plan.dtype, device_map=plan.device_map)
    hm = HookManager(bridge)
    if have is not None and plan.hooks is None and plan.layer is None:
        names = list(have.points)  # a store says what it holds: with no --hooks/--layer, train on its points
    else:
        names = hm.resolve(plan.hooks or f"{plan.site}:{hm.n_layers // 2 if plan.layer is None else plan.layer}")
    layout = plan.layout
    multi = len(names) > 1 or layout.distribute_points  # one SAE per point, each in out/<point>
    mine = split_points(names, world) if layout.distribute_points else names  # the points this rank trains
    if have is not None:
        check_store(have, bridge.interp_name, mine, text.fingerprint or None, plan.ctx_len, text.text_field)
    tokens = plan.training_tokens(have.n_tokens if have is not None else None)
    # Contexts from the start of the text that training may read: evaluation starts after them.
    held = have.n_tokens if have is not None else 0
    train_contexts = math.ceil(max(tokens, held) / (plan.ctx_len - 1))

    def sae_config(point: str) -> SAEConfig:
        d_in = point_width(hm, point)
        return SAEConfig(d_in=d_in, d_sae=plan.d_sae(d_in), arch=plan.arch, k=plan.k if plan.arch in ARCHS_WITH_K else None,
                         l1_coefficient=plan.l1, l0_coefficient=plan.l0, model_name=bridge.interp_name, hook_name=point,
                         hook_layer=hm.layer_of(point) if hm.layer_of(point) is not None else -1, context_size=plan.ctx_len,
                         dataset=text.source, manifest=make_manifest(bridge.interp_name, {point: d_in}, text.fingerprint or None, plan.ctx_len),
                         train_contexts=train_contexts)

    cfgs = {p: sae_config(p) for p in mine}
    for c in cfgs.values():
        layout.check(world.size, plan.batch_tokens, c.arch, c.d_sae, plan.autocast)  # the width is known now
    tcfg = TrainConfig(n_tokens=tokens, batch_size=plan.batch_tokens, lr=plan.lr, seed=plan.seed, device=device,
                       checkpoint_every=plan.checkpoint_steps, checkpoint_minutes=plan.checkpoint_minutes or None,
                       autocast=plan.autocast, shuffle_tokens=None if plan.store is not None else plan.shuffle_tokens)
    points = mine if multi else names[:1]
    if plan.store is not None:
        if have is not None and plan.tokens is None:
            console.print(f"training on the {tokens:,} tokens in {plan.store}")
        if have is None or have.n_tokens < tokens:
            _check_harvest(plan, have, tokens, text, world, mine)
            console.print(f"harvesting {tokens - held:,} tokens of {text.source} at {', '.join(names if multi else names[:1])} "
                          f"into {plan.store}" + (f" (it holds {held:,})" if have is not None else ""))
            have = build_store(bridge, names if multi else names[0], text.source, tokens, plan.store, ctx_len=plan.ctx_len,
                               text_field=text.text_field, dtype=resolve_dtype(plan.store_dtype))
            console.print(f"activations stored in {plan.store}")
            for loss in (have.precision_loss or {}).values():
                console.print(f"{plan.store_dtype} store: relative RMS error {loss['relative_rms_error']:.2e} against float32, "
                              f"largest absolute error {loss['max_abs_error']:.3g}")
        source: Any = have.batches(points if multi else points[0], batch_size=plan.batch_tokens, shuffle=True, seed=plan.seed)
    else:
        # With --distribute-points every rank harvests its own points: no split of the forwards.
        source = stream_source(bridge, points, text.source, tokens, plan.ctx_len, plan.batch_tokens, plan.seed,
                               tcfg.resolved_device(), text.text_field, progress=world.is_main,
                               split=not layout.distribute_points, dicts=multi, shuffle_tokens=plan.shuffle_tokens)

    for p, c in cfgs.items():
        console.print(f"training a {c.arch} SAE with {c.d_sae} latents on {p} (d_in {c.d_in}) for {tokens:,} tokens")
    if layout.distribute_points and world.parallel:
        console.print(f"--distribute-points: {len(names)} points over {world.size} ranks; rank 0 trains {', '.join(mine)}")
    try:
        if multi:
            saes = train_saes(source, cfgs, tcfg, plan.out, resume=plan.resume, overwrite=plan.overwrite,
                              shard_latents=layout.shard_latents, distribute_points=layout.distribute_points)
        else:
            saes = {names[0]: train_sae(source, cfgs[names[0]], tcfg, plan.out, resume=plan.resume, overwrite=plan.overwrite,
                                        shard_latents=layout.shard_latents)}
    except KeyboardInterrupt:
        console.print(f"interrupted: a checkpoint is in {plan.out}; run the same command with --resume to continue")
        raise
    folders = {p: plan.out / point_folder(p) if multi else plan.out for p in saes}
    for folder in folders.values():
        console.print(f"saved the SAE to {folder} (cfg.json, sae_weights.safetensors; loads in SAELens with SAE.load_from_disk)")
    return Trained(saes, folders, bridge, text, train_contexts)


def _check_harvest(plan: TrainPlan, have, tokens: int, text: Text, world, points: list[str]) -> None:
    """Refuse (one line) to harvest into `plan.store` what was not asked for: extending a store needs
    `--extend`, one process (not torchrun), and the store's text readable here."""
    if have is not None and not plan.extend:
        raise InterpError(f"--store {plan.store} holds {have.n_tokens:,} tokens and --tokens asks for {tokens:,}: pass --extend to "
                          f"harvest the other {tokens - have.n_tokens:,} from {text.source}, or drop --tokens to train on what it holds")
    if world.parallel:
        raise InterpError(f"--store {plan.store} holds fewer than {tokens:,} tokens of {', '.join(points)}: build it in "
                          f"one process first (interp cache, or this command without torchrun), then start the {world.size} ranks")
    if have is not None and not text.readable:
        raise InterpError(f"--store {plan.store} holds {have.n_tokens:,} tokens, fewer than --tokens {tokens:,}, and the "
                          f"text it was made from ({text.source}) cannot be read here to harvest more: ask for --tokens "
                          f"{have.n_tokens} or fewer, or pass --data with that text")

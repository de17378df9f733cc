"""Save and load SAEs in SAELens's on-disk layout, so files move both ways between the projects.

A saved SAE is a folder:

    cfg.json                  SAELens 6.x config: d_in, d_sae, dtype, device, apply_b_dec_to_input,
                              normalize_activations, reshape_activations, architecture (+ k for
                              topk) and metadata (model_name, hook_name, hook_head_index,
                              context_size, dataset_path, prepend_bos, ...); our own full config
                              sits in metadata["interp"]
    sae_weights.safetensors   W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in),
                              b_dec (d_in,), and threshold (d_sae,) for jumprelu

Our saves put one random save id in both files (`metadata.interp_save_id` in cfg.json, the
safetensors header's `interp_save_id`), weights first; loading checks they agree, so a save cut
short between the two writes is an error, never new weights under an old config. Our config also records the
`interp.manifest` schema (model, point, width, data fingerprint, ctx_len) it was trained with, in
`metadata.interp.manifest`; `check_sae` compares it with where the SAE is about to be used.

Architectures map to SAELens's as: relu -> standard, topk -> topk, jumprelu -> jumprelu,
batchtopk -> jumprelu (SAELens's own inference form of a BatchTopK SAE: its scalar threshold
repeated per latent), topafa -> topafa (no SAELens equivalent: loads here only). A SAELens
`batchtopk` file (a training checkpoint) keeps its threshold as the scalar tensor `topk_threshold`;
a BatchTopK file without a threshold is refused (it would run as a plain ReLU SAE).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from interp.activations import point_shapes
from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.hooks import HookManager, layer_of
from interp.manifest import check_manifest, make_manifest
from interp.models import model_name
from saes.architectures import SAE, SAEConfig, sae_from_tensors

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
TRAINING_FILENAME = "training.json"
SAVE_ID = "interp_save_id"
# The SAELens release whose file format this module writes; SAELens reads any config that says
# 6.x in the new layout, and treats configs without a version as the older pre-6 layout.
SAELENS_FORMAT_VERSION = "6.54.12"
TO_SAELENS = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "topafa": "topafa"}
FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk", "topafa": "topafa"}


def _saelens_cfg(cfg: SAEConfig) -> dict[str, Any]:
    """Our config as a SAELens 6.x `cfg.json` dict."""
    arch = TO_SAELENS.get(cfg.arch)
    if arch is None:
        raise InterpError(f"unknown SAE architecture {cfg.arch!r}: use one of {', '.join(TO_SAELENS)}")
    out: dict[str, Any] = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            "model_name": cfg.model_name,
            "model_class_name": "HookedTransformer",
            "hook_name": cfg.hook_name,
            "hook_head_index": None,
            "context_size": cfg.context_size,
            "dataset_path": cfg.dataset,
            "prepend_bos": True,
            "exclude_special_tokens": True,
            "training_architecture": arch if cfg.arch != "batchtopk" else "batchtopk",
            "interp": cfg.to_dict(),
        },
        "architecture": arch,
    }
    if cfg.arch == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    return out


def save_sae(sae: SAE, path: str | os.PathLike) -> None:
    """Write `sae` to the folder `path` (created if needed) as `cfg.json` + `sae_weights.safetensors`.

    Both files are written atomically and carry the same save id, so `load_sae` tells a folder
    whose save was cut short between the two writes (new weights, old cfg.json) from a whole one.
    """
    path = Path(path)
    cfg_dict = _saelens_cfg(sae.cfg)
    tensors = {k: v.detach().to("cpu") for k, v in sae.state_tensors().items()}
    if sae.cfg.arch == "batchtopk":
        # SAELens stores a trained BatchTopK SAE as JumpReLU: one threshold per latent.
        # Inference keeps pre > max(threshold, 0), which is JumpReLU at the clamped threshold.
        thr = tensors["threshold"].reshape(()).clamp_min(0)
        tensors["threshold"] = thr.expand(sae.cfg.d_sae).clone()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InterpError(f"cannot write the SAE to {path} ({exc.strerror}): choose a writable folder") from None
    save_id = uuid.uuid4().hex
    cfg_dict["metadata"][SAVE_ID] = save_id
    write_safetensors(path / WEIGHTS_FILENAME, tensors, metadata={SAVE_ID: save_id})
    write_json(path / CFG_FILENAME, cfg_dict)


def _read_cfg(path: Path) -> dict[str, Any]:
    cfg_path = path / CFG_FILENAME
    if not path.exists():
        raise InterpError(f"SAE folder {path} does not exist: give a folder holding cfg.json and {WEIGHTS_FILENAME}")
    if not cfg_path.exists():
        raise InterpError(f"{path} holds no {CFG_FILENAME}: it is not a saved SAE (train one with `interp sae train`)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InterpError(f"{cfg_path} is not valid JSON ({exc}): the file is corrupt; save the SAE again") from None
    if not isinstance(cfg, dict):
        raise InterpError(f"{cfg_path} does not hold a JSON object: the file is corrupt; save the SAE again")
    return cfg


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights file's tensors and its header metadata."""
    from safetensors import safe_open

    weights = path / WEIGHTS_FILENAME
    if not weights.exists():
        raise InterpError(f"{path} holds no {WEIGHTS_FILENAME}: the SAE was not saved completely; save or train it again")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise InterpError(f"{weights} is corrupt or truncated ({first}): save or train the SAE again") from None


def _require(cfg: dict[str, Any], name: str, cfg_path: Path) -> Any:
    if name not in cfg or cfg[name] is None:
        raise InterpError(f"{cfg_path} lacks the field {name!r}: the config is incomplete; save the SAE again")
    return cfg[name]


def _config_from_saelens(cfg: dict[str, Any], cfg_path: Path) -> SAEConfig:
    """An `SAEConfig` from a SAELens `cfg.json` (6.x, or the older flat layout)."""
    meta = cfg.get("metadata") or {}
    ours = meta.get("interp")
    for name in ("d_in", "d_sae"):
        _require(cfg, name, cfg_path)
    if isinstance(ours, dict):
        try:
            config = SAEConfig.from_dict(ours)
        except (TypeError, ValueError, KeyError) as exc:
            raise InterpError(f"{cfg_path} holds a malformed metadata.interp config ({exc}): save the SAE again") from None
        if (config.d_in, config.d_sae) != (int(cfg["d_in"]), int(cfg["d_sae"])):
            raise InterpError(
                f"{cfg_path} is inconsistent: d_in/d_sae {cfg['d_in']}/{cfg['d_sae']} but metadata.interp says "
                f"{config.d_in}/{config.d_sae}; save the SAE again"
            )
        return config
    arch_name = cfg.get("architecture")
    if arch_name is None and ("activation_fn_str" in cfg or "activation_fn" in cfg or "hook_point" in cfg):
        # SAELens before 6.0: a flat config without an architecture field.
        act = cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu"
        kwargs = cfg.get("activation_fn_kwargs") or {}
        arch_name = "topk" if act == "topk" else "standard"
        if arch_name == "topk" and "k" not in cfg:
            cfg = {**cfg, "k": kwargs.get("k")}
    if arch_name is None:
        _require(cfg, "architecture", cfg_path)
    arch = FROM_SAELENS.get(arch_name)
    if arch is None:
        raise InterpError(
            f"{cfg_path} holds a SAELens {arch_name!r} SAE, which this project cannot run: "
            f"supported are {', '.join(sorted(FROM_SAELENS))}"
        )
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise InterpError(f"{cfg_path} asks for normalize_activations={norm!r}, which this project does not apply: use an SAE with 'none'")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise InterpError(f"{cfg_path} is a hook_z SAE (reshape_activations={cfg['reshape_activations']!r}): only flat activations are supported")
    if cfg.get("rescale_acts_by_decoder_norm") and arch not in ("topk", "batchtopk"):
        raise InterpError(f"{cfg_path} sets rescale_acts_by_decoder_norm on a {arch_name!r} SAE, which this project does not support: fold the decoder norms first")
    k = None
    if arch in ("topk", "batchtopk"):
        k = int(round(float(_require(cfg, "k", cfg_path))))  # SAELens's BatchTopK k is a float mean
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or ""
    layer = layer_of(hook)
    return SAEConfig(
        d_in=int(cfg["d_in"]),
        d_sae=int(cfg["d_sae"]),
        arch=arch,
        k=k,
        model_name=meta.get("model_name") or cfg.get("model_name") or "",
        hook_name=hook,
        hook_layer=layer if layer is not None else -1,
        dtype=str(cfg.get("dtype", "float32")).replace("torch.", ""),
        context_size=int(meta.get("context_size") or cfg.get("context_size") or 128),
        dataset=meta.get("dataset_path") or cfg.get("dataset_path") or "",
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
    )


def load_sae(path: str | os.PathLike, device: str | torch.device | None = None) -> SAE:
    """Load an SAE saved by `save_sae` or by SAELens (`SAE.save_model`) from the folder `path`.

    Reads JSON and safetensors only. A missing or corrupt file, a config without a needed field,
    weights whose shapes disagree with the config, a BatchTopK SAE without its threshold, or a
    cfg.json and weights from different saves raise `InterpError`.
    """
    path = Path(path)
    raw = _read_cfg(path)
    cfg = _config_from_saelens(raw, path / CFG_FILENAME)
    tensors, header = _read_weights(path)
    # Weights without an id were written by other code (an edit, another tool) and are taken as
    # they are; two different ids mean our save wrote new weights and stopped before cfg.json.
    saved_as, weights_id = (raw.get("metadata") or {}).get(SAVE_ID), header.get(SAVE_ID)
    if saved_as is not None and weights_id is not None and weights_id != saved_as:
        raise InterpError(
            f"{path}: {CFG_FILENAME} and {WEIGHTS_FILENAME} come from different saves (a save was cut short): "
            "save or train the SAE again, or resume its training"
        )
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if name not in tensors:
            raise InterpError(f"{path / WEIGHTS_FILENAME} lacks the tensor {name!r} (has {', '.join(sorted(tensors))}): save the SAE again")
    if cfg.arch == "batchtopk" and "threshold" not in tensors and "topk_threshold" in tensors:
        tensors["threshold"] = tensors.pop("topk_threshold")  # SAELens's name for the running threshold
    if raw.get("rescale_acts_by_decoder_norm"):
        tensors = _fold_decoder_norms(tensors)
    try:
        sae = sae_from_tensors(cfg, tensors)
    except InterpError as exc:
        raise InterpError(f"{path}: {exc}") from None
    if device is not None:
        sae = sae.to(device)
    return sae.eval()


def _fold_decoder_norms(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make a TopK SAE that rescales its activations by decoder-row norms into a plain one.

    SAELens then encodes `topk(pre * n)` and decodes `(z / n) @ W_dec` with `n = ||W_dec rows||`;
    scaling encoder columns by `n` and decoder rows by `1 / n` gives the same outputs exactly.
    """
    norms = tensors["W_dec"].norm(dim=-1)
    return {**tensors, "W_enc": tensors["W_enc"] * norms, "b_enc": tensors["b_enc"] * norms,
            "W_dec": tensors["W_dec"] / norms[:, None]}


def point_width(hm: HookManager, point: str) -> int | None:
    """The width `d` of one token's activation at `point`, flattened as harvests and stores flatten it
    (`(heads, d_head)` -> `heads * d_head`); None if unknown (not a TransformerLens model).
    InterpError for a point that is not one row per token (e.g. an attention pattern)."""
    if not hm.is_bridge:
        return None
    return math.prod(point_shapes(hm, point)[hm.resolve(point)[0]])


def sae_manifest(sae: SAE) -> dict[str, Any]:
    """The `interp.manifest` record of what made `sae`, its width taken from the weights.

    An SAE without a recorded manifest (made in memory, or loaded from SAELens) gets one with an
    unknown model, its hook point and `d_in`, and no data: only the point and width are checked.
    """
    cfg = sae.cfg
    point = cfg.hook_name
    have = dict(cfg.manifest) if cfg.manifest else make_manifest(None, {point: cfg.d_in} if point else {})
    if point:
        have["points"], have["widths"] = [point], {point: cfg.d_in}
    return have


def check_sae(sae: SAE, model_or_hm: Any, point: str | None = None, check_model: bool = True) -> str:
    """Check that `sae` fits the hook point `point` of the model; returns the resolved point name.

    `point` defaults to the point the SAE was trained on. Goes through `interp.manifest`: raises
    `InterpError` when the SAE was trained for another point, on another model (when its manifest
    names one and `check_model`), or when its `d_in` differs from the point's width.
    """
    hm = model_or_hm if isinstance(model_or_hm, HookManager) else HookManager(model_or_hm)
    trained = sae.cfg.hook_name
    if point is None:
        if not trained:
            raise InterpError("the SAE's config names no hook point: pass the point to use it at (e.g. --hook blocks.15.hook_resid_post)")
        point = trained
    name = hm.resolve(point)[0]
    if trained and name != trained:
        raise InterpError(
            f"this SAE was trained on {trained}, not {name}: use it at {trained} (or train one for {name})"
        )
    width = point_width(hm, name)
    have = sae_manifest(sae)
    if not trained:
        have["points"], have["widths"] = [name], {name: sae.cfg.d_in}
    want = make_manifest(model_name(hm.model) if check_model else None, {name: width} if width is not None else {})
    want["points"] = [name]
    check_manifest(have, want, "the SAE", "use an SAE trained on this model and point")
    return name


def read_training_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The `training.json` that `train_sae` left in an SAE folder (None when there is none)."""
    path = Path(folder) / TRAINING_FILENAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InterpError(f"{path} is not valid JSON: the file is corrupt; delete it or train the SAE again") from None
    return record if isinstance(record, dict) else None

"""Applying steering vectors: the compatibility check, alpha units, the `apply` block, generation.

Alpha convention. With `alpha_unit="vector"` (the default) the activation at each point gets
`alpha * v` added, where `v` is the stored vector at its stored magnitude (for `mean_diff` the raw
mean difference, so `alpha=1` moves a negative example's average activation onto the positive
average). With `alpha_unit="norm"` it gets `alpha * r * v / |v|`, where `r` is the mean residual
norm at that point (stored at build time, or measured on the shipped contrast texts), so
`alpha=0.5` adds half a typical activation's length whatever the vector's source.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence

import torch

from interp import manifest, readout
from interp.errors import InterpError
from interp.generation import kv_cache_works
from interp.hooks import HookManager
from interp.models import model_device, model_name
from interp.steering.texts import load_builtin_pairs
from interp.steering.vector import SteeringVector

ALPHA_UNITS = ("vector", "norm")
POSITIONS = ("all", "prompt", "generated")


def check_vector(model, vector: SteeringVector) -> None:
    """Raise InterpError unless `vector`'s manifest fits `model`: same model name (unless either is
    unknown), every point a hook point of the model, and width `d_model` at each."""
    hm = HookManager(model)
    hm.resolve(vector.points)
    want = manifest.make_manifest(model_name(model), {p: int(model.cfg.d_model) for p in vector.points})
    manifest.check_manifest(
        vector.manifest, want, f"the steering vector (built for model {vector.model_name!r}, d_model {vector.d_model})",
        "load the model it was built for or rebuild the vector on this one",
    )


def reference_norms(model, points: Sequence[str]) -> dict[str, float]:
    """Mean residual norm at `points` on the shipped contrast texts (for vectors made without data)."""
    pos, neg = load_builtin_pairs()
    return readout.read(model, pos[:16] + neg[:16], points).mean_norms


def scaled_directions(model, vector: SteeringVector, alpha_unit: str = "vector") -> dict[str, torch.Tensor]:
    """What `alpha=1` adds at each point under `alpha_unit` (`{point: (d_model,)}`)."""
    if alpha_unit not in ALPHA_UNITS:
        raise InterpError(f"unknown alpha unit {alpha_unit!r}: use vector or norm")
    if alpha_unit == "vector":
        return dict(vector.directions)
    missing = [p for p in vector.points if p not in vector.resid_norms]
    if missing:  # measured once, then kept on the vector (and saved with it)
        vector.resid_norms.update(reference_norms(model, missing))
    return {p: v / v.norm().clamp_min(1e-12) * vector.resid_norms[p] for p, v in vector.directions.items()}


@contextmanager
def apply(
    model,
    vector: SteeringVector | Sequence[SteeringVector],
    alpha: float | Sequence[float] = 1.0,
    positions: str = "all",
    norm_preserve: bool = False,
    alpha_unit: str = "vector",
) -> Iterator[None]:
    """Add `alpha * vector` at each of its points while the block runs (several vectors: one alpha each).

    `positions`: `all`, `prompt` (the first forward in the block) or `generated` (every later
    position; works with the KV cache). Since prompt/generated count from the block's first
    forward, use one block per generation call (as `generate` does).
    `norm_preserve` rescales each steered activation to its original norm.
    """
    vectors = [vector] if isinstance(vector, SteeringVector) else list(vector)
    alphas = [float(alpha)] * len(vectors) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != len(vectors):
        raise InterpError(f"got {len(vectors)} vectors but {len(alphas)} alphas: give one alpha per vector")
    if positions not in POSITIONS:
        raise InterpError(f"unknown positions {positions!r}: use all, prompt or generated")
    hm = HookManager(model)
    with ExitStack() as stack:
        for vec, a in zip(vectors, alphas):
            check_vector(model, vec)
            for point, direction in scaled_directions(model, vec, alpha_unit).items():
                stack.enter_context(hm.steer(direction, a, point, positions, norm_preserve))
        yield


def _stop_ids(model) -> set[int]:
    """The token ids `model.generate` stops a row at (the bridge's own choice: cfg, else the tokenizer's EOS)."""
    eos = getattr(model.cfg, "eos_token_id", None)
    if eos is None and getattr(model, "tokenizer", None) is not None:
        eos = model.tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def _left_padded(model, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`rows` of token ids, left-padded into `(batch, longest)`, and the 0/1 attention mask (None: no padding)."""
    longest = max(r.numel() for r in rows)
    if all(r.numel() == longest for r in rows):
        return torch.stack(rows), None
    tokens = torch.full((len(rows), longest), readout.pad_id(getattr(model, "tokenizer", None)), dtype=rows[0].dtype)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, longest - r.numel():] = r
        mask[i, longest - r.numel():] = 1
    return tokens, mask


def generate_batch_ids(
    model,
    prompts: Sequence[str | torch.Tensor],
    vector: SteeringVector | Sequence[SteeringVector] | None = None,
    alpha: float | Sequence[float] = 0.0,
    max_new_tokens: int = 30,
    temperature: float = 0.7,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    positions: str = "all",
    norm_preserve: bool = False,
    alpha_unit: str = "vector",
    kv_cache: bool | None = None,
) -> list[torch.Tensor]:
    """The new token ids `(n_new,)` after each prompt, all prompts generated together (`temperature=0` is greedy).

    Prompts of different lengths are left-padded and masked, so each row continues its own prompt
    as it would alone (the same tokens when greedy, up to float rounding); a row ends at its first
    end-of-sequence token (kept, as a single generation keeps it). Sampled rows draw from one
    random stream for the batch: the same prompts with the same seed draw the same numbers, so
    steered and unsteered batches differ only through the steering.

    `kv_cache=None` uses the KV cache where `interp.generation.kv_cache_works` finds it right for
    this model; False never uses it (slower; the same tokens where the cache is right).
    `torch.manual_seed(seed)` runs before generation.
    """
    if max_new_tokens < 1:
        raise InterpError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise InterpError("bad sampling settings: temperature >= 0, 0 < top_p <= 1, top_k >= 1")
    if not prompts:
        return []
    rows = [(p if isinstance(p, torch.Tensor) else model.to_tokens(p, prepend_bos=True)).reshape(-1).cpu() for p in prompts]
    tokens, mask = _left_padded(model, rows)
    device = model_device(model)
    greedy = temperature == 0
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=1.0 if greedy else temperature,
                  top_k=top_k, top_p=top_p, use_past_kv_cache=kv_cache is not False and kv_cache_works(model), verbose=False,
                  return_type="tokens")
    if mask is not None:
        kwargs["attention_mask"] = mask.to(device)
    torch.manual_seed(seed)
    with torch.no_grad(), ExitStack() as stack:
        if vector is not None:
            stack.enter_context(apply(model, vector, alpha, positions, norm_preserve, alpha_unit))
        out = model.generate(tokens.to(device), **kwargs)
    new = out[:, tokens.shape[1]:].cpu()
    stops = _stop_ids(model)
    result = []
    for row in new:
        ends = [i for i, t in enumerate(row.tolist()) if t in stops]
        result.append(row[: ends[0] + 1] if ends else row)
    return result


def generate_ids(model, prompt: str | torch.Tensor, vector: SteeringVector | Sequence[SteeringVector] | None = None,
                 alpha: float | Sequence[float] = 0.0, **kwargs) -> torch.Tensor:
    """The new token ids `(n_new,)` generated after one `prompt` (`temperature=0` is greedy).

    Keyword arguments are those of `generate_batch_ids` (max_new_tokens, temperature, top_k, top_p,
    seed, positions, norm_preserve, alpha_unit, kv_cache). `torch.manual_seed(seed)` runs before
    generation, so steered and unsteered runs with the same seed draw the same random numbers and
    differ only through the steering.
    """
    return generate_batch_ids(model, [prompt], vector, alpha, **kwargs)[0]


def generate(model, prompt: str, vector: SteeringVector | Sequence[SteeringVector] | None = None,
             alpha: float | Sequence[float] = 0.0, **kwargs) -> str:
    """The text generated after `prompt` (prompt excluded), steered by `alpha * vector` if given.

    Keyword arguments are those of `generate_ids` (max_new_tokens, temperature, top_k, top_p,
    seed, positions, norm_preserve, alpha_unit, kv_cache).
    """
    ids = generate_ids(model, prompt, vector, alpha, **kwargs)
    return model.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

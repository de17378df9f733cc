"""The SAE side of `interp steer`: `--method sae-features` for `steer build` and `--sae DIR --feature N`
for `steer generate`, registered with the core (`interp.steering.extensions`) by `register`, the
`interp.steering` entry point of this package.
Each hands the core a plain `SteeringVector` (`saes.steering`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from interp.errors import InterpError

SAE_POOLS = ("mean", "max", "last")


def check_feature_options(sae: Optional[Path], n_features: int, criterion: str, pool: str, **_: Any) -> None:
    """`steer build --method sae-features` options, refused before the model loads."""
    from saes.steering import CRITERIA

    if sae is None:
        raise InterpError("--method sae-features needs --sae DIR (an SAE folder, e.g. from `interp sae train`)")
    if n_features < 1:
        raise InterpError(f"--n-features must be at least 1, got {n_features}")
    if criterion not in CRITERIA:
        raise InterpError(f"unknown --criterion {criterion!r}: use {', '.join(CRITERIA)}")
    if pool not in SAE_POOLS:
        raise InterpError(f"unknown --pool {pool!r} for --method sae-features: use {', '.join(SAE_POOLS)}")


def build_feature_vector(lm: Any, pos: list[str], neg: list[str], points: list[str] | None, sae: Path, n_features: int,
                         criterion: str, pool: str, batch_size: int, **_: Any):
    """A vector from the SAE latents that best separate the sets (LF-Steering), and its one-line summary."""
    from saes.io import load_sae
    from saes.steering import sae_feature_vector

    if points is not None and len(points) != 1:
        raise InterpError(f"--method sae-features reads one hook point (the SAE's); got {points}")
    loaded = load_sae(sae)
    vector = sae_feature_vector(lm, loaded, pos, neg, n_features=n_features, criterion=criterion, pool=pool,
                                point=points[0] if points else None, batch_size=batch_size, progress=True)
    latents = ", ".join(f"{j} ({s:+.2f})" for j, s in zip(vector.params["latents"], vector.params["scores"]))
    return vector, (f"sae_features at {vector.points[0]} from {len(vector.params['latents'])} latents of {sae} by "
                    f"{criterion} (score): {latents}; |v|={vector.norms[vector.points[0]]:.3g}")


def feature_source(lm: Any, sae_dir: Path, feature: Optional[int]):
    """`steer generate --sae DIR --feature N`: latent N's decoder row as a vector."""
    from saes.io import load_sae
    from saes.steering import feature_vector

    if feature is None:
        raise InterpError("--sae needs --feature N (the latent to steer along)")
    sae = load_sae(sae_dir)
    n = int(sae.W_dec.shape[0])
    if not 0 <= feature < n:
        raise InterpError(f"--feature {feature} is out of range: the SAE in {sae_dir} has {n} latents (0 to {n - 1})")
    return feature_vector(sae, feature)


def register() -> None:
    """Plug the SAE methods into `interp steer`."""
    from interp.steering import extensions

    extensions.register_method("sae-features", check_feature_options, build_feature_vector)
    extensions.register_source("sae", feature_source)

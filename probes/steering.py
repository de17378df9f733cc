"""A probe's direction as a steering vector: `interp steer generate --probe DIR --point P`.

`register()` (the `interp.steering` entry point of this package) plugs it into the core's steering
commands (`interp.steering.extensions`); the core receives a plain `SteeringVector`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interp.steering.vector import SteeringVector


def probe_vector(lm: Any, probe_dir: Path, point: str) -> SteeringVector:
    """The probe's direction at `point` `(d_model,)` as a steering vector (method `probe`), after checking
    the probe's manifest (model, point, width) against the loaded model."""
    from interp.hooks import HookManager
    from interp.models import model_name
    from interp.steering import from_direction

    from probes.results import probe_direction

    name = HookManager(lm).resolve(point)[0]
    direction, meta = probe_direction(probe_dir, name, model_name(lm), int(lm.cfg.d_model))
    return from_direction(direction, name, str(meta["manifest"]["model"] or model_name(lm)), method="probe",
                          data_fingerprint=meta["manifest"].get("data_fingerprint"), probe=str(probe_dir))


def register() -> None:
    """Plug probe directions into `interp steer generate --probe`."""
    from interp.steering import extensions

    extensions.register_source("probe", probe_vector)

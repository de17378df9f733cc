"""Linear probes, layer sweeps with control tasks, concept activation vectors and TCAV."""

from probes.cav import CAV, directional_derivatives, target_gradients, train_cav
from probes.linear import LinearProbe, pool_activations
from probes.sweep import SweepResult, harvest, load_directions, probe_activations, probe_layers
from probes.tcav import TCAVResult, tcav

__all__ = [
    "CAV",
    "LinearProbe",
    "SweepResult",
    "TCAVResult",
    "directional_derivatives",
    "harvest",
    "load_directions",
    "pool_activations",
    "probe_activations",
    "probe_layers",
    "target_gradients",
    "tcav",
    "train_cav",
]

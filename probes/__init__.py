"""Linear probes, layer sweeps with control tasks, concept activation vectors and TCAV."""

from probes.cav import CAV, directional_derivatives, target_gradients, train_cav
from probes.control import control_labels, lexical_types, shuffled_labels, type_split
from probes.linear import LinearProbe, pool_activations
from probes.regularization import choose_strength
from probes.results import SweepResult, load_directions, probe_direction
from probes.sweep import harvest, probe_activations, probe_layers
from probes.tcav import TCAVResult, tcav

__all__ = [
    "CAV",
    "LinearProbe",
    "SweepResult",
    "TCAVResult",
    "choose_strength",
    "control_labels",
    "directional_derivatives",
    "harvest",
    "lexical_types",
    "load_directions",
    "pool_activations",
    "probe_activations",
    "probe_direction",
    "probe_layers",
    "shuffled_labels",
    "target_gradients",
    "tcav",
    "train_cav",
    "type_split",
]

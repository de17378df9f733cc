"""Linear probes, layer sweeps with control tasks, concept activation vectors and TCAV; global CAVs
(`probes.gcav`), NMF concepts (`probes.nmf_concepts`) and semantic-entropy probes (`probes.semantic_entropy`).

The functions named like their module (`gcav`, `nmf_concepts`, `semantic_entropy`) are not
re-exported here, so `probes.gcav` etc. stay the modules: `from probes.gcav import gcav`.
"""

from probes.cav import CAV, directional_derivatives, target_gradients, train_cav
from probes.control import control_labels, lexical_types, shuffled_labels, type_split
from probes.gcav import GlobalCAV, gcav_figure, write_gcav
from probes.linear import LinearProbe, pool_activations
from probes.nmf_concepts import NMFConcepts, fve_by_k, write_nmf_concepts
from probes.regularization import choose_strength
from probes.results import SweepResult, load_directions, probe_direction
from probes.semantic_entropy import cluster_answers, load_questions, probe_entropy, semantic_entropy_probe, write_semantic_entropy
from probes.sweep import probe_activations, probe_layers
from probes.tcav import TCAVResult, tcav

__all__ = [
    "CAV",
    "GlobalCAV",
    "LinearProbe",
    "NMFConcepts",
    "SweepResult",
    "TCAVResult",
    "choose_strength",
    "cluster_answers",
    "control_labels",
    "directional_derivatives",
    "fve_by_k",
    "gcav_figure",
    "lexical_types",
    "load_directions",
    "load_questions",
    "pool_activations",
    "probe_activations",
    "probe_direction",
    "probe_entropy",
    "probe_layers",
    "semantic_entropy_probe",
    "shuffled_labels",
    "target_gradients",
    "tcav",
    "train_cav",
    "type_split",
    "write_gcav",
    "write_nmf_concepts",
    "write_semantic_entropy",
]

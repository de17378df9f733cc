"""Linear probes, layer sweeps with control tasks, concept activation vectors and TCAV; global CAVs
(`probes.gcav`), NMF concepts (`probes.nmf_concepts`) and semantic-entropy probes (`probes.semantic_entropy`).

The functions named like their module (`gcav`, `nmf_concepts`, `semantic_entropy`) are not
re-exported here, so `probes.gcav` etc. stay the modules: `from probes.gcav import gcav`.
"""

import importlib
import sys
import types

# Each name and the module it comes from: imported on first use (PEP 562), so that `interp`'s
# command line, which imports `probes.cli`, does not pay for scikit-learn and scipy until a
# command needs them.
_EXPORTS = {
    "CAV": "probes.cav",
    "GlobalCAV": "probes.gcav",
    "LinearProbe": "probes.linear",
    "NMFConcepts": "probes.nmf_concepts",
    "SweepResult": "probes.results",
    "TCAVResult": "probes.tcav",
    "choose_strength": "probes.regularization",
    "cluster_answers": "probes.semantic_entropy",
    "control_labels": "probes.control",
    "directional_derivatives": "probes.cav",
    "fve_by_k": "probes.nmf_concepts",
    "gcav_figure": "probes.gcav",
    "lexical_types": "probes.control",
    "load_directions": "probes.results",
    "load_questions": "probes.semantic_entropy",
    "pool_activations": "probes.linear",
    "probe_activations": "probes.sweep",
    "probe_direction": "probes.results",
    "probe_entropy": "probes.semantic_entropy",
    "probe_layers": "probes.sweep",
    "semantic_entropy_probe": "probes.semantic_entropy",
    "shuffled_labels": "probes.control",
    "target_gradients": "probes.cav",
    "tcav": "probes.tcav",
    "train_cav": "probes.cav",
    "type_split": "probes.control",
    "write_gcav": "probes.gcav",
    "write_nmf_concepts": "probes.nmf_concepts",
    "write_semantic_entropy": "probes.semantic_entropy",
}

__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    """A name exported from a submodule of the same name (`tcav` from `probes.tcav`) stays the
    exported object, as `from probes import tcav` promises, also after that submodule is imported
    (the import system then sets the package attribute to the module)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probes' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

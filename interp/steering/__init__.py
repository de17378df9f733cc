"""Steering vectors: directions added to the residual stream while a model runs.

- `vector`: `SteeringVector`, one direction `(d_model,)` per hook point plus what made it
  (manifest included), saved as safetensors + JSON.
- `build`: from contrast sets (`mean_diff`, `pca_diff`, read through `interp.readout`), a probe
  or CAV normal (`from_direction`) or an SAE decoder row (`from_sae_feature`).
- `steer`: the manifest check (`check_compatible`), alpha units, `apply` (a context manager),
  `generate` / `generate_ids`.
- `texts`, `scorers`, `evaluation`, `report`: shipped texts, scorers that are not the vector,
  `evaluate` / `layer_sweep`, and their figures and HTML report.

Imports run one way: `vector` and `texts` import no other module here; `build` imports
`vector`; `steer` imports `vector` and `texts`; `scorers` imports `vector` and `texts`;
`evaluation` imports `steer` and `scorers`. Everything public is re-exported here.
"""

from interp.steering.build import fingerprint, from_direction, from_sae_feature, mean_diff, pca_diff, text_hash
from interp.steering.evaluation import continuation_loss, evaluate, layer_sweep
from interp.steering.report import eval_figure, layer_sweep_figure, write_eval_report
from interp.steering.scorers import LexiconScorer, ProbeScorer, Scorer, fit_sentiment_probe
from interp.steering.steer import (
    ALPHA_UNITS,
    POSITIONS,
    apply,
    check_compatible,
    generate,
    generate_ids,
    reference_norms,
    scaled_directions,
)
from interp.steering.texts import BUILTIN_PROMPTS, DATA_DIR, load_builtin_pairs, load_labelled_texts, read_texts
from interp.steering.vector import FORMAT, VERSION, SteeringVector

__all__ = [
    "ALPHA_UNITS", "BUILTIN_PROMPTS", "DATA_DIR", "FORMAT", "POSITIONS", "VERSION",
    "LexiconScorer", "ProbeScorer", "Scorer", "SteeringVector",
    "apply", "check_compatible", "continuation_loss", "eval_figure", "evaluate", "fingerprint", "fit_sentiment_probe",
    "from_direction", "from_sae_feature", "generate", "generate_ids", "layer_sweep", "layer_sweep_figure",
    "load_builtin_pairs", "load_labelled_texts", "mean_diff", "pca_diff", "read_texts", "reference_norms",
    "scaled_directions", "text_hash", "write_eval_report",
]

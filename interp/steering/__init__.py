"""Steering vectors: directions added to the residual stream while a model runs.

- `vector`: `SteeringVector`, one direction `(d_model,)` per hook point plus what made it
  (manifest included), saved as safetensors + JSON.
- `build`: from contrast sets (`mean_diff`, `pca_diff`, read through `interp.readout`), a probe
  or CAV normal (`from_direction`) or an SAE decoder row (`from_sae_feature`).
- `steer`: the manifest check (`check_compatible`), alpha units, `apply` (a context manager),
  `generate` / `generate_ids`.
- `texts`, `scorers`, `evaluation`, `report`: shipped texts, scorers that are not the vector,
  `evaluate` / `layer_sweep`, and their figures and HTML report.
- `lineas`: LinEAS, per-dimension affine maps on several layers fitted end to end (`fit_lineas`,
  `LinEASMaps`, `apply_lineas`); `sae_select`: vectors from the SAE latents that separate two sets
  (`sae_feature_vector`); `gguf_export`: llama.cpp control vectors (`export_gguf`, `import_gguf`).

Imports run one way: `vector` and `texts` import no other module here; `build` imports
`vector`; `steer` imports `vector` and `texts`; `scorers` imports `vector` and `texts`;
`evaluation` imports `steer` and `scorers`; `sae_select` and `gguf_export` import `vector`;
`lineas` imports none of them. Everything public is re-exported here.
"""

from interp.steering.build import fingerprint, from_direction, from_sae_feature, mean_diff, pca_diff, text_hash
from interp.steering.evaluation import continuation_loss, evaluate, layer_sweep
from interp.steering.gguf_export import export_gguf, gguf_layers, import_gguf
from interp.steering.lineas import LinEASMaps, apply_lineas, fit_lineas, is_lineas_folder
from interp.steering.report import eval_figure, layer_sweep_figure, write_eval_report
from interp.steering.sae_select import LatentEffects, latent_effects, sae_feature_vector
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
    "LatentEffects", "LexiconScorer", "LinEASMaps", "ProbeScorer", "Scorer", "SteeringVector",
    "apply", "apply_lineas", "check_compatible", "continuation_loss", "eval_figure", "evaluate", "export_gguf", "fingerprint",
    "fit_lineas", "fit_sentiment_probe", "from_direction", "from_sae_feature", "generate", "generate_ids", "gguf_layers",
    "import_gguf", "is_lineas_folder", "latent_effects", "layer_sweep", "layer_sweep_figure",
    "load_builtin_pairs", "load_labelled_texts", "mean_diff", "pca_diff", "read_texts", "reference_norms",
    "sae_feature_vector", "scaled_directions", "text_hash", "write_eval_report",
]

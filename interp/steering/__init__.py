"""Steering vectors: directions added to the residual stream while a model runs.

- `vector`: `SteeringVector`, one direction `(d_model,)` per hook point plus what made it
  (manifest included), saved as safetensors + JSON.
- `build`: from contrast sets (`mean_diff`, `pca_diff`, read through `interp.readout`), or any
  direction (`from_direction`: a probe or CAV normal, an SAE decoder row).
- `steer`: the manifest check (`check_vector`), alpha units, `apply` (a context manager),
  `generate` / `generate_ids` / `generate_batch_ids` (many prompts in one batch).
- `texts`, `scorers`, `evaluation`, `report`: shipped texts, scorers that are not the vector,
  `evaluate` / `layer_sweep`, and their figures and HTML report.
- `lineas`: LinEAS, per-dimension affine maps on several layers fitted end to end (`fit_lineas`,
  `LinEASMaps`, `apply_lineas`); `gguf_export`: llama.cpp control vectors (`export_gguf`, `import_gguf`).
- `alignment`, `transfer`: activations of two models on the same text paired by character offsets
  (`aligned_activations`), maps between their residual streams (`ActivationMap`, `fit_map`) and
  vectors carried through them (`transfer_vector`).
- `extensions`: where other packages plug in vectors from their artifacts (SAE latents in
  `saes.steering`, probe directions in `probes.results`), handing this package a plain direction.

Imports run one way: `vector` and `texts` import no other module here; `build` imports
`vector`; `steer` imports `vector` and `texts`; `scorers` imports `vector` and `texts`;
`evaluation` imports `steer` and `scorers`; `gguf_export` and `transfer` import `vector`; `lineas`,
`alignment` and `extensions` import none of them. Everything public is re-exported here.
"""

from interp.steering.alignment import AlignedActivations, aligned_activations
from interp.steering.build import from_direction, mean_diff, pca_diff, text_hash
from interp.steering.evaluation import continuation_loss, continuation_losses, evaluate, layer_sweep
from interp.steering.gguf_export import export_gguf, gguf_layers, import_gguf
from interp.steering.lineas import LinEASMaps, apply_lineas, fit_lineas, is_lineas_folder
from interp.steering.report import eval_figure, layer_sweep_figure, write_eval_report
from interp.steering.scorers import LexiconScorer, ProbeScorer, Scorer, fit_sentiment_probe
from interp.steering.steer import (
    ALPHA_UNITS,
    POSITIONS,
    apply,
    check_vector,
    generate,
    generate_batch_ids,
    generate_ids,
    reference_norms,
    scaled_directions,
)
from interp.steering.texts import BUILTIN_PROMPTS, DATA_DIR, load_builtin_pairs, load_labelled_texts, read_texts
from interp.steering.transfer import ActivationMap, fit_affine, fit_autoencoder, fit_map, transfer_vector
from interp.steering.vector import FORMAT, VERSION, SteeringVector

__all__ = [
    "ALPHA_UNITS", "BUILTIN_PROMPTS", "DATA_DIR", "FORMAT", "POSITIONS", "VERSION",
    "ActivationMap", "AlignedActivations", "aligned_activations", "fit_affine", "fit_autoencoder", "fit_map", "transfer_vector",
    "LexiconScorer", "LinEASMaps", "ProbeScorer", "Scorer", "SteeringVector",
    "apply", "apply_lineas", "check_vector", "continuation_loss", "continuation_losses", "eval_figure", "evaluate", "export_gguf",
    "fit_lineas", "fit_sentiment_probe", "from_direction", "generate", "generate_batch_ids", "generate_ids", "gguf_layers",
    "import_gguf", "is_lineas_folder", "layer_sweep", "layer_sweep_figure",
    "load_builtin_pairs", "load_labelled_texts", "mean_diff", "pca_diff", "read_texts", "reference_norms",
    "scaled_directions", "text_hash", "write_eval_report",
]

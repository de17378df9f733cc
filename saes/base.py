"""The SAE base class and its config: encode / decode / forward, the training loss frame, AuxK.

Every SAE encodes `pre = (x - b_dec) @ W_enc + b_enc` (the `b_dec` subtraction can be turned
off for SAEs loaded from elsewhere), applies its activation, and decodes `z @ W_dec + b_dec`.
Weights use the SAELens layout: `W_enc (d_in, d_sae)`, `W_dec (d_sae, d_in)`. The activations
themselves live in `saes.architectures` (and `saes.jumprelu`).

Losses use the SAELens scale: squared error summed over `d_in`, averaged over tokens, so
SAELens coefficients (`l1_coefficient`, `l0_coefficient`) carry over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interp.errors import InterpError
from saes.sparse import sparse_decode, topk_encode

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "topafa")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class SAEConfig:
    """What an SAE is: shapes, activation, sparsity hyperparameters and where it was trained.

    Serialised as the SAELens-style `cfg.json` next to the weights.
    """

    d_in: int
    d_sae: int
    arch: str = "topk"
    k: int | None = None
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    afa_coefficient: float = 1 / 32
    apply_b_dec_to_input: bool = True
    model_name: str = ""
    hook_name: str = ""
    hook_layer: int = -1
    dtype: str = "float32"
    context_size: int = 128
    dataset: str = ""
    activation_scale: float = 1.0
    # What made it (`interp.manifest` schema: model, points, widths, data fingerprint, ctx_len);
    # None for an SAE from elsewhere, whose model naming need not be ours.
    manifest: dict | None = None
    # Contexts at the start of the training text that training may have read (evaluation on the
    # same text starts after them); None: unknown.
    train_contexts: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InterpError(f"unknown SAE architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if int(self.d_in) < 1 or int(self.d_sae) < 1:
            raise InterpError(f"SAE sizes must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.arch in ("topk", "batchtopk"):
            if self.k is None:
                raise InterpError(f"a {self.arch} SAE needs k (latents per token); pass e.g. k=32")
            if not 1 <= int(self.k) < int(self.d_sae):
                raise InterpError(f"k={self.k} must satisfy 1 <= k < d_sae={self.d_sae}; choose a smaller k or a wider SAE")
        if self.dtype not in _DTYPES:
            raise InterpError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(_DTYPES)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAEConfig":
        """Build from a dict, ignoring keys this class does not know (e.g. other SAELens fields)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in d.items() if key in known})


class TrainOutput(NamedTuple):
    """One training forward: `loss` to backpropagate plus detached figures for logging."""

    loss: Tensor  # scalar
    mse: Tensor  # scalar, squared error summed over d_in, mean over tokens
    l0: Tensor  # scalar, mean active latents per token
    fired: Tensor  # (d_sae,) bool, latents active on at least one token of the batch
    terms: dict[str, Tensor]  # named extra loss terms (scalars, detached)


class SAE(nn.Module):
    """Base sparse autoencoder. Subclasses define `activate` (and optionally the training loss)."""

    uses_auxk = False
    # Data parallel: rows in the global batch when this rank trains on a slice of it (None: the
    # batch is the whole batch). Only an activation that looks across the batch (BatchTopK) uses it.
    global_rows: int | None = None

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        W_dec = torch.randn(cfg.d_sae, cfg.d_in)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.t().clone())  # stored as (d_sae, d_in) rows, like its sparse gradient
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # --- inference -----------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_in:
            where = f" at {self.cfg.hook_name}" if self.cfg.hook_name else ""
            raise InterpError(
                f"activations have last dimension {x.shape[-1]} but the SAE{where} expects d_in={self.d_in}; "
                "use an SAE trained on this hook point and model"
            )
        return x.reshape(-1, self.d_in).to(self.W_enc.dtype)

    def centred(self, x: Tensor) -> Tensor:
        """x `(n, d_in)` minus `b_dec` when the SAE subtracts it before encoding."""
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations: x `(n, d_in)` -> `(n, d_sae)`."""
        return self.centred(x) @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor, x: Tensor) -> Tensor:
        """Inference activation: pre `(n, d_sae)`, inputs x `(n, d_in)` -> z `(n, d_sae)`."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations (sparse, >= 0): x `(..., d_in)` -> `(..., d_sae)`."""
        flat = self._flat(x)
        return self.activate(self.pre_acts(flat), flat).reshape(*x.shape[:-1], self.d_sae)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction: z `(..., d_sae)` -> `(..., d_in)`."""
        flat = z.reshape(-1, self.d_sae).to(self.W_dec.dtype)
        return (flat @ self.W_dec + self.b_dec).reshape(*z.shape[:-1], self.d_in)

    def forward(self, x: Tensor) -> Tensor:
        """decode(encode(x)) with inference semantics: x `(..., d_in)` -> `(..., d_in)` in x's dtype."""
        return self.decode(self.encode(x)).to(x.dtype)

    # --- weights ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Weights by SAELens key names (detached)."""
        return {name: getattr(self, name).detach() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Copy weights in by SAELens key names (shapes already validated)."""
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(self, name).copy_(tensors[name])

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on `x * scale` work on raw `x`; activations come out in raw units.

        Every activation here is positively homogeneous in (pre-activation, threshold, bound), so
        dividing biases and thresholds by `scale` divides `z` by `scale` and keeps `W_dec` unit-norm.
        """
        self.b_enc /= scale
        self.b_dec /= scale
        self.cfg.activation_scale = float(self.cfg.activation_scale * scale)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    # --- training --------------------------------------------------------------------------
    def train_activate(self, pre: Tensor, x: Tensor) -> Tensor:
        """Training activation (differentiable); defaults to the inference one."""
        return self.activate(pre, x)

    def join_batch(self) -> None:
        """Called instead of the training loss on a rank whose slice of a data-parallel batch is empty,
        so that an activation with collectives (BatchTopK) still meets the other ranks."""

    def penalty(self, z: Tensor, pre: Tensor, x: Tensor) -> dict[str, Tensor]:
        """Architecture-specific loss terms (scalars with gradients)."""
        return {}

    def training_loss(self, x: Tensor, dead: Tensor | None = None, aux_k: int = 512, aux_coefficient: float = 1 / 32) -> TrainOutput:
        """Loss on a batch x `(n, d_in)`; `dead` `(d_sae,)` bool marks latents for the AuxK loss."""
        pre = self.pre_acts(x)
        z = self.train_activate(pre, x)
        x_hat = z @ self.W_dec + self.b_dec
        return self._finish(x, x_hat, (z > 0).sum(-1), (z > 0).any(0), dead, aux_k, aux_coefficient, self.penalty(z, pre, x))

    def _finish(self, x, x_hat, active_per_token, fired, dead, aux_k, aux_coefficient, terms) -> TrainOutput:
        # one fused kernel each way (half the time of difference, square and sum as separate ops)
        mse = F.mse_loss(x_hat, x, reduction="sum") / x.shape[0]
        if self.uses_auxk and dead is not None and bool(dead.any()):
            residual = (x - x_hat).detach()
            terms = {**terms, "auxk": aux_coefficient * self.auxk_loss(x, residual, dead, aux_k)}
        loss = mse + sum(terms.values())
        logged = {name: value.detach() for name, value in terms.items()}
        return TrainOutput(loss, mse.detach(), active_per_token.float().mean(), fired, logged)

    def auxk_loss(self, x: Tensor, residual: Tensor, dead: Tensor, aux_k: int) -> Tensor:
        """AuxK (Gao et al. 2024): the top-`aux_k` dead latents reconstruct the residual.

        x, residual `(n, d_in)`; dead `(d_sae,)` bool. Scaled by `min(n_dead / aux_k, 1)` so
        the term fades as latents revive. Gradients reach only dead latents' weights.
        """
        dead_idx = dead.nonzero().squeeze(1)
        k = min(aux_k, dead_idx.numel())
        values, local = topk_encode(x, self.W_enc[:, dead_idx], self.b_enc[dead_idx], self.b_dec.detach() * self.cfg.apply_b_dec_to_input, k)
        recon = sparse_decode(values, local, self.W_dec[dead_idx])
        scale = min(dead_idx.numel() / aux_k, 1.0)
        return scale * (recon - residual).pow(2).sum(-1).mean()

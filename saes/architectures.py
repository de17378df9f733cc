"""Sparse autoencoder architectures: one `SAE` base with five activation functions.

Every SAE encodes `pre = (x - b_dec) @ W_enc + b_enc` (the `b_dec` subtraction can be turned
off for SAEs loaded from elsewhere), applies its activation, and decodes `z @ W_dec + b_dec`.
Weights use the SAELens layout: `W_enc (d_in, d_sae)`, `W_dec (d_sae, d_in)`.

Architectures (`SAEConfig.arch`):

- `relu`: ReLU, trained with an L1 penalty on activations weighted by decoder-row norms.
- `topk`: keep the `k` largest pre-activations per token, then ReLU (Makhzani & Frey 2013;
  Gao et al. 2024). Training uses the sparse kernels in `saes.sparse`.
- `batchtopk`: in training keep the `n * k` largest ReLU activations over the whole batch of `n`
  tokens, so each token uses a variable number of latents averaging `k`; a running estimate of
  the smallest kept activation (`threshold`) replaces the batch rule at inference.
- `jumprelu`: `z = pre * H(pre - theta)` with a learned per-latent threshold `theta = exp(log_threshold)`;
  the threshold gets gradients from a straight-through estimator with a rectangle kernel of
  width `jumprelu_bandwidth`, and the L0 penalty `sum H(pre - theta)` is trained through the
  same estimator (Rajamanoharan et al. 2024).
- `topafa`: top-AFA (Lee et al. 2025, "Evaluating and Designing Sparse Autoencoders by
  Approximating Quasi-Orthogonality"). No fixed `k`: per token, ReLU activations are sorted by
  their contribution `(z_i * ||W_dec[i]||)^2` and the smallest prefix whose norm reaches the
  approximate feature activation `||x - b_dec||` is kept (all positive latents when even those do
  not reach it). The reference implementation keeps the prefix whose norm is closest to the bound;
  here the prefix reaches it, so the kept norm is never below the bound. Training adds the AFA
  loss `afa_coefficient * mean((||z||_2 - ||x - b_dec||_2)^2)`, which pulls the activation norm
  onto the bound.

Losses use the SAELens scale: squared error summed over `d_in`, averaged over tokens, so
SAELens coefficients (`l1_coefficient`, `l0_coefficient`) carry over. `topk`, `batchtopk` and
`topafa` also take the AuxK loss of Gao et al. for dead latents (see `SAE.training_loss`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
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

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        W_dec = torch.randn(cfg.d_sae, cfg.d_in)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.t().clone())
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
        residual = x - x_hat
        mse = residual.pow(2).sum(-1).mean()
        if self.uses_auxk and dead is not None and bool(dead.any()):
            terms = {**terms, "auxk": aux_coefficient * self.auxk_loss(x, residual.detach(), dead, aux_k)}
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


class ReLUSAE(SAE):
    """ReLU activation with an L1 penalty weighted by decoder-row norms."""

    def activate(self, pre: Tensor, x: Tensor) -> Tensor:
        return torch.relu(pre)

    def penalty(self, z: Tensor, pre: Tensor, x: Tensor) -> dict[str, Tensor]:
        return {"l1": self.cfg.l1_coefficient * (z * self.W_dec.norm(dim=1)).sum(-1).mean()}


class TopKSAE(SAE):
    """Exactly `k` latents per token (fewer if some of the top `k` are <= 0)."""

    uses_auxk = True

    def activate(self, pre: Tensor, x: Tensor) -> Tensor:
        values, indices = torch.topk(pre, self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def training_loss(self, x: Tensor, dead: Tensor | None = None, aux_k: int = 512, aux_coefficient: float = 1 / 32) -> TrainOutput:
        b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else torch.zeros_like(self.b_dec)
        values, indices = topk_encode(x, self.W_enc, self.b_enc, b_dec, self.cfg.k)
        x_hat = sparse_decode(values, indices, self.W_dec) + self.b_dec
        on = values > 0
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[on]] = True
        return self._finish(x, x_hat, on.sum(-1), fired, dead, aux_k, aux_coefficient, {})


class BatchTopKSAE(SAE):
    """`n * k` latents over a batch of `n` tokens in training; a learned threshold at inference."""

    uses_auxk = True
    threshold_momentum = 0.01

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("threshold_updates", torch.tensor(0))

    def activate(self, pre: Tensor, x: Tensor) -> Tensor:
        return pre * (pre > self.threshold.clamp_min(0))

    def train_activate(self, pre: Tensor, x: Tensor) -> Tensor:
        acts = torch.relu(pre).flatten()
        values, indices = torch.topk(acts, self.cfg.k * pre.shape[0], sorted=False)
        z = torch.zeros_like(acts).scatter(0, indices, values).reshape(pre.shape)
        with torch.no_grad():
            positive = values[values > 0]
            if positive.numel():
                # a plain running mean at first, then an exponential one, so early batches fade out
                rate = max(self.threshold_momentum, 1.0 / (int(self.threshold_updates) + 1))
                self.threshold.lerp_(positive.min(), rate)
                self.threshold_updates += 1
        return z

    def state_tensors(self) -> dict[str, Tensor]:
        return {**super().state_tensors(), "threshold": self.threshold.detach()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_state_tensors(tensors)
        if "threshold" in tensors:
            self.threshold.copy_(tensors["threshold"].reshape(-1)[0] if tensors["threshold"].numel() else 0.0)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.threshold /= scale


class _Step(torch.autograd.Function):
    """H(pre - theta); d/dtheta = -(1/eps) K((pre - theta)/eps), rectangle K; no gradient to pre."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        window = ((pre - theta).abs() < ctx.eps / 2).to(grad.dtype)
        return None, -(grad * window).sum(0) / ctx.eps, None


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); d/dpre = H(pre - theta), d/dtheta = -(theta/eps) K((pre - theta)/eps)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        window = ((pre - theta).abs() < ctx.eps / 2).to(grad.dtype)
        return grad * (pre > theta), -(theta / ctx.eps) * (grad * window).sum(0), None


class JumpReLUSAE(SAE):
    """Per-latent learned thresholds, trained with an L0 penalty through straight-through estimators."""

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold)))

    @property
    def threshold(self) -> Tensor:
        """Thresholds `(d_sae,)` (SAELens key `threshold`)."""
        return self.log_threshold.exp()

    def activate(self, pre: Tensor, x: Tensor) -> Tensor:
        return pre * (pre > self.threshold)

    def train_activate(self, pre: Tensor, x: Tensor) -> Tensor:
        return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def penalty(self, z: Tensor, pre: Tensor, x: Tensor) -> dict[str, Tensor]:
        l0 = _Step.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth).sum(-1).mean()
        return {"l0": self.cfg.l0_coefficient * l0}

    def state_tensors(self) -> dict[str, Tensor]:
        return {**super().state_tensors(), "threshold": self.threshold.detach()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_state_tensors(tensors)
        with torch.no_grad():
            self.log_threshold.copy_(tensors["threshold"].clamp_min(1e-30).log())

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.log_threshold -= math.log(scale)


class TopAFASAE(SAE):
    """Per-token number of latents chosen so the kept activations' norm reaches ||x - b_dec||."""

    uses_auxk = True

    def activate(self, pre: Tensor, x: Tensor) -> Tensor:
        acts = torch.relu(pre)
        contrib = (acts * self.W_dec.norm(dim=1)).pow(2)
        ordered, order = torch.sort(contrib, dim=-1, descending=True)
        reached = ordered.cumsum(-1) >= self.afa_bound(x).pow(2)[:, None]
        count = torch.where(reached.any(-1), reached.float().argmax(-1) + 1, (ordered > 0).sum(-1))
        keep_sorted = torch.arange(pre.shape[1], device=pre.device) < count[:, None]
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        return acts * keep

    def afa_bound(self, x: Tensor) -> Tensor:
        """Approximate feature activation per token: `||x - b_dec||`, x `(n, d_in)` -> `(n,)`."""
        return self.centred(x).norm(dim=-1)

    def penalty(self, z: Tensor, pre: Tensor, x: Tensor) -> dict[str, Tensor]:
        gap = z.norm(dim=-1) - self.afa_bound(x).detach()
        return {"afa": self.cfg.afa_coefficient * gap.pow(2).mean()}


_CLASSES = {"relu": ReLUSAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE, "jumprelu": JumpReLUSAE, "topafa": TopAFASAE}


def make_sae(cfg: SAEConfig) -> SAE:
    """A freshly initialised SAE for `cfg.arch`: unit-norm random decoder rows, `W_enc = W_dec.T`, zero biases."""
    return _CLASSES[cfg.arch](cfg).to(cfg.torch_dtype)


def sae_from_tensors(cfg: SAEConfig, tensors: dict[str, Tensor]) -> SAE:
    """An SAE with the given weights (SAELens key names); InterpError on missing keys or wrong shapes."""
    sae = make_sae(cfg)
    expected = {name: tuple(t.shape) for name, t in sae.state_tensors().items()}
    for name, shape in expected.items():
        if name not in tensors:
            if name == "threshold" and cfg.arch == "batchtopk":
                continue
            raise InterpError(f"SAE weights lack {name!r} (needed by a {cfg.arch} SAE); the file is incomplete or for another architecture")
        got = tuple(tensors[name].shape)
        if name == "threshold" and cfg.arch == "batchtopk":
            if tensors[name].numel() > 1 and not bool((tensors[name] == tensors[name].reshape(-1)[0]).all()):
                raise InterpError("a batchtopk SAE needs one scalar threshold but the file holds per-latent values; load it as jumprelu")
            continue
        if got != shape:
            raise InterpError(f"SAE weight {name!r} has shape {list(got)} but cfg (d_in={cfg.d_in}, d_sae={cfg.d_sae}) needs {list(shape)}; the cfg.json and weights do not match")
    sae.load_state_tensors({name: t.to(cfg.torch_dtype) for name, t in tensors.items()})
    return sae

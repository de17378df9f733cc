"""Sparse autoencoder architectures: five activation functions over the one `SAE` base (`saes.base`).

Every SAE encodes `pre = (x - b_dec) @ W_enc + b_enc` (the `b_dec` subtraction can be turned
off for SAEs loaded from elsewhere), applies its activation, and decodes `z @ W_dec + b_dec`.
Weights use the SAELens layout: `W_enc (d_in, d_sae)`, `W_dec (d_sae, d_in)`.

Architectures (`SAEConfig.arch`):

- `relu`: ReLU, trained with an L1 penalty on activations weighted by decoder-row norms.
- `topk`: keep the `k` largest pre-activations per token, then ReLU (Makhzani & Frey 2013;
  Gao et al. 2024). Training uses the sparse kernels in `saes.sparse`.
- `batchtopk`: in training keep the `n * k` largest ReLU activations over the whole batch of `n`
  tokens, so each token uses a variable number of latents averaging `k`; a running estimate of
  the smallest kept activation (`threshold`) replaces the batch rule at inference. Without that
  threshold the inference rule would be a plain ReLU, so loading refuses weights that lack it.
- `jumprelu` (`saes.jumprelu`): `z = pre * H(pre - theta)` with a learned per-latent threshold,
  trained through straight-through estimators (Rajamanoharan et al. 2024).
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

import torch
from torch import Tensor

from interp.errors import InterpError
from saes.base import ARCHS, SAE, SAEConfig, TrainOutput
from saes.jumprelu import JumpReLUSAE
from saes.sparse import sparse_decode, topk_encode

__all__ = ["ARCHS", "SAE", "SAEConfig", "TrainOutput", "ReLUSAE", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE", "TopAFASAE",
           "make_sae", "sae_from_tensors"]


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
        if self.global_rows is not None:
            return self._data_parallel_activate(pre)
        acts = torch.relu(pre).flatten()
        values, indices = torch.topk(acts, self.cfg.k * pre.shape[0], sorted=False)
        z = torch.zeros_like(acts).scatter(0, indices, values).reshape(pre.shape)
        self._update_threshold(values)
        return z

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        positive = kept[kept > 0]
        if positive.numel():
            # a plain running mean at first, then an exponential one, so early batches fade out
            rate = max(self.threshold_momentum, 1.0 / (int(self.threshold_updates) + 1))
            self.threshold.lerp_(positive.min(), rate)
            self.threshold_updates += 1

    def _data_parallel_activate(self, pre: Tensor) -> Tensor:
        """This rank's slice `pre (n_r, d_sae)` of a global batch of `global_rows` rows: keep what the
        global batch's top `k * global_rows` keeps. Each rank's own top candidates are all-gathered
        (the global top lies within them), the smallest kept value `t` is found the same on every
        rank, and each keeps its activations at or above it: the one-process selection (up to exact
        ties at `t`), and the same threshold update everywhere."""
        from interp import distributed

        keep = self.cfg.k * self.global_rows
        acts = torch.relu(pre)
        flat = acts.detach().flatten()
        mine = torch.topk(flat, min(keep, flat.numel()), sorted=False).values
        padded = torch.full((keep,), -1.0, dtype=flat.dtype, device=flat.device)  # below any ReLU value
        padded[: mine.numel()] = mine
        kept = torch.topk(torch.cat(distributed.all_gather(padded.to(distributed.comm_device()))), keep, sorted=False).values
        kept = kept.to(flat.device)
        t = kept.min()
        self._update_threshold(kept)
        return acts * ((acts >= t) & (acts > 0))

    def join_batch(self) -> None:
        """Take part in a data-parallel batch with no rows of this rank's own (see `_data_parallel_activate`)."""
        self._data_parallel_activate(self.b_enc.detach().new_zeros((0, self.cfg.d_sae)))

    def state_tensors(self) -> dict[str, Tensor]:
        return {**super().state_tensors(), "threshold": self.threshold.detach()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_state_tensors(tensors)
        self.threshold.copy_(tensors["threshold"].reshape(-1)[0])

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.threshold /= scale


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
                raise InterpError(
                    "the BatchTopK SAE's weights hold no threshold, without which it would run as a plain ReLU SAE: "
                    "save it with its threshold (ours: save_sae; SAELens: save_model keeps topk_threshold)"
                )
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

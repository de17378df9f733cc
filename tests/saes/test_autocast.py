"""bf16 autocast for the SAE's forward and loss, with float32 master weights (`TrainConfig.autocast`)."""

from __future__ import annotations

import pytest
import torch

from saes.architectures import SAEConfig
from saes.trainer import TrainConfig, Trainer

D_IN, D_SAE, K, BATCH, STEPS = 64, 256, 8, 512, 60


def _data(n: int, seed: int) -> torch.Tensor:
    """Sparse combinations of 128 fixed directions plus noise: `(n, D_IN)` (an SAE can learn them)."""
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(128, D_IN, generator=gen)
    gen = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, 128, generator=gen) * (torch.rand(n, 128, generator=gen) < 0.04)
    return codes @ dirs + 0.05 * torch.randn(n, D_IN, generator=gen) + 3.0


def _train(autocast: str | None, arch: str = "topk", device: str = "cpu") -> Trainer:
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, arch=arch, k=K if arch == "topk" else None)
    tcfg = TrainConfig(n_tokens=STEPS * BATCH, batch_size=BATCH, lr=3e-3, device=device, autocast=autocast, seed=0)
    t = Trainer(cfg, tcfg)
    data = _data(STEPS * BATCH, seed=1)
    t.initialise(data[:4096])
    for batch in data.split(BATCH):
        t.train_step(batch)
    return t


def _fvu(t: Trainer, x: torch.Tensor) -> float:
    x = x.to(t.device)
    with torch.no_grad():
        x_hat = t.sae(x * t.scale)
        return ((x * t.scale - x_hat).pow(2).sum(-1).mean() / (x * t.scale - (x * t.scale).mean(0)).pow(2).sum(-1).mean()).item()


def test_bf16_autocast_keeps_fp32_master_weights_and_matches_fp32_quality(device):
    torch.set_num_threads(1)
    half, full = _train("bfloat16", device=device), _train(None, device=device)
    # (a) parameters, their gradients and Adam's moments stay float32.
    for name, p in half.sae.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        state = half.adam_state(p)
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32, name
    # (b) the same quality as float32 on held-out data.
    held_out = _data(4096, seed=2)
    fvu_half, fvu_full = _fvu(half, held_out), _fvu(full, held_out)
    print(f"held-out FVU after {STEPS} steps: bf16 autocast {fvu_half:.4f}, float32 {fvu_full:.4f}")
    assert fvu_full < 0.5  # it learnt something, so the comparison means something
    assert abs(fvu_half - fvu_full) < 0.02
    # The runs differ: autocast changed the arithmetic.
    assert not torch.equal(half.sae.W_enc, full.sae.W_enc)


def test_the_encoder_matmul_runs_in_bf16_under_autocast(monkeypatch):
    from saes import sparse

    t = _train(None)
    sae, x = t.sae, _data(256, seed=3)
    seen = []
    forward = sparse.TopKEncode.forward

    def spy(ctx, x, W_enc, b_enc, b_dec, k):
        seen.append((x.dtype, W_enc.dtype))
        return forward(ctx, x, W_enc, b_enc, b_dec, k)

    monkeypatch.setattr(sparse.TopKEncode, "forward", staticmethod(spy))
    trainer_half = Trainer(sae.cfg, TrainConfig(device="cpu", autocast="bfloat16"))
    with trainer_half.autocast():
        out = sae.training_loss(x)
        values, indices = sparse.topk_encode(x, sae.W_enc, sae.b_enc, sae.b_dec, K)
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 2
    assert values.dtype == torch.float32 and out.loss.dtype == torch.float32 and out.mse.dtype == torch.float32
    # The values are exactly those of a bf16 matmul done by hand, and not the float32 ones.
    b = torch.bfloat16
    pre = torch.addmm(sae.b_enc.to(b), x.to(b) - sae.b_dec.to(b), sae.W_enc.to(b))
    manual = pre.gather(1, indices).relu().float()
    assert torch.equal(values.detach(), manual)
    exact = torch.addmm(sae.b_enc, x - sae.b_dec, sae.W_enc).gather(1, indices).relu()
    assert (values.detach() - exact).abs().max() > 0
    # Dense architectures go through autocast's own matmul (bf16), then add b_enc in float32.
    relu = _train("bfloat16", arch="relu")
    with relu.autocast(), torch.no_grad():
        pre = relu.sae.pre_acts(x)
    W, b_enc, b_dec = (relu.sae.W_enc.detach(), relu.sae.b_enc.detach(), relu.sae.b_dec.detach())
    assert torch.equal(pre, ((x - b_dec).to(b) @ W.to(b)).float() + b_enc)
    assert (pre - ((x - b_dec) @ W + b_enc)).abs().max() > 0
    assert all(p.dtype == torch.float32 for p in relu.sae.parameters())


def test_unknown_autocast_dtype_is_refused():
    from interp.errors import InterpError

    with pytest.raises(InterpError, match="autocast 'float8' is not supported: use bfloat16 or float16"):
        Trainer(SAEConfig(d_in=4, d_sae=8, arch="topk", k=2), TrainConfig(device="cpu", autocast="float8"))


def test_cli_autocast_trains_in_bf16_and_saves_float32(tiny_llama_dir, tmp_path, capsys, device):
    import json

    from safetensors.torch import load_file

    from interp.cli import main

    common = ["sae", "train", "--model", str(tiny_llama_dir), "--layer", "1", "--arch", "topk", "--k", "4", "--expansion", "2",
              "--tokens", "1000", "--batch-tokens", "128", "--ctx-len", "32", "--eval-tokens", "0", "--device", device]
    assert main([*common, "--autocast", "bfloat16", "--out", str(tmp_path / "bf16")]) == 0
    record = json.loads((tmp_path / "bf16" / "training.json").read_text())
    assert record["train_cfg"]["autocast"] == "bfloat16" and record["final"]["fvu"] < 1
    assert all(t.dtype == torch.float32 for t in load_file(str(tmp_path / "bf16" / "sae_weights.safetensors")).values())
    capsys.readouterr()
    assert main([*common, "--autocast", "float8", "--out", str(tmp_path / "bad")]) == 1
    assert capsys.readouterr().err.strip() == ("error: autocast 'float8' is not supported: use bfloat16 or float16 "
                                               "(or none for float32)")
    assert not (tmp_path / "bad").exists()

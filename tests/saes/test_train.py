"""SAE training: recovery of known sparse directions, resume after interruption, normalisation, errors."""

import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from interp.errors import InterpError
from saes.architectures import SAEConfig
from saes.io import load_sae
from saes.train import TrainConfig, Trainer, train_sae, train_saes


def _dictionary(n_features=2000, d=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_features, d, generator=g)
    return D / D.norm(dim=1, keepdim=True)


def _synthetic(D, batch, active=8, seed=1, scale=1.0):
    """A callable source: batches of sums of `active` random dictionary rows with positive weights."""

    def source(start):
        g = torch.Generator().manual_seed(seed)
        skipped = 0
        while True:
            idx = torch.randint(0, D.shape[0], (batch, active), generator=g)
            mag = torch.rand(batch, active, generator=g) + 0.5
            x = scale * F.embedding_bag(idx, D, per_sample_weights=mag, mode="sum")
            if skipped + batch <= start:
                skipped += batch
                continue
            yield x[max(0, start - skipped) :]
            skipped = start

    return source


def _fvu(sae, x):
    return ((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def test_topk_recovers_known_sparse_directions(tmp_path):
    torch.manual_seed(0)
    D = _dictionary()
    cfg = SAEConfig(d_in=256, d_sae=2048, arch="topk", k=8)
    tcfg = TrainConfig(n_tokens=150_000, batch_size=1024, lr=3e-3, warmup_steps=20, checkpoint_every=0, init_tokens=4096, device="cpu")
    sae = train_sae(_synthetic(D, 1024), cfg, tcfg, tmp_path, progress=False)
    max_cos = (D @ sae.W_dec.detach().t()).max(dim=1).values
    assert max_cos.mean().item() >= 0.9
    x = next(iter(_synthetic(D, 2048, seed=7)(0)))
    assert _fvu(sae, x) < 0.1
    assert torch.allclose(load_sae(tmp_path)(x), sae(x), atol=1e-5)


def _small_run(tmp_path, source, n_batches=20, resume=False, checkpoint_every=3, arch="topk"):
    cfg = SAEConfig(d_in=32, d_sae=128, arch=arch, k=4 if arch in ("topk", "batchtopk") else None)
    tcfg = TrainConfig(n_tokens=256 * n_batches, batch_size=256, lr=3e-3, warmup_steps=3, checkpoint_every=checkpoint_every, init_tokens=512, device="cpu")
    return train_sae(source, cfg, tcfg, tmp_path, resume=resume, progress=False)


def _interrupting(source, after_batches, how):
    def wrapped(start):
        for i, batch in enumerate(source(start)):
            if i == after_batches:
                if how == "raise":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    return wrapped


@pytest.mark.parametrize("how", ["raise", "sigint"])
def test_interrupted_then_resumed_run_matches_uninterrupted(tmp_path, how):
    D = _dictionary(200, 32)
    source = _synthetic(D, 256, active=3)
    full = _small_run(tmp_path / "full", source)
    with pytest.raises(KeyboardInterrupt):
        _small_run(tmp_path / "cut", _interrupting(source, 11, how))
    with safe_open(str(tmp_path / "cut" / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    # "raise" stops before batch 11 is trained; SIGINT is honoured after the batch in flight
    assert state["step"] == (11 if how == "raise" else 12)
    assert state["tokens"] == 256 * state["step"]
    resumed = _small_run(tmp_path / "cut", source, resume=True)
    x = next(iter(_synthetic(D, 2048, active=3, seed=5)(0)))
    assert _fvu(resumed, x) == pytest.approx(_fvu(full, x), abs=1e-4)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(resumed, name), getattr(full, name), atol=1e-5), name


def test_resume_from_iterable_skips_consumed_tokens(tmp_path):
    D = _dictionary(200, 32)
    batches = list(_take(_synthetic(D, 100, active=3)(0), 60))  # 100-row batches, re-cut to 256
    full = _small_run(tmp_path / "full", batches)
    with pytest.raises(KeyboardInterrupt):
        _small_run(tmp_path / "cut", _interrupting(lambda start: batches, 30, "raise"))
    resumed = _small_run(tmp_path / "cut", batches, resume=True)
    assert torch.allclose(resumed.W_dec, full.W_dec, atol=1e-5)


def _take(it, n):
    for i, b in enumerate(it):
        if i == n:
            return
        yield b


def test_normalisation_is_folded_into_saved_weights(tmp_path):
    D = _dictionary(200, 32)
    raw = _synthetic(D, 256, active=3, scale=250.0)
    sae = _small_run(tmp_path, raw, n_batches=40, arch="relu")
    x = next(iter(_synthetic(D, 2048, active=3, seed=5, scale=250.0)(0)))
    sample = next(iter(raw(0)))
    assert sae.cfg.activation_scale == pytest.approx(32**0.5 / sample[:512].norm(dim=1).mean().item(), rel=0.05)
    assert _fvu(sae, x) < 0.5  # works on raw activations
    assert _fvu(load_sae(tmp_path), x) == pytest.approx(_fvu(sae, x), abs=1e-5)
    log = json.loads((tmp_path / "training.json").read_text())
    assert log["tokens"] == 256 * 40


def test_train_saes_one_pass_equals_separate_runs(tmp_path):
    D1, D2 = _dictionary(200, 32, seed=1), _dictionary(300, 48, seed=2)
    s1, s2 = _synthetic(D1, 256, active=3), _synthetic(D2, 256, active=3, seed=3)
    p1, p2 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"

    def both(start):
        for a, b in zip(s1(start), s2(start)):
            yield {p1: a, p2: b}

    cfgs = {
        p1: SAEConfig(d_in=32, d_sae=128, arch="topk", k=4, hook_name=p1),
        p2: SAEConfig(d_in=48, d_sae=128, arch="batchtopk", k=4, hook_name=p2),
    }
    tcfg = TrainConfig(n_tokens=256 * 20, batch_size=256, lr=3e-3, warmup_steps=2, checkpoint_every=15, init_tokens=512, device="cpu")
    together = train_saes(both, cfgs, tcfg, tmp_path / "multi", progress=False)
    alone = train_sae(s2, cfgs[p2], tcfg, tmp_path / "single", progress=False)
    x2 = next(iter(_synthetic(D2, 1024, active=3, seed=9)(0)))
    assert torch.allclose(together[p2](x2), alone(x2), atol=1e-5)
    assert _fvu(together[p2], x2) < 0.9
    loaded = load_sae(tmp_path / "multi" / p2)
    assert torch.allclose(loaded(x2), together[p2](x2), atol=1e-5)
    assert load_sae(tmp_path / "multi" / p1).cfg.hook_name == p1


def test_active_subspace_initialisation_puts_decoder_rows_in_data_span():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 64)).Q[:, :6]  # data lives in a 6-dim subspace
    sample = torch.randn(4096, 6) * torch.tensor([5.0, 4, 3, 2, 1, 1]) @ basis.t() + 3.0
    trainer = Trainer(SAEConfig(d_in=64, d_sae=256, arch="topk", k=8), TrainConfig(init_active_subspace=True, active_subspace_variance=0.99, device="cpu"))
    trainer.initialise(sample)
    W = trainer.sae.W_dec.detach()
    outside = W - (W @ basis) @ basis.t()
    assert outside.norm(dim=1).max().item() < 1e-4
    assert torch.allclose(W.norm(dim=1), torch.ones(256), atol=1e-5)
    assert torch.allclose(trainer.sae.b_dec, (sample * trainer.scale).mean(0), atol=1e-4)


def test_lr_schedule_warms_up_and_decays_to_zero():
    trainer = Trainer(SAEConfig(d_in=8, d_sae=32, arch="relu"), TrainConfig(n_tokens=1000 * 10, batch_size=10, lr=1.0, warmup_steps=100, device="cpu"))
    assert trainer.lr_at(0) == pytest.approx(0.01)
    assert trainer.lr_at(99) == pytest.approx(1.0)
    assert trainer.lr_at(799) == pytest.approx(1.0)
    assert trainer.lr_at(900) == pytest.approx(0.5)
    assert trainer.lr_at(999) == pytest.approx(0.005)


def test_dead_latents_are_counted():
    torch.manual_seed(0)
    D = _dictionary(100, 16)
    source = _synthetic(D, 256, active=2)(0)
    trainer = Trainer(SAEConfig(d_in=16, d_sae=64, arch="topk", k=2), TrainConfig(n_tokens=256 * 200, batch_size=256, lr=3e-3, warmup_steps=1, dead_after_tokens=512, device="cpu"))
    trainer.initialise(next(source))
    with torch.no_grad():
        trainer.sae.b_enc[:16] = -100.0  # these latents cannot win the top-k
    for _ in range(11):
        trainer.train_step(next(source))
    assert (trainer.since_fired[:16] == 256 * 11).all()
    alive = trainer.since_fired < 512
    assert trainer.stats["dead"] == pytest.approx(1 - alive.float().mean().item(), abs=2 / 64)
    assert trainer.stats["dead"] >= 16 / 64
    assert trainer.stats["l0"] == pytest.approx(2.0)


def test_errors(tmp_path):
    cfg = SAEConfig(d_in=32, d_sae=64, arch="topk", k=4)
    with pytest.raises(InterpError, match="n_tokens=0"):
        train_sae([torch.randn(8, 32)], cfg, TrainConfig(n_tokens=0, device="cpu"), tmp_path, progress=False)
    with pytest.raises(InterpError, match="yielded no activations"):
        train_sae([], cfg, TrainConfig(n_tokens=100, device="cpu"), tmp_path, progress=False)
    with pytest.raises(InterpError, match=r"shape \[8, 31\] but the SAE expects \(batch, 32\)"):
        train_sae([torch.randn(8, 31)], cfg, TrainConfig(n_tokens=100, device="cpu"), tmp_path, progress=False)
    with pytest.raises(InterpError, match="use train_saes"):
        train_sae([{"a": torch.randn(8, 32)}], cfg, TrainConfig(n_tokens=100, device="cpu"), tmp_path, progress=False)

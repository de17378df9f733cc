"""SAE training: recovery of known sparse directions, resume after interruption, normalisation, errors."""

import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from interp.errors import InterpError
from saes.architectures import SAE, SAEConfig
from saes.evaluate import activation_metrics, add_training_dead
from saes.io import load_sae, read_training_record
from saes.train import TrainConfig, Trainer, default_lr, save_run, train_sae, train_saes


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


def _small_run(tmp_path, source, n_batches=20, resume=False, checkpoint_every=3, arch="topk", device="cpu"):
    cfg = SAEConfig(d_in=32, d_sae=128, arch=arch, k=4 if arch in ("topk", "batchtopk") else None)
    tcfg = TrainConfig(n_tokens=256 * n_batches, batch_size=256, lr=3e-3, warmup_steps=3, checkpoint_every=checkpoint_every, init_tokens=512, device=device)
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
    # Both arrive while the trainer waits for batch 11 (between steps): it stops there at once.
    assert state["step"] == 11
    assert state["tokens"] == 256 * state["step"]
    resumed = _small_run(tmp_path / "cut", source, resume=True)
    x = next(iter(_synthetic(D, 2048, active=3, seed=5)(0)))
    assert _fvu(resumed, x) == pytest.approx(_fvu(full, x), abs=1e-4)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(resumed, name), getattr(full, name), atol=1e-5), name


def test_second_ctrl_c_during_a_step_waits_for_the_step(tmp_path, monkeypatch, device):
    """Two SIGINTs half-way through step 8 (after Adam, before the decoder renormalisation):
    the step completes, then the checkpoint is written, and resuming matches an uninterrupted run."""
    D = _dictionary(200, 32)
    source = _synthetic(D, 256, active=3)
    full = _small_run(tmp_path / "full", source, device=device)
    original = SAE.normalize_decoder
    calls = []

    def normalize_then_interrupt(self):
        calls.append(1)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        original(self)

    monkeypatch.setattr(SAE, "normalize_decoder", normalize_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _small_run(tmp_path / "cut", source, device=device)
    monkeypatch.undo()
    with safe_open(str(tmp_path / "cut" / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    assert (state["step"], state["tokens"]) == (8, 8 * 256)
    with safe_open(str(tmp_path / "cut" / "checkpoint.safetensors"), "pt") as f:
        W_dec = f.get_tensor("sae.W_dec")
    assert torch.allclose(W_dec.norm(dim=1), torch.ones(128), atol=1e-5)  # the step's renormalisation happened
    resumed = _small_run(tmp_path / "cut", source, resume=True, device=device)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(resumed, name), getattr(full, name), atol=1e-5), name


def test_checkpoints_by_wall_clock(tmp_path, monkeypatch, device):
    import saes.run_folder
    import saes.train

    clock = iter(range(0, 10**6, 20))  # every reading of the clock is 20 s later
    monkeypatch.setattr(saes.train.time, "monotonic", lambda: next(clock))
    saved = []
    real_save = saes.train.save_checkpoint
    for module in (saes.train, saes.run_folder):  # checkpoints during the run, and the final one
        monkeypatch.setattr(module, "save_checkpoint", lambda t, folder: (saved.append(t.step), real_save(t, folder)))
    D = _dictionary(200, 32)
    cfg = SAEConfig(d_in=32, d_sae=128, arch="topk", k=4)
    tcfg = TrainConfig(n_tokens=256 * 20, batch_size=256, lr=3e-3, checkpoint_every=0, checkpoint_minutes=1.0, init_tokens=512, device=device)
    train_sae(_synthetic(D, 256, active=3), cfg, tcfg, tmp_path, progress=False)
    # One reading per step plus one per save: a save every 3 steps (>= 60 s apart), and the final one.
    assert saved == [3, 6, 9, 12, 15, 18, 20]


SIGTERM_CHILD = r"""
import os, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
from interp.errors import InterpError
from saes.architectures import SAE, SAEConfig
from saes.train import TrainConfig, train_sae

out, marker = Path(sys.argv[1]), Path(sys.argv[2])
g = torch.Generator().manual_seed(0)
D = torch.randn(200, 32, generator=g)
D = D / D.norm(dim=1, keepdim=True)

def source(start):
    g = torch.Generator().manual_seed(1)
    for i in range(10**6):
        idx = torch.randint(0, 200, (256, 3), generator=g)
        mag = torch.rand(256, 3, generator=g) + 0.5
        x = F.embedding_bag(idx, D, per_sample_weights=mag, mode="sum")
        if i == 9:
            marker.write_text("waiting")
            for _ in range(1200):  # wait for data, as a slow harvest would
                time.sleep(0.05)
        yield x

cfg = SAEConfig(d_in=32, d_sae=128, arch="topk", k=4)
tcfg = TrainConfig(n_tokens=256 * 20, batch_size=256, lr=3e-3, warmup_steps=3, checkpoint_every=3, init_tokens=512, device="cpu")
try:
    train_sae(source, cfg, tcfg, out, progress=False)
except InterpError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
"""


def test_sigterm_leaves_a_checkpoint_that_resumes_to_the_same_weights(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(tmp_path / "cut"), str(marker)], cwd=repo,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), child.communicate()[1][-2000:]
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM after step 9 ") and "resume" in lines[0]
    D = _dictionary(200, 32)
    source = _synthetic(D, 256, active=3)
    resumed = _small_run(tmp_path / "cut", source, resume=True)
    full = _small_run(tmp_path / "full", source)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(resumed, name), getattr(full, name), atol=1e-5), name


def test_resume_from_iterable_skips_consumed_tokens(tmp_path, device):
    D = _dictionary(200, 32)
    batches = list(_take(_synthetic(D, 100, active=3)(0), 60))  # 100-row batches, re-cut to 256
    full = _small_run(tmp_path / "full", batches, device=device)
    with pytest.raises(KeyboardInterrupt):
        _small_run(tmp_path / "cut", _interrupting(lambda start: batches, 30, "raise"), device=device)
    resumed = _small_run(tmp_path / "cut", batches, resume=True, device=device)
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


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_fused_adam_steps_like_torch_adam_whatever_the_moments_layout(arch, device):
    """The trainer's Adam (fused kernel, W_enc through its row-major view) equals plain torch Adam on
    the parameters; moments set in another memory layout (as a checkpoint loads them) and gradients
    in another layout (as the data-parallel all-reduce leaves them) change nothing."""
    torch.manual_seed(0)
    mix = torch.randn(32, 32) * torch.logspace(0, -1.5, 32)[:, None]
    data = [torch.randn(256, 32) @ mix + 0.5 for _ in range(12)]
    cfg = SAEConfig(d_in=32, d_sae=256, arch=arch, k=8)
    tcfg = TrainConfig(n_tokens=256 * 12, batch_size=256, lr=1e-3, device=device, dead_after_tokens=512)

    def run(plain: bool, relayout: bool) -> Trainer:
        t = Trainer(cfg, tcfg)
        if plain:
            t.opt = torch.optim.Adam(t.sae.parameters(), lr=t.lr, betas=(0.9, 0.999), foreach=False)
            t.adam_views = {p: p for p in t.sae.parameters()}
        t.initialise(data[0])
        for i, batch in enumerate(data):
            if relayout and i == 6:
                for p in t.sae.parameters():
                    st = t.adam_state(p)
                    t.set_adam_state(p, float(st["step"]), st["exp_avg"].contiguous(), st["exp_avg_sq"].contiguous())
            if relayout and i >= 6:
                original = t.apply_update

                def apply_update(fired, n, original=original):
                    for p in t.sae.parameters():  # row-major gradients, whatever the parameter's layout
                        p.grad = p.grad.contiguous()
                    original(fired, n)

                t.apply_update = apply_update
            t.train_step(batch)
        return t

    plain, fused, relaid = run(True, False), run(False, False), run(False, True)
    assert fused.opt.param_groups[0]["fused"] and not fused.sae.W_enc.is_contiguous()
    for name, p in plain.sae.named_parameters():
        q, r = dict(fused.sae.named_parameters())[name], dict(relaid.sae.named_parameters())[name]
        assert torch.allclose(p, q, atol=1e-5), name
        assert torch.equal(q, r), name


def test_lr_schedule_warms_up_and_decays_to_zero():
    trainer = Trainer(SAEConfig(d_in=8, d_sae=32, arch="relu"), TrainConfig(n_tokens=1000 * 10, batch_size=10, lr=1.0, warmup_steps=100, device="cpu"))
    assert trainer.lr_at(0) == pytest.approx(0.01)
    assert trainer.lr_at(99) == pytest.approx(1.0)
    assert trainer.lr_at(799) == pytest.approx(1.0)
    assert trainer.lr_at(900) == pytest.approx(0.5)
    assert trainer.lr_at(999) == pytest.approx(0.005)


def test_warmup_and_decay_are_fractions_of_the_run():
    # 300k tokens in batches of 4096: a 74-step run warms up over 4 steps and decays over the last 15.
    short = Trainer(SAEConfig(d_in=8, d_sae=32, arch="topk", k=2), TrainConfig(n_tokens=300_000, batch_size=4096, lr=1.0, device="cpu"))
    assert (short.total_steps, short.warmup_steps, short.decay_steps) == (74, 4, 15)
    assert short.lr_at(0) == pytest.approx(0.25)
    assert short.lr_at(3) == pytest.approx(1.0)  # the peak is reached early, not never
    assert short.lr_at(58) == pytest.approx(1.0)
    assert short.lr_at(59) == pytest.approx(1.0) and short.lr_at(60) == pytest.approx(14 / 15)
    assert short.lr_at(73) == pytest.approx(1 / 15)
    assert sum(short.lr_at(s) for s in range(74)) / 74 > 0.85  # most of the run at the peak
    # The peak rate: Gao et al.'s width rule for long runs, raised by sqrt(25k / steps) (at most 10x) for short ones.
    cfg = SAEConfig(d_in=576, d_sae=4608, arch="topk", k=32)
    gao = 2e-4 / (4608 / 2**14) ** 0.5
    assert Trainer(cfg, TrainConfig(n_tokens=300_000, batch_size=4096, device="cpu")).lr == pytest.approx(10 * gao)
    assert default_lr(cfg, 2500) == pytest.approx(10**0.5 * gao) and default_lr(cfg, 10**6) == pytest.approx(gao)
    assert default_lr(cfg) == pytest.approx(gao)
    # Long runs: 5% of the steps, capped at 1,000.
    assert Trainer(short.cfg, TrainConfig(n_tokens=10_000 * 4096, batch_size=4096, device="cpu")).warmup_steps == 500
    assert Trainer(short.cfg, TrainConfig(n_tokens=100_000 * 4096, batch_size=4096, device="cpu")).warmup_steps == 1000


def test_dead_latents_are_counted(device):
    torch.manual_seed(0)
    D = _dictionary(100, 16)
    source = _synthetic(D, 256, active=2)(0)
    trainer = Trainer(SAEConfig(d_in=16, d_sae=64, arch="topk", k=2), TrainConfig(n_tokens=256 * 200, batch_size=256, lr=3e-3, warmup_steps=1, dead_after_tokens=512, device=device))
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


def test_dead_latents_by_training_counters_vs_eval_window(tmp_path):
    """A latent that fires 5 times in 60k training tokens is alive by the trainer's counters but
    looks dead in a 10k-token evaluation window that holds none of its tokens."""
    d_in, d_sae, batch, dead_after = 16, 32, 1000, 20_000
    g = torch.Generator().manual_seed(0)
    X = torch.randn(70_000, d_in, generator=g)
    X[:, 0] = 0.0
    planted = [3_000, 12_000, 27_000, 41_000, 55_000]  # density 5 / 60k = 8.3e-5
    X[planted, 0] = 10.0
    trainer = Trainer(SAEConfig(d_in=d_in, d_sae=d_sae, arch="topk", k=4),
                      TrainConfig(n_tokens=60_000, batch_size=batch, lr=0.0, normalize=False, dead_after_tokens=dead_after, device="cpu"))
    trainer.initialise(X[:4096])
    with torch.no_grad():  # latent 0 fires only on the planted tokens, and then wins the top-k
        trainer.sae.W_enc[:, 0] = 0.0
        trainer.sae.W_enc[0, 0] = 1.0
        trainer.sae.b_enc[0] = -5.0
    batches = [X[i : i + batch] for i in range(0, 60_000, batch)]
    for x in batches:
        trainer.train_step(x)
    sae = save_run(trainer, tmp_path)

    # Independently: the end of the last batch in which each latent fired (lr 0: weights fixed).
    last = torch.zeros(d_sae)
    with torch.no_grad():
        for i, x in enumerate(batches):
            last[(sae.encode(x) > 0).any(0)] = (i + 1) * batch
    dead_by_training = (60_000 - last) >= dead_after
    assert not dead_by_training[0] and 60_000 - last[0] == 4_000
    record = read_training_record(tmp_path)
    assert record["dead_latents"]["window_tokens"] == dead_after
    assert record["dead_latents"]["n_dead"] == int(dead_by_training.sum())
    assert record["dead_latents"]["dead_fraction"] == pytest.approx(dead_by_training.float().mean().item())
    counters = load_file(str(tmp_path / "latent_counters.safetensors"))["tokens_since_fired"]
    assert torch.equal(counters, (60_000 - last).long())

    window = activation_metrics(sae, [X[60_000:]])  # 10k held-out tokens, no planted one among them
    assert window["feature_density"][0] == 0 and window["eval_window_tokens"] == 10_000
    results = add_training_dead(dict(window), record)
    assert results["dead_fraction_eval_window"] > results["dead_fraction_training"]
    assert results["training_window_tokens"] == dead_after


def test_training_from_a_harvest_stream_learns(tiny_model, tmp_path, device):
    """The stream outlasts the initialisation sample, so most batches are harvested while training
    runs: each step must still get gradients, whatever grad mode the caller is in."""
    from interp.activations import harvest

    point = "blocks.1.hook_resid_post"
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n\n".join(f"The cat sat on mat {i}. Paris is in France; snow is cold, number {i * 7}." for i in range(400)))
    stream = (b[point] for b in harvest(tiny_model, point, str(corpus), n_tokens=6000, ctx_len=32, out_batch_size=256,
                                        shuffle_buffer_tokens=31 * 16))
    cfg = SAEConfig(d_in=64, d_sae=256, arch="topk", k=8)
    tcfg = TrainConfig(n_tokens=6000, batch_size=256, lr=3e-3, init_tokens=1024, device=device, checkpoint_minutes=None)
    with torch.no_grad():
        train_sae(stream, cfg, tcfg, tmp_path / "sae", progress=False)
    record = read_training_record(tmp_path / "sae")
    assert (record["tokens"], record["steps"]) == (6000, 24)
    fvu = [h["fvu"] for h in record["history"]]
    assert len(fvu) == 4 and fvu[-1] < 0.6 * fvu[0] and all(b < a for a, b in zip(fvu, fvu[1:]))


def test_errors(tmp_path, device):
    cfg = SAEConfig(d_in=32, d_sae=64, arch="topk", k=4)
    with pytest.raises(InterpError, match="n_tokens=0"):
        train_sae([torch.randn(8, 32)], cfg, TrainConfig(n_tokens=0, device=device), tmp_path, progress=False)
    with pytest.raises(InterpError, match="yielded no activations"):
        train_sae([], cfg, TrainConfig(n_tokens=100, device=device), tmp_path, progress=False)
    with pytest.raises(InterpError, match=r"shape \[8, 31\] but the SAE expects \(batch, 32\)"):
        train_sae([torch.randn(8, 31)], cfg, TrainConfig(n_tokens=100, device=device), tmp_path, progress=False)
    with pytest.raises(InterpError, match="use train_saes"):
        train_sae([{"a": torch.randn(8, 32)}], cfg, TrainConfig(n_tokens=100, device=device), tmp_path, progress=False)
    train_sae([torch.randn(64, 32)], cfg, TrainConfig(n_tokens=64, batch_size=32, device=device), tmp_path / "run", progress=False)
    with pytest.raises(InterpError, match="already holds an SAE run"):
        train_sae([torch.randn(64, 32)], cfg, TrainConfig(n_tokens=64, batch_size=32, device=device), tmp_path / "run", progress=False)
    with pytest.raises(InterpError, match="exclude each other"):
        train_sae([torch.randn(64, 32)], cfg, TrainConfig(n_tokens=64, device=device), tmp_path / "run", resume=True, overwrite=True, progress=False)
    train_sae([torch.randn(64, 32)], cfg, TrainConfig(n_tokens=32, batch_size=32, device=device), tmp_path / "run", overwrite=True, progress=False)
    assert read_training_record(tmp_path / "run")["tokens"] == 32

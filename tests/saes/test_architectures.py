"""SAE architectures: shapes, sparsity rules, the sparse TopK kernels, weight round trips, errors."""

import math

import pytest
import torch

from interp.errors import InterpError
from saes.architectures import ARCHS, SAEConfig, make_sae, sae_from_tensors
import saes.sparse as sparse
from saes.sparse import encode_topk, gather_dot, gather_sum, scatter_sum, select_topk, sparse_decode, topk_encode
from saes.train import TrainConfig, Trainer


def _sae(arch, d_in=32, d_sae=128, k=6, seed=0, **kw):
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(d_in=d_in, d_sae=d_sae, arch=arch, k=k if arch in ("topk", "batchtopk") else None, **kw))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_leading_dims(arch):
    sae = _sae(arch)
    x = torch.randn(3, 5, 32)
    z = sae.encode(x)
    assert z.shape == (3, 5, 128) and bool((z >= 0).all())
    assert sae.decode(z).shape == (3, 5, 32)
    assert torch.allclose(sae(x), sae.decode(sae.encode(x)))
    # flattened and batched inputs give the same activations
    assert torch.allclose(sae.encode(x).reshape(15, 128), sae.encode(x.reshape(15, 32)))


def test_topk_l0_is_exactly_k():
    sae = _sae("topk", k=6)
    z = sae.encode(torch.randn(200, 32) * 5)
    assert ((z > 0).sum(-1) == 6).all()
    # the kept latents are the largest pre-activations
    pre = sae.pre_acts(torch.randn(1, 32))
    z1 = sae.activate(pre, None)
    assert set(z1[0].nonzero().squeeze(1).tolist()) == set(pre[0].topk(6).indices.tolist())


def test_batchtopk_mean_l0_is_k_in_training_and_threshold_learned():
    sae = _sae("batchtopk", k=6)
    x = torch.randn(256, 32) * 3
    out = sae.training_loss(x)
    assert out.l0.item() == pytest.approx(6.0)
    counts = (sae.train_activate(sae.pre_acts(x), x) > 0).sum(-1)
    assert counts.float().std() > 0  # per-token counts vary, the batch mean is k
    # the learned threshold is the smallest selected activation; inference reproduces ~k per token
    relu = torch.relu(sae.pre_acts(x)).flatten()
    assert sae.threshold.item() == pytest.approx(relu.topk(6 * 256).values.min().item(), rel=1e-5)
    assert (sae.encode(x) > 0).sum(-1).float().mean().item() == pytest.approx(6.0, abs=0.05)


def test_topafa_picks_smallest_prefix_reaching_the_norm_bound():
    sae = _sae("topafa", d_sae=128)
    x = torch.randn(64, 32) * 2
    z = sae.encode(x)
    counts = (z > 0).sum(-1)
    assert counts.float().std() > 0
    pre = sae.pre_acts(x)
    for t in range(64):
        bound = (x[t] - sae.b_dec).norm().item()
        acts = torch.relu(pre[t]).sort(descending=True).values
        cum = acts.pow(2).cumsum(0).sqrt()
        reach = (cum >= bound).nonzero()
        want = int(reach[0]) + 1 if len(reach) else int((acts > 0).sum())
        assert counts[t].item() == want
        if len(reach):
            assert z[t].norm().item() >= bound * (1 - 1e-5)
            kept = z[t][z[t] > 0].sort().values
            assert kept[1:].norm().item() < bound  # one fewer latent would fall short


def test_topafa_training_adds_afa_term():
    sae = _sae("topafa")
    x = torch.randn(50, 32)
    out = sae.training_loss(x)
    z = sae.encode(x)
    gap = z.norm(dim=-1) - (x - sae.b_dec).norm(dim=-1)
    assert out.terms["afa"].item() == pytest.approx(sae.cfg.afa_coefficient * gap.pow(2).mean().item(), rel=1e-4)


def test_relu_l1_weighted_by_decoder_norms():
    sae = _sae("relu")
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2, 128)[:, None])
    x = torch.randn(20, 32)
    out = sae.training_loss(x)
    z = torch.relu(sae.pre_acts(x))
    expected = 5.0 * (z * sae.W_dec.norm(dim=1)).sum(-1).mean()
    assert out.terms["l1"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_jumprelu_straight_through_threshold_gradients():
    cfg = SAEConfig(d_in=4, d_sae=3, arch="jumprelu", jumprelu_bandwidth=0.1, jumprelu_init_threshold=0.5)
    sae = make_sae(cfg)
    pre = torch.tensor([[0.52, 0.3, 0.46], [0.9, 0.56, 0.2]])
    assert torch.allclose(sae.threshold, torch.full((3,), 0.5))
    z = sae.train_activate(pre, None)
    assert torch.equal(z, pre * (pre > 0.5))
    z.sum().backward()
    # d sum(z) / d log_theta = theta * (-(theta/eps) * #{|pre - theta| < eps/2}) per latent
    window = ((pre - 0.5).abs() < 0.05).float().sum(0)
    assert torch.allclose(sae.log_threshold.grad, 0.5 * -(0.5 / 0.1) * window)
    sae.log_threshold.grad = None
    l0 = sae.penalty(z.detach(), pre, None)["l0"]
    assert l0.item() == pytest.approx(cfg.l0_coefficient * (pre > 0.5).float().sum(-1).mean().item())
    l0.backward()
    assert torch.allclose(sae.log_threshold.grad, 0.5 * cfg.l0_coefficient * -(1 / 0.1) * window / 2)


def test_sparse_primitives_match_dense():
    torch.manual_seed(0)
    n, k, m, d = 40, 5, 30, 7
    idx = torch.randint(0, m, (n, k))
    w = torch.randn(n, k, dtype=torch.float64)
    table = torch.randn(m, d, dtype=torch.float64)
    rows = torch.randn(n, d, dtype=torch.float64)
    dense = torch.zeros(n, m, dtype=torch.float64)
    dense.scatter_add_(1, idx, w)  # repeated indices add up, as in the sparse ops
    assert torch.allclose(gather_sum(idx, w, table), dense @ table)
    assert torch.allclose(scatter_sum(idx, w, rows, m), dense.t() @ rows)
    assert torch.allclose(gather_dot(idx, table, rows), torch.einsum("nd,nkd->nk", rows, table[idx]))


@pytest.mark.parametrize("m, k", [(4608, 32), (1024, 8), (4096, 64), (1000, 7), (96, 40)])
def test_select_topk_keeps_what_torch_topk_keeps(m, k):
    """Grouped selection (recursing twice at 4608 latents, once at 1024, not at all at 96) keeps the
    same values as torch.topk, the indices point at them, and rows full of ties still get k distinct
    latents holding the top values."""
    torch.manual_seed(m)
    a = torch.randn(300, m)
    a[:10] = torch.randint(0, 3, (10, m)).float()  # heavy ties
    values, indices = select_topk(a, k)
    reference = torch.topk(a, k, dim=-1).values
    assert torch.equal(values.sort(-1).values, reference.sort(-1).values)
    assert torch.equal(torch.gather(a, 1, indices), values)
    assert all(len(set(row.tolist())) == k for row in indices)


def test_blocked_encoder_equals_one_matmul(monkeypatch):
    """The CPU encoder's row blocks (here 7 rows, the last one short) give the top k of the full product."""
    torch.manual_seed(2)
    x, W, b = torch.randn(45, 16), torch.randn(16, 640), torch.randn(640)
    monkeypatch.setattr(sparse, "ENCODE_BLOCK_FLOATS", 7 * 640)
    monkeypatch.setattr(sparse, "ENCODE_MIN_ROWS", 1)
    values, indices = encode_topk(x, W, b, 9)
    reference = torch.topk(torch.addmm(b, x, W), 9, dim=-1).values
    assert torch.allclose(values.sort(-1).values, reference.sort(-1).values, atol=1e-5)
    assert torch.allclose(torch.gather(torch.addmm(b, x, W), 1, indices), values, atol=1e-5)


def test_sparse_backward_equals_dense_autograd():
    torch.manual_seed(1)
    d_in, d_sae, k, n = 24, 200, 7, 64
    W_enc = torch.randn(d_in, d_sae, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(d_sae, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(d_sae, d_in, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(d_in, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, d_in, dtype=torch.float64, requires_grad=True)
    target = torch.randn(n, d_in, dtype=torch.float64)
    params = [x, W_enc, b_enc, W_dec, b_dec]

    values, indices = topk_encode(x, W_enc, b_enc, b_dec, k)
    loss = (sparse_decode(values, indices, W_dec) + b_dec - target).pow(2).sum()
    sparse_grads = torch.autograd.grad(loss, params)

    pre = (x - b_dec) @ W_enc + b_enc
    top = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    dense_loss = (z @ W_dec + b_dec - target).pow(2).sum()
    dense_grads = torch.autograd.grad(dense_loss, params)
    assert torch.allclose(loss, dense_loss)
    for name, a, b in zip(["x", "W_enc", "b_enc", "W_dec", "b_dec"], sparse_grads, dense_grads):
        assert torch.allclose(a, b, atol=1e-10), name


def test_topk_training_loss_gradients_match_dense_sae():
    sae = _sae("topk", d_sae=256, k=8).double()
    x = torch.randn(100, 32, dtype=torch.float64)
    dead = torch.zeros(256, dtype=torch.bool)
    dead[::3] = True
    out = sae.training_loss(x, dead=dead, aux_k=16, aux_coefficient=0.5)
    out.loss.backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    # the same loss written densely
    x_hat = sae.decode(sae.encode(x))
    residual = (x - x_hat).detach()
    pre_dead = ((x - sae.b_dec.detach()) @ sae.W_enc + sae.b_enc)[:, dead]
    top = pre_dead.topk(16, dim=-1)
    z_aux = torch.zeros_like(pre_dead).scatter(1, top.indices, top.values.relu())
    aux = min(dead.sum().item() / 16, 1.0) * (z_aux @ sae.W_dec[dead] - residual).pow(2).sum(-1).mean()
    dense_loss = (x - x_hat).pow(2).sum(-1).mean() + 0.5 * aux
    dense_loss.backward()
    assert out.loss.item() == pytest.approx(dense_loss.item(), rel=1e-10)
    for n, p in sae.named_parameters():
        assert torch.allclose(sparse[n], p.grad, atol=1e-10), n


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_rows_stay_unit_norm_while_training(arch):
    cfg = SAEConfig(d_in=16, d_sae=64, arch=arch, k=4 if arch in ("topk", "batchtopk") else None)
    trainer = Trainer(cfg, TrainConfig(n_tokens=2560, batch_size=256, lr=1e-2, warmup_steps=1, device="cpu"))
    x = torch.randn(256, 16) @ torch.randn(16, 16)
    trainer.initialise(x)
    losses = []
    for _ in range(5):
        trainer.train_step(x)
        losses.append(trainer.sae.training_loss(x * trainer.scale).mse.item())
    norms = trainer.sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones(64), atol=1e-5)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_input_scale_makes_sae_work_on_raw_inputs(arch):
    sae = _sae(arch)
    if arch == "batchtopk":
        sae.training_loss(torch.randn(64, 32) * 4)  # learn a threshold
    x = torch.randn(30, 32)
    scale = 3.7
    expected_z = sae.encode(x * scale) / scale
    expected_out = sae(x * scale) / scale
    sae.fold_input_scale(scale)
    assert torch.allclose(sae.encode(x), expected_z, atol=1e-5)
    assert torch.allclose(sae(x), expected_out, atol=1e-5)
    assert sae.cfg.activation_scale == pytest.approx(scale)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_tensors_round_trip(arch):
    sae = _sae(arch)
    if arch == "batchtopk":
        sae.training_loss(torch.randn(64, 32))
    tensors = sae.state_tensors()
    assert {"W_enc", "b_enc", "W_dec", "b_dec"} <= set(tensors)
    assert tensors["W_enc"].shape == (32, 128) and tensors["W_dec"].shape == (128, 32)
    if arch == "jumprelu":
        assert tensors["threshold"].shape == (128,)
    copy = sae_from_tensors(SAEConfig.from_dict({**sae.cfg.to_dict(), "unknown_key": 1}), tensors)
    x = torch.randn(10, 32)
    assert torch.allclose(copy(x), sae(x))


def test_config_and_shape_errors():
    with pytest.raises(InterpError, match="k=64 must satisfy"):
        SAEConfig(d_in=8, d_sae=64, arch="topk", k=64)
    with pytest.raises(InterpError, match="k=0 must satisfy"):
        SAEConfig(d_in=8, d_sae=64, arch="batchtopk", k=0)
    with pytest.raises(InterpError, match="needs k"):
        SAEConfig(d_in=8, d_sae=64, arch="topk")
    with pytest.raises(InterpError, match="unknown SAE architecture"):
        SAEConfig(d_in=8, d_sae=64, arch="gated")
    sae = make_sae(SAEConfig(d_in=8, d_sae=64, arch="topk", k=4, hook_name="blocks.1.hook_resid_post"))
    with pytest.raises(InterpError, match="last dimension 9 .* blocks.1.hook_resid_post expects d_in=8"):
        sae.encode(torch.randn(2, 9))
    bad = dict(sae.state_tensors())
    bad["W_dec"] = torch.zeros(64, 9)
    with pytest.raises(InterpError, match="'W_dec' has shape"):
        sae_from_tensors(sae.cfg, bad)
    with pytest.raises(InterpError, match="lack 'threshold'"):
        sae_from_tensors(SAEConfig(d_in=8, d_sae=64, arch="jumprelu"), sae.state_tensors())


def test_init_is_tied_and_unit_norm():
    sae = make_sae(SAEConfig(d_in=16, d_sae=48, arch="relu"))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert math.isclose(sae.b_dec.abs().sum().item(), 0.0)

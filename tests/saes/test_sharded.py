"""Latent-sharded TopK SAEs (`saes.sharded`, `saes.sharded_trainer`) against the unsharded SAE, on 2 gloo processes.

Each test launches this file under `torchrun --standalone --nproc-per-node N <file> <scenario>`;
every rank builds the unsharded reference itself (same seed), compares its shard with the
reference's slice, and rank 0 writes the worst differences (all-reduced) to a JSON file that the
test reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from interp.errors import InterpError
from saes.architectures import SAEConfig, make_sae
from saes.sharded import ShardedTopK, _randn_rows
from saes.sharded_trainer import ShardedTrainer, make_mesh
from saes.sparse import topk_encode
from saes.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[2]


def _launch(tmp_path: Path, scenario: str, *args: str, nproc: int = 2) -> dict:
    out = tmp_path / f"{scenario}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(Path(__file__).resolve()), scenario, str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.torchrun
@pytest.mark.parametrize("d_sae,k", [(128, 8), (64, 40)])  # (64, 40): k above a shard's m = 32
def test_forward_and_gradients_match_unsharded(tmp_path, d_sae, k):
    r = _launch(tmp_path, "exact", str(d_sae), str(k))
    print(r)
    assert r["same_indices"]
    for name in ("x_hat", "values", "loss", "auxk", "l0"):  # max abs difference / max(1, max abs value)
        assert r[name] <= 1e-6, (name, r[name])
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):  # max abs difference / max(1, max abs gradient)
        assert r[f"grad_{name}"] <= 1e-6, (name, r[f"grad_{name}"])
    assert r["auxk_ref"] > 0.01  # the AuxK term was on and not negligible
    assert r["b_dec_grad_spread"] == 0.0  # the replicated bias gets the same gradient on every rank
    assert r["roundtrip"] == 0.0  # from_full then gather_full gives the SAE back
    assert r["not_divisible_error"]


@pytest.mark.torchrun
def test_training_matches_unsharded_trainer(tmp_path):
    r = _launch(tmp_path, "train", "1", "2")
    print(r)
    assert r["moved"] > 0.1  # training changed the weights far more than the tolerance
    assert r["weights"] <= 1e-5, r
    assert r["since_fired_equal"] and r["history_equal"] and r["dead_equal"]
    assert r["subspace_init"] <= 1e-6  # the active-subspace initialisation is the unsharded one, sliced
    assert r["auxk_steps"] > 0  # AuxK was active in some steps


@pytest.mark.torchrun
def test_data_parallel_mesh_matches_unsharded_trainer(tmp_path):
    r = _launch(tmp_path, "train", "2", "1")
    print(r)
    assert r["moved"] > 0.1  # training changed the weights far more than the tolerance
    assert r["weights"] <= 1e-5, r
    assert r["since_fired_equal"] and r["dead_equal"] and r["subspace_init"] <= 1e-6


@pytest.mark.torchrun
def test_two_dimensional_mesh_matches_unsharded_trainer(tmp_path):
    r = _launch(tmp_path, "train", "2", "2", nproc=4)
    print(r)
    assert r["moved"] > 0.1  # training changed the weights far more than the tolerance
    assert r["weights"] <= 1e-5, r
    assert r["since_fired_equal"] and r["dead_equal"] and r["subspace_init"] <= 1e-6


@pytest.mark.torchrun
def test_tied_latents_across_ranks_give_the_unsharded_reconstruction(tmp_path):
    """Each latent on rank 1 is a copy of one on rank 0: every candidate ties with another rank's."""
    r = _launch(tmp_path, "ties")
    print(r)
    assert r["x_hat"] <= 1e-6 and r["values"] <= 1e-6 and r["l0"] == 0.0, r


@pytest.mark.parametrize("n_rows,d", [(37, 13), (96, 16), (3, 5), (41, 24)])
def test_shard_init_replays_the_unsharded_draw_in_chunks(n_rows, d):
    """`ShardedTopK.init` draws rank r's rows of `make_sae`'s decoder without the full matrix."""
    torch.manual_seed(7)
    full = torch.randn(n_rows, d)
    for chunk in (16, 80, 1 << 22):
        for start, stop in [(0, n_rows), (0, 1), (n_rows // 3, 2 * n_rows // 3 + 1), (n_rows - 1, n_rows)]:
            torch.manual_seed(7)
            assert torch.equal(_randn_rows(n_rows, d, start, stop, chunk), full[start:stop]), (chunk, start, stop)
    cfg = SAEConfig(d_in=d, d_sae=n_rows, k=2)
    torch.manual_seed(3)
    sae = make_sae(cfg)
    shard = ShardedTopK.init(cfg, seed=3)  # one process: the whole SAE
    assert all(torch.equal(getattr(shard, name), t) for name, t in sae.state_tensors().items())


# --- workers (run under torchrun) -------------------------------------------------------------


def _max_over_ranks(value: float) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference, divided by the reference's max abs value when that is above 1
    (float32 rounding grows with the numbers: a loss of 300 carries errors of ~3e-5)."""
    return (got - ref).abs().max().item() / max(1.0, ref.abs().max().item())


def _exact(d_sae: int, k: int) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    d_in, n, aux_k = 24, 96, 12
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k)
    torch.manual_seed(0)
    sae = make_sae(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.5)
    x = torch.randn(n, d_in) * 2
    # dead latents unevenly spread: many on rank 0, 3 on the last rank (fewer than its aux top-k)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae // world)[: d_sae // 4]] = True
    dead[d_sae - d_sae // world + torch.randperm(d_sae // world)[:3]] = True

    out = sae.training_loss(x, dead=dead, aux_k=aux_k, aux_coefficient=1.0)
    out.loss.backward()
    with torch.no_grad():
        ref_values, ref_idx = topk_encode(x, sae.W_enc, sae.b_enc, sae.b_dec, k)
        ref_x_hat = sae.forward(x)

    shard = ShardedTopK.from_full(sae, None)
    sl = shard.local
    got = shard.training_loss(x, dead=dead[sl], aux_k=aux_k, aux_coefficient=1.0)
    got.loss.backward()
    with torch.no_grad():
        values, idx = shard.encode_sparse(x)
        x_hat = shard(x)

    def positive_sets(v, i):
        return [sorted(i[t][v[t] > 0].tolist()) for t in range(n)]

    def sorted_positive(v):
        return torch.sort(v.clamp_min(0), dim=1).values

    r = {
        "same_indices": positive_sets(values, idx) == positive_sets(ref_values, ref_idx),
        "values": _diff(sorted_positive(values), sorted_positive(ref_values)),
        "x_hat": _diff(x_hat, ref_x_hat),
        "loss": _diff(got.loss, out.loss),
        "auxk": _diff(got.terms["auxk"], out.terms["auxk"]),
        "auxk_ref": out.terms["auxk"].item(),
        "l0": _diff(got.l0, out.l0),
    }
    ref_fired = out.fired[sl]
    assert torch.equal(got.fired, ref_fired)
    full = {"W_enc": sae.W_enc.grad[:, sl], "b_enc": sae.b_enc.grad[sl], "W_dec": sae.W_dec.grad[sl], "b_dec": sae.b_dec.grad}
    for name, ref in full.items():
        r[f"grad_{name}"] = _diff(getattr(shard, name).grad, ref)
        r[f"grad_{name}_abs"] = (getattr(shard, name).grad - ref).abs().max().item()
    b_dec_grads = [torch.empty_like(shard.b_dec.grad) for _ in range(world)]
    dist.all_gather(b_dec_grads, shard.b_dec.grad)
    r["b_dec_grad_spread"] = max((g - b_dec_grads[0]).abs().max().item() for g in b_dec_grads)

    back = shard.gather_full()
    if rank == 0:
        r["roundtrip"] = max((back.state_tensors()[name] - t).abs().max().item() for name, t in sae.state_tensors().items())
    else:
        assert back is None
        r["roundtrip"] = 0.0
    try:
        ShardedTopK(SAEConfig(d_in=d_in, d_sae=world * 16 + 1, k=4))
        r["not_divisible_error"] = False
    except InterpError as e:
        r["not_divisible_error"] = "divisible" in str(e)
    r = {name: (_max_over_ranks(v) if isinstance(v, float) else bool(_max_over_ranks(not v) == 0)) for name, v in r.items()}
    return r


_TRAIN_SHAPES = dict(d_in=16, d_sae=96, k=6, n=63, steps=20)  # n odd: data ranks get 32 and 31 rows


def _ties() -> dict:
    d_in, d_sae, k, n = 16, 64, 6, 64
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    with torch.no_grad():
        half = d_sae // 2
        sae.b_enc[:half].normal_(0, 0.3)
        sae.W_enc[:, half:] = sae.W_enc[:, :half]
        sae.b_enc[half:] = sae.b_enc[:half]
        sae.W_dec[half:] = sae.W_dec[:half]
        x = torch.randn(n, d_in)
        ref_values, _ = topk_encode(x, sae.W_enc, sae.b_enc, sae.b_dec, k)
        ref_x_hat = sae(x)
        shard = ShardedTopK.from_full(sae)
        values, _ = shard.encode_sparse(x)
        x_hat = shard(x)
    sort = lambda v: torch.sort(v, dim=1).values  # noqa: E731
    r = {"x_hat": _diff(x_hat, ref_x_hat), "values": _diff(sort(values), sort(ref_values)),
         "l0": float(((values > 0).sum(1) != (ref_values > 0).sum(1)).sum())}
    return {name: _max_over_ranks(v) for name, v in r.items()}


def _train_setup() -> tuple[SAEConfig, TrainConfig, list[torch.Tensor]]:
    d_in, d_sae, k, n, steps = (_TRAIN_SHAPES[key] for key in ("d_in", "d_sae", "k", "n", "steps"))
    sae_cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k)
    # dead_after one batch: latents die early, so AuxK trains in most steps
    tcfg = TrainConfig(n_tokens=steps * n, batch_size=n, aux_k=8, dead_after_tokens=n, device="cpu", seed=3)
    gen = torch.Generator().manual_seed(1)
    basis = torch.randn(6, d_in, generator=gen)
    data = [torch.randn(n, 6, generator=gen) @ basis + 0.1 * torch.randn(n, d_in, generator=gen) + 1.0 for _ in range(steps)]
    return sae_cfg, tcfg, data


def _train_reference() -> tuple[Trainer, int, Trainer]:
    """The unsharded run, built before the process group exists (`Trainer` goes data-parallel inside one),
    and an unsharded active-subspace initialisation."""
    sae_cfg, tcfg, data = _train_setup()
    ref = Trainer(sae_cfg, tcfg)
    ref.initialise(data[0])
    auxk_steps = 0
    for batch in data:
        auxk_steps += bool((ref.since_fired >= ref.dead_after).any())
        ref.train_step(batch)
    subspace = Trainer(sae_cfg, replace(tcfg, init_active_subspace=True))
    subspace.initialise(data[0])
    return ref, auxk_steps, subspace


def _train(dp: int, tp: int, ref: Trainer, auxk_steps: int, ref_subspace: Trainer) -> dict:
    sae_cfg, tcfg, data = _train_setup()
    mesh = make_mesh(dp, tp, "cpu")
    subspace = ShardedTrainer(sae_cfg, replace(tcfg, init_active_subspace=True), mesh)
    subspace.initialise(data[0])
    subspace_sae = subspace.sae.gather_full()
    ref_dead = ref.dead_latents()
    torch.manual_seed(tcfg.seed)
    moved = (ref.sae.W_dec - make_sae(sae_cfg).W_dec).abs().max().item()  # how far training took the decoder
    ref_sae = ref.final_sae()
    sharded = ShardedTrainer(sae_cfg, tcfg, mesh)
    sharded.initialise(data[0])
    for batch in data:
        sharded.train_step(sharded.local_rows(batch), batch.shape[0])
    dead = sharded.dead_latents()
    counters = sharded.full_since_fired()
    full = sharded.final_sae()
    r = {"auxk_steps": float(auxk_steps), "moved": moved, "weights": 0.0, "since_fired_equal": True, "history_equal": True,
         "dead_equal": (dead["n_dead"], dead["window_tokens"]) == (ref_dead["n_dead"], ref_dead["window_tokens"])}
    r["subspace_init"] = 0.0
    if subspace_sae is not None:
        r["subspace_init"] = max((subspace_sae.state_tensors()[name] - t).abs().max().item()
                                 for name, t in ref_subspace.sae.state_tensors().items())
    if full is not None:
        r["weights"] = max((full.state_tensors()[name] - t).abs().max().item() for name, t in ref_sae.state_tensors().items())
        r["since_fired_equal"] = torch.equal(counters, ref.since_fired)
    if dp == 1:
        keys = ("step", "tokens", "l0", "dead")
        r["history_equal"] = all(
            all(abs(a[key] - b[key]) <= 1e-6 for key in keys) and abs(a["mse"] - b["mse"]) <= 1e-4 * max(1.0, b["mse"])
            for a, b in zip(sharded.history, ref.history, strict=True)
        )
    r = {name: (_max_over_ranks(v) if isinstance(v, float) else bool(_max_over_ranks(not v) == 0)) for name, v in r.items()}
    return r


def _main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    scenario, out, *args = argv
    reference = _train_reference() if scenario == "train" else None
    dist.init_process_group("gloo")
    try:
        if scenario == "exact":
            result = _exact(int(args[0]), int(args[1]))
        elif scenario == "ties":
            result = _ties()
        elif scenario == "train":
            result = _train(int(args[0]), int(args[1]), *reference)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        if dist.get_rank() == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _main(sys.argv[1:])
    # As `interp.cli.run` does for ranks: skip interpreter teardown, where gloo's threads can abort.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

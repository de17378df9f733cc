"""SAE files: our round trip, SAELens interop (both directions), and clear errors on bad files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from interp import HookManager
from interp.errors import InterpError
from saes.architectures import SAEConfig, make_sae
from saes.io import CFG_FILENAME, WEIGHTS_FILENAME, check_sae, load_sae, save_sae

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "topafa")
SAELENS_ARCHS = ("relu", "topk", "batchtopk", "jumprelu")  # top-AFA has no SAELens counterpart
REPO = Path(__file__).resolve().parents[2]
SAELENS_PY = REPO / os.environ.get("SAELENS_VENV", ".venv-saelens") / "bin" / "python"  # `make test-latest` sets it
D_IN, D_SAE = 16, 48


def random_sae(arch: str, d_in: int = D_IN, d_sae: int = D_SAE, hook: str = "blocks.1.hook_resid_post"):
    """An SAE with random weights and biases large enough that every code path is exercised."""
    k = 6 if arch in ("topk", "batchtopk") else None
    sae = make_sae(SAEConfig(d_in=d_in, d_sae=d_sae, arch=arch, k=k, hook_name=hook, model_name="tiny", hook_layer=1))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if arch == "batchtopk":
            sae.threshold.fill_(0.3)
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.rand(d_sae).mul(0.5).add(0.05).log())
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    sae = random_sae(arch)
    save_sae(sae, tmp_path / arch)
    loaded = load_sae(tmp_path / arch)
    x = torch.randn(64, D_IN)
    assert type(loaded) is type(sae)
    assert loaded.cfg.to_dict() == sae.cfg.to_dict()
    z, z2 = sae.encode(x), loaded.encode(x)
    assert torch.equal(z > 0, z2 > 0)
    torch.testing.assert_close(z2, z, rtol=0, atol=1e-6)
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=1e-6)
    assert 0 < (z > 0).sum(-1).float().mean() < D_SAE  # sparse, not empty


def test_file_layout_is_saelens(tmp_path):
    sae = random_sae("topk")
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / CFG_FILENAME).read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 6
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["apply_b_dec_to_input"]) == (D_IN, D_SAE, "float32", True)
    assert cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "tiny"
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    weights = load_file(str(tmp_path / WEIGHTS_FILENAME))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "W_enc": (D_IN, D_SAE), "b_enc": (D_SAE,), "W_dec": (D_SAE, D_IN), "b_dec": (D_IN,)
    }
    # BatchTopK goes out as SAELens's inference form: JumpReLU with the shared threshold per latent.
    save_sae(random_sae("batchtopk"), tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / CFG_FILENAME).read_text())
    thr = load_file(str(tmp_path / "b" / WEIGHTS_FILENAME))["threshold"]
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["interp"]["arch"] == "batchtopk"
    assert thr.shape == (D_SAE,) and torch.all(thr == 0.3)


def test_missing_files_and_fields_raise(tmp_path):
    with pytest.raises(InterpError, match="does not exist"):
        load_sae(tmp_path / "nowhere")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(InterpError, match="no cfg.json"):
        load_sae(tmp_path / "empty")
    save_sae(random_sae("relu"), tmp_path / "s")
    cfg_path = tmp_path / "s" / CFG_FILENAME
    cfg = json.loads(cfg_path.read_text())
    del cfg["d_sae"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(InterpError, match="lacks the field 'd_sae'"):
        load_sae(tmp_path / "s")
    cfg_path.write_text("{not json")
    with pytest.raises(InterpError, match="not valid JSON"):
        load_sae(tmp_path / "s")
    save_sae(random_sae("relu"), tmp_path / "w")
    (tmp_path / "w" / WEIGHTS_FILENAME).unlink()
    with pytest.raises(InterpError, match="holds no sae_weights.safetensors"):
        load_sae(tmp_path / "w")


def test_truncated_and_garbled_weights_raise(tmp_path):
    save_sae(random_sae("topk"), tmp_path)
    weights = tmp_path / WEIGHTS_FILENAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InterpError, match="corrupt or truncated"):
        load_sae(tmp_path)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(InterpError, match="corrupt or truncated"):
        load_sae(tmp_path)


def test_shape_mismatch_raises(tmp_path):
    save_sae(random_sae("relu"), tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_FILENAME))
    tensors["W_dec"] = torch.zeros(D_SAE, D_IN + 1)
    save_file(tensors, str(tmp_path / WEIGHTS_FILENAME))
    with pytest.raises(InterpError, match="W_dec.*shape"):
        load_sae(tmp_path)


def test_check_sae(tiny_model):
    hm = HookManager(tiny_model)
    sae = random_sae("topk", d_in=64, hook="blocks.1.hook_resid_post")
    assert check_sae(sae, tiny_model) == "blocks.1.hook_resid_post"
    assert check_sae(sae, hm, "resid_post:1") == "blocks.1.hook_resid_post"
    with pytest.raises(InterpError, match="trained on blocks.1.hook_resid_post, not blocks.2.hook_resid_post"):
        check_sae(sae, hm, "blocks.2.hook_resid_post")
    narrow = random_sae("topk", d_in=32, hook="blocks.1.hook_resid_post")
    with pytest.raises(InterpError, match=r"the SAE was made with other settings \(width blocks.1.hook_resid_post 32 vs 64\)"):
        check_sae(narrow, hm)


def test_save_cut_short_between_weights_and_cfg_is_detected(tmp_path, monkeypatch):
    old, new = random_sae("topk"), random_sae("topk")
    save_sae(old, tmp_path)
    assert torch.equal(load_sae(tmp_path).W_enc, old.W_enc)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    import saes.io

    monkeypatch.setattr(saes.io, "write_json", crash)  # new weights are written, then the cfg.json write fails
    with pytest.raises(OSError):
        save_sae(new, tmp_path)
    monkeypatch.undo()
    assert torch.equal(load_file(str(tmp_path / WEIGHTS_FILENAME))["W_enc"], new.W_enc.detach())
    with pytest.raises(InterpError, match="come from different saves"):
        load_sae(tmp_path)
    save_sae(new, tmp_path)  # a whole save mends it
    assert torch.equal(load_sae(tmp_path).W_enc, new.W_enc)


def test_manifest_is_saved_and_checked(tiny_model, tmp_path):
    from interp.manifest import make_manifest

    sae = random_sae("topk", d_in=64)
    sae.cfg.manifest = make_manifest("some-other-model", {"blocks.1.hook_resid_post": 64}, "abc123", 32)
    save_sae(sae, tmp_path)
    loaded = load_sae(tmp_path)
    assert json.loads((tmp_path / CFG_FILENAME).read_text())["metadata"]["interp"]["manifest"] == sae.cfg.manifest
    with pytest.raises(InterpError, match=r"model 'some-other-model' vs '.+'"):
        check_sae(loaded, tiny_model)
    assert check_sae(loaded, tiny_model, check_model=False) == "blocks.1.hook_resid_post"
    loaded.cfg.manifest = {**loaded.cfg.manifest, "model": tiny_model.interp_name}
    assert check_sae(loaded, tiny_model) == "blocks.1.hook_resid_post"


# ---------------------------------------------------------------- SAELens interop (separate venv)

SAELENS_SCRIPT = r"""
import json, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE, StandardSAEConfig, TopKSAEConfig, JumpReLUSAEConfig

root = Path(sys.argv[1])
x = load_file(str(root / "x.safetensors"))["x"]
job = json.loads((root / "job.json").read_text())
out = {}
# 1) SAEs saved by interp, loaded by SAELens.
for name in job["ours"]:
    sae = SAE.load_from_disk(str(root / "ours" / name))
    with torch.no_grad():
        out[f"ours.{name}.z"] = sae.encode(x)
        out[f"ours.{name}.y"] = sae(x)
    out[f"ours.{name}.arch"] = torch.tensor([ord(c) for c in sae.cfg.architecture()])
# 2) SAEs made and saved by SAELens with random weights.
torch.manual_seed(1)
d_in, d_sae = x.shape[1], job["d_sae"]
made = {
    "standard": StandardSAEConfig(d_in=d_in, d_sae=d_sae),
    "standard_nocentre": StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False),
    "topk": TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5),
    "topk_rescaled": TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5, rescale_acts_by_decoder_norm=True),
    "jumprelu": JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae),
}
for name, cfg in made.items():
    cfg.metadata.model_name = "tiny"
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    cfg.metadata.context_size = 64
    sae = SAE.from_dict(cfg.to_dict())
    with torch.no_grad():
        for pname, p in sae.named_parameters():
            p.copy_(0.3 * torch.randn_like(p))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(d_sae) * 0.3)
        out[f"theirs.{name}.z"] = sae.encode(x)
        out[f"theirs.{name}.y"] = sae(x)
    sae.save_model(str(root / "theirs" / name))
# 3) A BatchTopK SAE in SAELens's training layout (threshold in the buffer topk_threshold, decoder
#    norms not folded), and SAELens's own inference form of it, whose outputs are the reference.
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
bcfg = BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=5)
bcfg.metadata.hook_name = "blocks.1.hook_resid_post"
bt = BatchTopKTrainingSAE(bcfg)
with torch.no_grad():
    for pname, p in bt.named_parameters():
        p.copy_(0.3 * torch.randn_like(p))
bt.topk_threshold = torch.tensor(0.25, dtype=torch.double)
bt.save_model(str(root / "theirs" / "batchtopk_training"))
bt.save_inference_model(str(root / "theirs_inference" / "batchtopk"))
inference = SAE.load_from_disk(str(root / "theirs_inference" / "batchtopk"))
with torch.no_grad():
    out["theirs.batchtopk_training.z"] = inference.encode(x)
    out["theirs.batchtopk_training.y"] = inference(x)
save_file({k: v.contiguous() for k, v in out.items()}, str(root / "out.safetensors"))
"""


@pytest.fixture(scope="module")
def saelens_run(tmp_path_factory):
    """Run SAELens once on our files and have it write its own; returns (root, outputs, our SAEs)."""
    if not SAELENS_PY.exists():
        pytest.skip("SAELens venv absent: run bash benchmarks/saelens_env.sh")
    root = tmp_path_factory.mktemp("saelens")
    torch.manual_seed(0)
    x = torch.randn(40, D_IN)
    ours = {}
    for arch in SAELENS_ARCHS:
        ours[arch] = random_sae(arch)
        save_sae(ours[arch], root / "ours" / arch)
    save_file({"x": x}, str(root / "x.safetensors"))
    (root / "job.json").write_text(json.dumps({"ours": list(SAELENS_ARCHS), "d_sae": D_SAE}))
    proc = subprocess.run([str(SAELENS_PY), "-c", SAELENS_SCRIPT, str(root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, x, load_file(str(root / "out.safetensors")), ours


@pytest.mark.parametrize("arch", SAELENS_ARCHS)
def test_our_file_loads_in_saelens_with_identical_outputs(saelens_run, arch):
    _, x, out, ours = saelens_run
    sae = ours[arch]
    expected_arch = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}[arch]
    assert "".join(map(chr, out[f"ours.{arch}.arch"].tolist())) == expected_arch
    with torch.no_grad():
        z, y = sae.encode(x), sae(x)
    assert (z > 0).any() and not (z > 0).all()
    torch.testing.assert_close(out[f"ours.{arch}.z"], z, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[f"ours.{arch}.y"], y, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["standard", "standard_nocentre", "topk", "topk_rescaled", "jumprelu"])
def test_saelens_file_loads_here_with_identical_outputs(saelens_run, name):
    root, x, out, _ = saelens_run
    sae = load_sae(root / "theirs" / name)
    assert sae.cfg.arch == {"standard": "relu", "standard_nocentre": "relu", "topk": "topk", "topk_rescaled": "topk", "jumprelu": "jumprelu"}[name]
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.model_name == "tiny"
    assert sae.cfg.apply_b_dec_to_input == (name != "standard_nocentre")
    with torch.no_grad():
        z, y = sae.encode(x), sae(x)
    assert (z > 0).any() and not (z > 0).all()
    torch.testing.assert_close(z, out[f"theirs.{name}.z"], rtol=0, atol=1e-5)
    torch.testing.assert_close(y, out[f"theirs.{name}.y"], rtol=0, atol=1e-5)
    if name.startswith("topk"):
        assert sae.cfg.k == 5


def test_saelens_batchtopk_training_file_loads_with_its_threshold(saelens_run):
    """SAELens keeps a BatchTopK SAE's threshold in the weights as `topk_threshold` (a scalar)."""
    root, x, out, _ = saelens_run
    assert "topk_threshold" in load_file(str(root / "theirs" / "batchtopk_training" / WEIGHTS_FILENAME))
    sae = load_sae(root / "theirs" / "batchtopk_training")
    assert sae.cfg.arch == "batchtopk" and sae.threshold.item() == pytest.approx(0.25)
    with torch.no_grad():
        z = sae.encode(x)
    # Without the threshold this would be a ReLU SAE: many more latents on.
    assert 0 < (z > 0).sum() < (sae.pre_acts(x) > 0).sum()
    torch.testing.assert_close(z, out["theirs.batchtopk_training.z"], rtol=0, atol=1e-5)
    torch.testing.assert_close(sae(x), out["theirs.batchtopk_training.y"], rtol=0, atol=1e-5)


def _batchtopk_file(path: Path, threshold: float | None) -> torch.nn.Module:
    """A BatchTopK SAE in SAELens's training layout (no decoder-norm rescaling), made by hand."""
    sae = random_sae("topk")
    tensors = {k: v.contiguous() for k, v in sae.state_tensors().items()}
    if threshold is not None:
        tensors["topk_threshold"] = torch.tensor(threshold, dtype=torch.float64)
    path.mkdir(parents=True)
    save_file(tensors, str(path / WEIGHTS_FILENAME))
    (path / CFG_FILENAME).write_text(json.dumps({
        "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "reshape_activations": "none", "architecture": "batchtopk", "k": 6.0,
        "rescale_acts_by_decoder_norm": False, "topk_threshold_lr": 0.01,
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_resid_post"},
    }))
    return sae


def test_batchtopk_threshold_is_read_and_its_absence_refused(tmp_path):
    made = _batchtopk_file(tmp_path / "with", threshold=0.3)
    loaded = load_sae(tmp_path / "with")
    x = torch.randn(64, D_IN)
    pre = (x - made.b_dec) @ made.W_enc + made.b_enc
    want = pre * (pre > 0.3)  # the JumpReLU rule at the shared threshold, computed here
    torch.testing.assert_close(loaded.encode(x), want.detach(), rtol=0, atol=1e-6)
    assert (want > 0).sum() < (pre > 0).sum()  # the threshold matters on these inputs
    _batchtopk_file(tmp_path / "without", threshold=None)
    with pytest.raises(InterpError, match="BatchTopK SAE's weights hold no threshold") as info:
        load_sae(tmp_path / "without")
    assert "\n" not in str(info.value)
    # Our own files carry the threshold too; one stripped of it is refused the same way.
    save_sae(random_sae("batchtopk"), tmp_path / "ours")
    tensors = load_file(str(tmp_path / "ours" / WEIGHTS_FILENAME))
    del tensors["threshold"]
    save_file(tensors, str(tmp_path / "ours" / WEIGHTS_FILENAME))
    with pytest.raises(InterpError, match="no threshold"):
        load_sae(tmp_path / "ours")


def test_pre_6_saelens_layout_loads(tmp_path):
    """Older SAELens configs: flat fields, `hook_point`, `activation_fn_str`, no architecture or metadata."""
    sae = random_sae("topk")
    tensors = sae.state_tensors()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / WEIGHTS_FILENAME))
    (tmp_path / CFG_FILENAME).write_text(json.dumps({
        "d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32", "device": "cpu", "model_name": "gpt2-small",
        "hook_point": "blocks.1.hook_resid_post", "hook_point_layer": 1, "context_size": 128,
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 6}, "apply_b_dec_to_input": True,
    }))
    loaded = load_sae(tmp_path)
    assert (loaded.cfg.arch, loaded.cfg.k, loaded.cfg.hook_name, loaded.cfg.hook_layer) == ("topk", 6, "blocks.1.hook_resid_post", 1)
    x = torch.randn(16, D_IN)
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=1e-6)


def test_unsupported_saelens_architecture_raises(tmp_path):
    save_sae(random_sae("relu"), tmp_path)
    cfg = json.loads((tmp_path / CFG_FILENAME).read_text())
    del cfg["metadata"]["interp"]
    cfg["architecture"] = "gated"
    (tmp_path / CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(InterpError, match="SAELens 'gated' SAE, which this project cannot run"):
        load_sae(tmp_path)


def test_point_width_is_the_flattened_row_a_store_holds(tiny_model):
    """An SAE's d_in for a point is the width of the rows harvests and stores make there (the product of
    the per-token shape), and a point that is not one row per token is refused with one line."""
    from interp.activations import point_shapes
    from saes.io import point_width

    hm = HookManager(tiny_model)
    for point, width in [("blocks.0.hook_resid_post", 64), ("blocks.1.mlp.hook_post", 128), ("blocks.0.attn.hook_k", 32)]:
        shape = point_shapes(hm, point)[point]
        assert point_width(hm, point) == width == int(torch.tensor(shape).prod())
    with pytest.raises(InterpError, match="hook_rot_q gives activations of shape"):
        point_width(hm, "blocks.0.attn.hook_rot_q")

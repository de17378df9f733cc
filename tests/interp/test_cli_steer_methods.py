"""`interp steer build --method lineas|sae-features`, LinEAS folders in `steer generate|eval`, and
`steer export|import --gguf`, on a tiny model: what the CLI writes equals what the Python API gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp import steering as st
from interp.cli import main
from interp.steering.lineas import LinEASMaps, apply_lineas, fit_lineas

POS = ["I love this film, it is wonderful.", "The sun is hot", "A bird sang in the tree.", "Paris is the capital"]
NEG = ["I hate this film, it is terrible.", "The snow is cold", "The dog ran.", "Rome is the capital of Italy."]
PROMPT = "The cat sat on the"
P1, P2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, message, out_path, *argv):
    code, _, err = run(capsys, *argv)
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert out_path is None or not out_path.exists()


@pytest.fixture
def texts(tmp_path):
    (tmp_path / "pos.txt").write_text("\n".join(POS) + "\n")
    (tmp_path / "neg.txt").write_text("\n".join(NEG) + "\n")
    return ["--positive", tmp_path / "pos.txt", "--negative", tmp_path / "neg.txt"]


def test_lineas_build_then_generate(capsys, tiny_llama_dir, tiny_model, tmp_path, texts):
    out = tmp_path / "lineas"
    code, stdout, err = run(capsys, "steer", "build", "--method", "lineas", "--model", tiny_llama_dir, *texts, "--layer", "1-2",
                            "--steps", "20", "--lr", "0.05", "--lambda-group", "0", "--out", out)
    assert code == 0, err
    maps = LinEASMaps.load(out)
    direct = fit_lineas(tiny_model, NEG, POS, [P1, P2], steps=20, lr=0.05, lambda_group=0.0, progress=False)
    for p in (P1, P2):
        torch.testing.assert_close(maps.omega[p], direct.omega[p])
        torch.testing.assert_close(maps.beta[p], direct.beta[p])
    assert maps.params["loss_after"] < maps.params["loss_before"]
    assert f"{maps.params['loss_after']:.4g}" in stdout
    gen = ["steer", "generate", "--model", tiny_llama_dir, "--prompt", PROMPT, "--vector", out, "--max-new-tokens", "8", "--seed", "3"]
    unsteered = st.generate(tiny_model, PROMPT, None, 0.0, max_new_tokens=8, seed=3)
    code, at_zero, err = run(capsys, *gen, "--alpha", "0")
    assert code == 0, err
    assert at_zero == unsteered + "\n"
    code, steered, err = run(capsys, *gen, "--alpha", "8")
    assert code == 0, err
    with apply_lineas(tiny_model, maps, strength=8.0):
        expected = st.generate(tiny_model, PROMPT, None, 0.0, max_new_tokens=8, seed=3)
    assert steered == expected + "\n" and steered != at_zero
    code, table, err = run(capsys, *gen, "--alpha", "8", "--compare")
    assert code == 0 and "LinEAS (strength 8)" in table
    one_line_error(capsys, "--alpha-unit applies to steering vectors", None, *gen, "--alpha", "1", "--alpha-unit", "norm")
    one_line_error(capsys, "steer eval does not sweep", tmp_path / "e", "steer", "eval", "--model", tiny_llama_dir,
                   "--vector", out, "--out", tmp_path / "e")


def test_sae_features_build_matches_the_api(capsys, tiny_llama_dir, tiny_model, tmp_path, texts):
    saes = pytest.importorskip("saes.io")
    from saes.architectures import SAEConfig, make_sae

    sae = make_sae(SAEConfig(d_in=64, d_sae=32, arch="relu", model_name=tiny_llama_dir.resolve().name, hook_name=P1))
    saes.save_sae(sae, tmp_path / "sae")
    out = tmp_path / "v"
    code, stdout, err = run(capsys, "steer", "build", "--method", "sae-features", "--sae", tmp_path / "sae", "--model",
                            tiny_llama_dir, *texts, "--n-features", "4", "--criterion", "mean_diff", "--out", out)
    assert code == 0, err
    vec = st.SteeringVector.load(out)
    from saes.steering import sae_feature_vector

    direct = sae_feature_vector(tiny_model, saes.load_sae(tmp_path / "sae"), POS, NEG, n_features=4, criterion="mean_diff")
    assert vec.method == "sae_features" and vec.points == [P1]
    assert vec.params["latents"] == direct.params["latents"] and len(vec.params["latents"]) <= 4
    torch.testing.assert_close(vec.directions[P1], direct.directions[P1])
    assert str(vec.params["latents"][0]) in stdout
    base = ["steer", "build", "--model", tiny_llama_dir, *texts, "--out", tmp_path / "x"]
    one_line_error(capsys, "needs --sae DIR", tmp_path / "x", *base, "--method", "sae-features")
    one_line_error(capsys, "unknown --criterion 'cohen'", tmp_path / "x", *base, "--method", "sae-features", "--sae",
                   tmp_path / "sae", "--criterion", "cohen")
    one_line_error(capsys, "--sae is only used with --method sae-features", tmp_path / "x", *base, "--layer", "1",
                   "--sae", tmp_path / "sae")


def test_gguf_export_reads_back_to_the_vector(capsys, tiny_llama_dir, tmp_path, texts):
    from gguf import GGUFReader

    vec_dir, gguf_path = tmp_path / "v", tmp_path / "v.gguf"
    assert run(capsys, "steer", "build", "--model", tiny_llama_dir, *texts, "--layer", "1-2", "--out", vec_dir)[0] == 0
    code, stdout, err = run(capsys, "steer", "export", "--gguf", vec_dir, "--out", gguf_path, "--model-hint", "llama",
                            "--scale", "2")
    assert code == 0, err
    vec = st.SteeringVector.load(vec_dir)
    reader = GGUFReader(str(gguf_path))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.2"]
    for layer, point in ((1, P1), (2, P2)):
        np.testing.assert_allclose(tensors[f"direction.{layer}"], 2 * vec.directions[point].numpy(), rtol=1e-6)
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["general.architecture"].contents() == "controlvector"
    del reader
    code, _, err = run(capsys, "steer", "import", "--gguf", gguf_path, "--out", tmp_path / "back")
    assert code == 0, err
    back = st.SteeringVector.load(tmp_path / "back")
    assert back.points == vec.points and back.params["gguf_scale"] == 2.0
    for p in vec.points:
        torch.testing.assert_close(back.directions[p], 2 * vec.directions[p])


def test_bad_input_is_one_line_and_writes_nothing(capsys, tiny_llama_dir, tmp_path, texts):
    build = ["steer", "build", "--model", tiny_llama_dir, *texts, "--out", tmp_path / "x"]
    one_line_error(capsys, "unknown --pool 'max' for --method lineas", tmp_path / "x", *build, "--method", "lineas",
                   "--layer", "1", "--pool", "max")
    one_line_error(capsys, "--steps must be 0 or more", tmp_path / "x", *build, "--method", "lineas", "--layer", "1", "--steps", "-1")
    one_line_error(capsys, "unknown --method 'ice'", tmp_path / "x", *build, "--method", "ice", "--layer", "1")
    one_line_error(capsys, "layer 7 is out of range", tmp_path / "x", *build, "--method", "lineas", "--layer", "7")
    assert run(capsys, "steer", "build", "--model", tiny_llama_dir, *texts, "--layer", "0", "--out", tmp_path / "v0")[0] == 0
    one_line_error(capsys, "cannot export blocks.0.hook_resid_post", tmp_path / "v0.gguf", "steer", "export", "--gguf",
                   tmp_path / "v0", "--out", tmp_path / "v0.gguf")
    one_line_error(capsys, "give --gguf or an --out file ending in .gguf", tmp_path / "v0.bin", "steer", "export",
                   tmp_path / "v0", "--out", tmp_path / "v0.bin")
    one_line_error(capsys, "does not exist", tmp_path / "y", "steer", "import", "--gguf", tmp_path / "none.gguf", "--out", tmp_path / "y")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    one_line_error(capsys, "is not a readable GGUF file", tmp_path / "y", "steer", "import", "--gguf", tmp_path / "junk.gguf",
                   "--out", tmp_path / "y")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "lineas.json").write_text(json.dumps({"format": "nope"}))
    one_line_error(capsys, "lineas.safetensors is missing", None, "steer", "generate", "--model", tiny_llama_dir, "--prompt", "hi",
                   "--vector", tmp_path / "broken", "--alpha", "1")

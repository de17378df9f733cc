"""GGUF control vectors: what llama.cpp's loader reads, checked with gguf's own reader; round trips; refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFWriter

from interp import InterpError
from interp.steering import SteeringVector, mean_diff
from interp.steering.gguf_export import export_gguf, gguf_layers, import_gguf

POS = ["I love this film, it is wonderful.", "The sun is hot", "A bird sang in the tree."]
NEG = ["I hate this film, it is terrible.", "The snow is cold", "The dog ran."]


def _vector(d=64, layers=(2, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({f"blocks.{L}.hook_resid_post": torch.randn(d, generator=g) for L in layers}, "tiny", "mean_diff",
                          {f"blocks.{L}.hook_resid_post": 3.5 + L for L in layers}, {"fingerprint": "abc", "n_positive": 3},
                          {"pool": "last"})


def test_file_has_the_names_types_and_metadata_llama_cpp_reads(tmp_path):
    vec = _vector()
    path = export_gguf(vec, tmp_path / "v.gguf", model_hint="llama")
    reader = GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    assert fields["controlvector.layer_count"] == 2
    assert reader.fields["controlvector.layer_count"].types[0].name == "UINT32"
    by_name = {t.name: t for t in reader.tensors}
    assert sorted(by_name) == ["direction.1", "direction.2"]
    for L in (1, 2):
        t = by_name[f"direction.{L}"]
        assert int(t.tensor_type) == 0 and list(t.shape) == [64]  # GGML F32, 1-D (n_embd,)
        np.testing.assert_array_equal(np.asarray(t.data), vec.directions[f"blocks.{L}.hook_resid_post"].numpy())
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_round_trip_is_exact(tiny_model, tmp_path):
    vec = mean_diff(tiny_model, POS, NEG, "resid_post:1-2", progress=False)
    back = import_gguf(export_gguf(vec, tmp_path / "md.gguf"))
    assert back.points == vec.points and back.model_name == vec.model_name and back.method == "mean_diff"
    for p in vec.points:
        assert torch.equal(back.directions[p], vec.directions[p])
    assert back.resid_norms == vec.resid_norms and back.source == vec.source and back.params == vec.params
    assert back.describe() == vec.describe()
    scaled = import_gguf(export_gguf(vec, tmp_path / "x4.gguf", scale=4.0))
    assert scaled.params["gguf_scale"] == 4.0
    torch.testing.assert_close(scaled.directions[vec.points[0]], 4 * vec.directions[vec.points[0]])


def test_a_foreign_file_imports_by_layer(tmp_path):
    """A file as repeng writes it (no metadata of ours): direction.L -> blocks.L.hook_resid_post."""
    path = tmp_path / "repeng.gguf"
    writer = GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    rows = {5: np.arange(8, dtype=np.float32), 3: -np.ones(8, dtype=np.float32)}
    for L, row in rows.items():
        writer.add_tensor(f"direction.{L}", row)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    vec = import_gguf(path)
    assert vec.points == ["blocks.3.hook_resid_post", "blocks.5.hook_resid_post"]
    assert vec.model_name == "llama" and vec.method == "gguf" and vec.layers == [3, 5]
    np.testing.assert_array_equal(vec.directions["blocks.5.hook_resid_post"].numpy(), rows[5])


def test_points_llama_cpp_cannot_steer_are_refused_in_one_line(tmp_path):
    mid = SteeringVector({"blocks.1.hook_resid_mid": torch.ones(8)}, "tiny", "mean_diff")
    with pytest.raises(InterpError, match=r"blocks\.1\.hook_resid_mid.*blocks\.L\.hook_resid_post") as err:
        export_gguf(mid, tmp_path / "mid.gguf")
    assert "\n" not in str(err.value)
    with pytest.raises(InterpError, match="never steers block 0"):
        gguf_layers(SteeringVector({"blocks.0.hook_resid_post": torch.ones(8)}, "tiny", "mean_diff"))
    assert not (tmp_path / "mid.gguf").exists()
    with pytest.raises(InterpError, match="does not exist"):
        import_gguf(tmp_path / "none.gguf")
    model_file = tmp_path / "model.gguf"
    writer = GGUFWriter(str(model_file), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(InterpError, match="not a control vector"):
        import_gguf(model_file)

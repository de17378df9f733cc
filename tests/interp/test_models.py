"""Model loading."""

import pytest
import torch

from interp import InterpError, load_model, make_tiny_model
from interp.models import resolve_dtype


def test_tiny_models_load_and_run(tiny_gpt2_dir, tiny_model, device):
    gpt2 = load_model(str(tiny_gpt2_dir), device=device)
    for model in (gpt2, tiny_model):
        assert model.cfg.n_layers == 3 and model.cfg.d_model == 64
        logits = model(model.to_tokens("the cat sat"))
        assert logits.shape[-1] == model.cfg.d_vocab and torch.isfinite(logits).all()
    assert not any(p.requires_grad for p in tiny_model.parameters())


def test_bad_specs(tmp_path):
    with pytest.raises(InterpError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(InterpError, match="no config.json"):
        load_model(str(tmp_path / "notamodel"))
    with pytest.raises(InterpError, match="unknown tiny architecture"):
        make_tiny_model(tmp_path / "x", arch="mamba")
    with pytest.raises(InterpError, match="unknown dtype"):
        resolve_dtype("float12")


@pytest.mark.slow
def test_default_model_answers_paris(smol):
    assert smol.cfg.n_layers == 30 and smol.cfg.d_model == 576 and smol.cfg.d_vocab == 49152
    tokens = smol.to_tokens("The capital of France is", prepend_bos=False)
    next_id = smol(tokens)[0, -1].argmax().item()
    assert smol.tokenizer.decode([next_id]).strip() == "Paris"


def test_dtype_and_device_map_load_the_same_model(tiny_llama_dir, tiny_model):
    tokens = tiny_model.to_tokens("The cat sat on the mat")
    reference = tiny_model(tokens)
    # accelerate places every module (here all on the CPU) instead of one .to(device)
    mapped = load_model(str(tiny_llama_dir), device_map="auto")
    assert torch.equal(mapped(tokens), reference)
    half = load_model(str(tiny_llama_dir), dtype="bfloat16", device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    # bf16 weights and activations: close to float32, not equal
    diff = (half(tokens).float() - reference).abs().max().item()
    assert 0 < diff < 0.05 * reference.abs().max().item()
    with pytest.raises(InterpError, match="device map"):
        load_model(str(tiny_llama_dir), device="cpu", device_map="auto")


def test_two_processes_asking_for_an_embedded_model_convert_it_once(tmp_path, monkeypatch):
    """Test workers, torchrun ranks or two commands may load an embedded model at the same time on a
    fresh machine: one converts, the other waits and reuses the folder; a half-made folder is redone."""
    import threading
    import time

    from interp import gguf_models

    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    entry = gguf_models.EMBEDDED[0]
    calls = []

    def fake_write(entry, folder):
        return folder / "x.gguf"

    def fake_dequantize(entry, gguf_path, out):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # both threads are inside model_dir by now
        out.mkdir()
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_text("")

    monkeypatch.setattr(gguf_models, "_write_gguf", fake_write)
    monkeypatch.setattr(gguf_models, "_dequantize", fake_dequantize)
    (tmp_path / "models" / entry.name).mkdir(parents=True)  # left half-made by a killed process
    (tmp_path / "models" / entry.name / "config.json").write_text("{}")
    found = []
    threads = [threading.Thread(target=lambda: found.append(gguf_models.model_dir(entry))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and found == [tmp_path / "models" / entry.name] * 2
    assert (found[0] / "model.safetensors").exists()


def test_the_gguf_loader_parses_each_file_once_while_converting(tmp_path):
    """transformers builds a GGUFReader for the config, the tokenizer and the weights; during the conversion
    they share one per file (same fields and tensors as a reader of its own), and the class is restored after."""
    import gguf
    import numpy as np

    from interp import gguf_models

    path = tmp_path / "x.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("test.answer", 42)
    writer.add_array("test.vocab", ["a", "b", "c"])
    writer.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader
    with gguf_models._one_reader_per_file():
        first, second, other = gguf.GGUFReader(path), gguf.GGUFReader(str(path)), gguf.GGUFReader(path, "c")
        assert first is second and other is not first
    assert gguf.GGUFReader is original
    alone = original(path)
    assert first.fields.keys() == alone.fields.keys() and int(first.fields["test.answer"].parts[-1][0]) == 42
    np.testing.assert_array_equal(first.tensors[0].data, alone.tensors[0].data)

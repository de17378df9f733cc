"""Text generation that does not trust the KV cache blindly.

Generation with a KV cache runs through the attention wrappers of TransformerLens's bridge,
which read the cache from the keyword arguments HuggingFace passes to each attention module.
When an upstream release renames that argument (transformers 5.24 passes `cache=` where the
bridge of transformer-lens 4.3 reads `past_key_values=`), the cache is silently never filled
and every decoding step attends to itself alone: greedy text turns into repeated punctuation.

`kv_cache_works(model)` checks the cached path once per model against a plain forward pass
(a few tokens, well under a second on SmolLM2); callers (`interp.steering.generate_ids`) use the cache only when the
check passes and otherwise generates without it (slower, but correct), with one warning. Run the
check before any hooks are attached (steering counts positions from the first forward it sees).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from interp.models import model_device

_CHECK_NEW_TOKENS = 4
_ATTR = "_interp_kv_cache_works"


def kv_cache_works(model: Any) -> bool:
    """Whether greedy generation with the KV cache gives the tokens a full forward pass predicts.

    Generates `_CHECK_NEW_TOKENS` tokens greedily with the cache after a fixed prompt, runs the
    whole sequence once without any cache, and requires each generated token to be the argmax of
    the full pass's logits at its position. The answer is kept on the model object.
    """
    known = getattr(model, _ATTR, None)
    if known is not None:
        return known
    vocab = int(model.cfg.d_vocab)
    prompt = torch.arange(3, 3 + 8, device=model_device(model)).remainder(vocab).reshape(1, -1)
    bos = getattr(model.tokenizer, "bos_token_id", None) if getattr(model, "tokenizer", None) is not None else None
    if bos is not None:
        prompt = torch.cat([torch.tensor([[bos]], device=prompt.device), prompt], dim=1)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=_CHECK_NEW_TOKENS, do_sample=False, use_past_kv_cache=True,
                             stop_at_eos=False, verbose=False, return_type="tokens")
        logits = model(out, return_type="logits")
    n = prompt.shape[1]
    predicted = logits[0, n - 1 : out.shape[1] - 1].argmax(-1)
    ok = bool(torch.equal(predicted, out[0, n:]))
    setattr(model, _ATTR, ok)
    if not ok:
        warnings.warn(
            "generation with the KV cache disagrees with a plain forward pass for this transformers / "
            "transformer-lens pair; generating without the cache (correct, slower). "
            "Install the versions in the project's lock file to get the cached path back.",
            RuntimeWarning,
            stacklevel=3,
        )
    return ok

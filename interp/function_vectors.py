"""Function vectors (Todd et al., 2024, "Function Vectors in Large Language Models").

A few attention heads carry a compact representation of an in-context task. They are found by
causal mediation over every head `(l, j)`:

    a_lj      = mean over clean in-context prompts of head j's output at layer l, last token
                (the head's slice of the input to W_O: `blocks.l.attn.hook_z`, `(d_head,)`)
    CIE(l, j) = P(answer | corrupted prompt, a_lj patched in at the last token)
                - P(answer | corrupted prompt)
    AIE(l, j) = mean CIE over corrupted prompts (demonstrations with shuffled labels)

The function vector is the sum of the top heads' mean outputs in the residual stream,
`v = sum_(l,j) in top a_lj @ W_O[l, j]` (`(d_model,)`: each head's contribution to `attn_out`),
and it is added to the residual stream after block `layer` (`blocks.layer.hook_resid_post`) at the
last token of a prompt. Everything reads and writes through `HookManager`.

Batching: the patch of head `(l, j)` into corrupted prompt `i` is one row of a batch; every row of
a forward patches its own head at its own last position, so one forward per layer chunk measures
many heads. Rows are right-padded (no attention mask: a causal model's real positions never see
the padding) and read at each row's own last position.
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from interp import readout
from interp.atomic import write_json, write_safetensors
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.manifest import make_manifest
from interp.models import model_device, model_name
from interp.tasks import PromptSet, Task, make_prompts

Z_POINT = "blocks.{layer}.attn.hook_z"
RESID_POINT = "blocks.{layer}.hook_resid_post"
FORMAT = "interp.function_vector"


def _hm(model_or_hm) -> HookManager:
    hm = readout.as_hook_manager(model_or_hm)
    if not hm.is_bridge:
        raise InterpError("function vectors need a transformer (TransformerBridge) with attention heads, not a plain module")
    return hm


def head_shape(hm: HookManager) -> tuple[int, int]:
    """(n_heads, d_head) of the model's attention layers."""
    cfg = hm.model.cfg
    return int(cfg.n_heads), int(cfg.d_head)


def head_out_weights(model, layer: int) -> torch.Tensor:
    """W_O of one layer as `(n_heads, d_head, d_model)`: head j writes `z_j @ W_O[j]` into `attn_out`."""
    w = model.blocks[layer].attn.W_O
    n_heads, d_head = int(model.cfg.n_heads), int(model.cfg.d_head)
    return w.detach().reshape(n_heads, d_head, -1).float()


# --------------------------------------------------------------------------- forwards
def _chunks(n: int, size: int) -> list[range]:
    if size < 1:
        raise InterpError(f"--batch-texts must be at least 1, got {size}")
    return [range(lo, min(lo + size, n)) for lo in range(0, n, size)]


def _last_logits(hm: HookManager, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Logits at each row's last real position, `(batch, vocab)`, float32 on CPU."""
    with torch.no_grad():
        logits = hm.model(tokens.to(model_device(hm.model)))
    return logits[torch.arange(len(last)), last.to(logits.device)].float().cpu()


def mean_head_outputs(hm, texts: Sequence[str], batch_texts: int = 16, progress: bool = False) -> torch.Tensor:
    """Mean over `texts` of every head's output at the last token: `(n_layers, n_heads, d_head)`."""
    hm = _hm(hm)
    n_heads, d_head = head_shape(hm)
    points = [Z_POINT.format(layer=layer) for layer in range(hm.n_layers)]
    tokens, lengths = readout.tokenize(hm.model, list(texts))
    total = torch.zeros(hm.n_layers, n_heads, d_head, dtype=torch.float64)
    for rows in tqdm(_chunks(len(texts), batch_texts), desc="clean prompts", disable=not progress, leave=False):
        idx = torch.tensor(list(rows))
        lens = lengths[idx]
        batch = tokens[idx, : int(lens.max())].to(model_device(hm.model))
        with torch.no_grad(), hm.capture(points, device="cpu", dtype=torch.float32) as cap:
            hm.model(batch, return_type=None)
        for layer, point in enumerate(points):
            z = cap[point][torch.arange(len(idx)), lens - 1].reshape(len(idx), n_heads, d_head)
            total[layer] += z.double().sum(0)
    return (total / len(texts)).float()


def answer_probs(
    hm,
    prompts: PromptSet,
    vector: torch.Tensor | None = None,
    layer: int | None = None,
    alpha: float = 1.0,
    batch_texts: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(answer) `(n,)` and whether the answer is the top-1 token `(n,)`, optionally with
    `alpha * vector` added after block `layer` at each prompt's last token."""
    hm = _hm(hm)
    tokens, lengths = readout.tokenize(hm.model, prompts.texts)
    probs, correct = [], []
    for rows in _chunks(len(prompts.texts), batch_texts):
        idx = torch.tensor(list(rows))
        lens = lengths[idx]
        with add_at_last(hm, vector, layer, lens - 1, alpha):
            logits = _last_logits(hm, tokens[idx, : int(lens.max())], lens - 1)
        ans = prompts.answers[idx]
        probs.append(logits.softmax(-1)[torch.arange(len(idx)), ans])
        correct.append(logits.argmax(-1) == ans)
    return torch.cat(probs), torch.cat(correct)


@contextmanager
def add_at_last(hm: HookManager, vector: torch.Tensor | None, layer: int | None, last: torch.Tensor,
                alpha: float = 1.0) -> Iterator[None]:
    """Add `alpha * vector` `(d_model,)` after block `layer` at row b's position `last[b]` (None: no edit)."""
    if vector is None:
        yield
        return
    if layer is None:
        raise InterpError("adding a function vector needs a layer")
    rows = torch.arange(len(last))

    def fn(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        out[rows, last.to(act.device)] += alpha * vector.to(act.device, act.dtype)
        return out

    with hm.edit(RESID_POINT.format(layer=layer), fn):
        yield


# ------------------------------------------------------------------ indirect effects
def patch_heads(hm: HookManager, layer: int, heads: torch.Tensor, last: torch.Tensor, values: torch.Tensor):
    """An edit context that sets, in row b, head `heads[b]`'s output at position `last[b]` to
    `values[b]` `(d_head,)` at `blocks.layer.attn.hook_z` (rows with `heads[b] < 0` are untouched)."""
    n_heads, d_head = head_shape(hm)
    keep = heads >= 0
    rows = torch.arange(len(heads))[keep]

    def fn(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        view = out.view(*out.shape[:-1], n_heads, d_head)
        view[rows, last[keep].to(act.device), heads[keep].to(act.device)] = values[keep].to(act.device, act.dtype)
        return out

    return hm.edit(Z_POINT.format(layer=layer), fn)


def head_indirect_effects(
    hm,
    corrupted: PromptSet,
    mean_z: torch.Tensor,
    layers: Sequence[int] | None = None,
    batch_texts: int = 32,
    progress: bool = False,
    kv_cache: bool | None = None,
) -> torch.Tensor:
    """Average indirect effect of every head, `(n_layers, n_heads)` (NaN for layers not measured).

    Row `(j, i)` of a batch is corrupted prompt i with head j of `layer` set to `mean_z[layer, j]`
    at the last token; the effect is the rise of P(answer) over the unpatched prompt, averaged over i.

    The patch touches only the last position, and no earlier position attends to it, so with the
    KV cache (`kv_cache=None`: where `interp.generation.kv_cache_works` finds it right) each
    prompt's prefix runs once and every patched row runs its last token alone on a copy of that
    cache; without it every row runs the whole prompt. Both give the same effects up to rounding.
    """
    from interp.generation import kv_cache_works

    hm = _hm(hm)
    n_heads, _ = head_shape(hm)
    layers = list(range(hm.n_layers)) if layers is None else list(layers)
    for layer in layers:
        if not 0 <= layer < hm.n_layers:
            raise InterpError(f"layer {layer} is out of range: the model has {hm.n_layers} layers (0 to {hm.n_layers - 1})")
    base, _ = answer_probs(hm, corrupted, batch_texts=batch_texts)
    use_cache = kv_cache_works(hm.model) if kv_cache is None else kv_cache
    measure = _effects_cached if use_cache else _effects_full
    patched = measure(hm, corrupted, mean_z, layers, batch_texts, progress)   # (len(layers), n_heads, n)
    effects = torch.full((hm.n_layers, n_heads), float("nan"))
    effects[layers] = (patched - base[None, None, :]).mean(-1)
    return effects


def _effects_full(hm, corrupted, mean_z, layers, batch_texts, progress) -> torch.Tensor:
    n_heads, _ = head_shape(hm)
    tokens, lengths = readout.tokenize(hm.model, corrupted.texts)
    n = len(corrupted.texts)
    prompt_of = torch.arange(n).repeat(n_heads)                 # row r: prompt r % n
    head_of = torch.arange(n_heads).repeat_interleave(n)        #        head  r // n
    out = torch.empty(len(layers), n_heads, n)
    for k, layer in enumerate(tqdm(layers, desc="head effects", disable=not progress, leave=False)):
        patched = torch.empty(n_heads * n)
        for rows in _chunks(n_heads * n, batch_texts):
            r = torch.tensor(list(rows))
            p, h = prompt_of[r], head_of[r]
            lens = lengths[p]
            with patch_heads(hm, layer, h, lens - 1, mean_z[layer, h]):
                logits = _last_logits(hm, tokens[p, : int(lens.max())], lens - 1)
            patched[r] = logits.softmax(-1)[torch.arange(len(r)), corrupted.answers[p]]
        out[k] = patched.reshape(n_heads, n)
    return out


def _effects_cached(hm, corrupted, mean_z, layers, batch_texts, progress) -> torch.Tensor:
    import copy
    from contextlib import ExitStack

    n_heads, _ = head_shape(hm)
    tokens, lengths = readout.tokenize(hm.model, corrupted.texts)
    device = model_device(hm.model)
    layer_of = torch.tensor(layers).repeat_interleave(n_heads)     # row r: layer layers[r // n_heads]
    head_of = torch.arange(n_heads).repeat(len(layers))              #        head  r % n_heads
    values = mean_z[layer_of, head_of]
    out = torch.empty(len(layers) * n_heads, len(corrupted.texts))
    for i in tqdm(range(len(corrupted.texts)), desc="head effects", disable=not progress, leave=False):
        n = int(lengths[i])
        with torch.no_grad():
            _, prefix = hm.model(tokens[i : i + 1, : n - 1].to(device), return_type="logits_and_cache")
        for rows in _chunks(len(layer_of), batch_texts):
            r = torch.tensor(list(rows))
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(r))
            at_zero = torch.zeros(len(r), dtype=torch.long)
            with torch.no_grad(), ExitStack() as stack:
                for layer in sorted(set(layer_of[r].tolist())):
                    heads = torch.where(layer_of[r] == layer, head_of[r], -1)
                    stack.enter_context(patch_heads(hm, layer, heads, at_zero, values[r]))
                logits = hm.model(tokens[i : i + 1, n - 1 : n].expand(len(r), 1).to(device), past_key_values=cache)
            out[r, i] = logits[:, -1].float().softmax(-1)[:, int(corrupted.answers[i])].cpu()
    return out.reshape(len(layers), n_heads, -1)


def top_heads(effects: torch.Tensor, n_heads: int) -> list[tuple[int, int, float]]:
    """The `n_heads` heads of largest effect, as `(layer, head, effect)`, largest first (NaN skipped)."""
    flat = torch.nan_to_num(effects, nan=float("-inf")).reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)[:n_heads]
    width = effects.shape[1]
    return [(int(i) // width, int(i) % width, float(flat[i])) for i in order if torch.isfinite(flat[i])]


def vector_from_heads(model, mean_z: torch.Tensor, heads: Sequence[tuple[int, int, float]]) -> torch.Tensor:
    """`sum a_lj @ W_O[l, j]` over `heads`: the function vector in the residual stream, `(d_model,)`."""
    vec = None
    for layer, head, _ in heads:
        part = mean_z[layer, head].float() @ head_out_weights(model, layer)[head].cpu()
        vec = part if vec is None else vec + part
    if vec is None:
        raise InterpError("no heads to build a function vector from")
    return vec


# ---------------------------------------------------------------------------- build
@dataclass
class FunctionVector:
    """A function vector `(d_model,)`, the layer it is added after, and what made it.

    `heads` are `(layer, head, effect)` of the summed heads; `effects` `(n_layers, n_heads)` the
    indirect effect of every head measured; `layer_accuracy` the zero-shot accuracy on the
    training items when added after each layer (the sweep that chose `layer`).
    """

    vector: torch.Tensor
    layer: int
    heads: list[tuple[int, int, float]]
    effects: torch.Tensor
    model_name: str
    task: str
    params: dict = field(default_factory=dict)
    layer_accuracy: dict[int, float] = field(default_factory=dict)

    @property
    def point(self) -> str:
        return RESID_POINT.format(layer=self.layer)

    def describe(self) -> dict:
        return {
            "format": FORMAT, "model_name": self.model_name, "task": self.task, "layer": self.layer, "point": self.point,
            "norm": float(self.vector.norm()),
            "heads": [{"layer": l, "head": h, "effect": e} for l, h, e in self.heads],
            "layer_accuracy": {str(k): v for k, v in self.layer_accuracy.items()}, "params": self.params,
            "manifest": make_manifest(self.model_name, {self.point: int(self.vector.numel())}),
        }

    def save(self, directory: str | Path) -> Path:
        """Write `function_vector.safetensors` (vector, effects) and `function_vector.json`."""
        directory = Path(directory)
        write_safetensors(directory / "function_vector.safetensors", {"vector": self.vector, "effects": self.effects},
                          metadata={"format": FORMAT})
        write_json(directory / "function_vector.json", self.describe())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "FunctionVector":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path, weights = directory / "function_vector.json", directory / "function_vector.safetensors"
        for path in (meta_path, weights):
            if not path.is_file():
                raise InterpError(f"{path} is missing: point --vector at a folder written by `interp fv build`")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(weights))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError) as exc:
            raise InterpError(f"function vector in {directory} is corrupt ({type(exc).__name__}): rebuild it") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "vector" not in tensors:
            raise InterpError(f"{directory} does not hold a function vector: rebuild it with `interp fv build`")
        heads = [(int(h["layer"]), int(h["head"]), float(h["effect"])) for h in meta.get("heads", [])]
        return cls(tensors["vector"], int(meta["layer"]), heads, tensors.get("effects", torch.empty(0)), meta["model_name"],
                   meta["task"], meta.get("params", {}), {int(k): v for k, v in meta.get("layer_accuracy", {}).items()})


def check_model(model, fv: FunctionVector) -> None:
    """Raise InterpError unless `fv` was built for a model of this name and width."""
    name, width = model_name(model), int(model.cfg.d_model)
    if fv.model_name != name or fv.vector.numel() != width or fv.layer >= int(model.cfg.n_layers):
        raise InterpError(f"the function vector was built for {fv.model_name} (d_model {fv.vector.numel()}, layer {fv.layer}) "
                          f"but the model is {name} (d_model {width}): load that model or rebuild the vector")


def build_function_vector(
    model,
    task: Task,
    n_prompts: int = 16,
    n_demos: int = 5,
    n_top_heads: int = 10,
    layer: int | None = None,
    layers: Sequence[int] | None = None,
    sweep_layers: Sequence[int] | None = None,
    sweep_items: int = 24,
    batch_texts: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> FunctionVector:
    """Find the task's function-vector heads and sum them (Todd et al.).

    `n_prompts` clean and as many corrupted in-context prompts with `n_demos` demonstrations each
    are drawn from the task's training items; `layers` limits which layers' heads are measured
    (default all); `layer` fixes where the vector is added, else the layer (of `sweep_layers`,
    default all) of best zero-shot accuracy on up to `sweep_items` training items is taken (the
    paper's sweep).
    """
    hm = _hm(model)
    rng = random.Random(seed)
    train = task.train
    if n_demos < 1 or n_prompts < 1 or n_top_heads < 1:
        raise InterpError("n_prompts, n_demos and n_top_heads must all be at least 1")
    queries = [train[rng.randrange(len(train))] for _ in range(n_prompts)]
    clean = make_prompts(model.tokenizer, queries, train, n_demos, rng)
    corrupted = make_prompts(model.tokenizer, queries, train, n_demos, rng, shuffle_labels=True)
    mean_z = mean_head_outputs(hm, clean.texts, batch_texts=batch_texts, progress=progress)
    effects = head_indirect_effects(hm, corrupted, mean_z, layers=layers, batch_texts=batch_texts, progress=progress)
    heads = top_heads(effects, n_top_heads)
    vector = vector_from_heads(model, mean_z, heads)
    sweep = make_prompts(model.tokenizer, train[:sweep_items], train, 0, rng)
    layer_accuracy: dict[int, float] = {}
    if layer is None:
        candidates = list(range(hm.n_layers)) if sweep_layers is None else list(sweep_layers)
        for cand in tqdm(candidates, desc="layer sweep", disable=not progress, leave=False):
            layer_accuracy[cand] = float(answer_probs(hm, sweep, vector, cand, batch_texts=batch_texts)[1].float().mean())
        layer = max(layer_accuracy, key=lambda k: (layer_accuracy[k], -k))
    elif not 0 <= layer < hm.n_layers:
        raise InterpError(f"layer {layer} is out of range: the model has {hm.n_layers} layers (0 to {hm.n_layers - 1})")
    params = {"n_prompts": n_prompts, "n_demos": n_demos, "n_top_heads": n_top_heads, "seed": seed,
              "layers_measured": sorted(set(range(hm.n_layers) if layers is None else layers)), "sweep_items": sweep_items,
              "clean_accuracy": float(answer_probs(hm, clean, batch_texts=batch_texts)[1].float().mean()),
              "corrupted_accuracy": float(answer_probs(hm, corrupted, batch_texts=batch_texts)[1].float().mean())}
    return FunctionVector(vector, int(layer), heads, effects, model_name(model), task.name, params, layer_accuracy)


def evaluate_function_vector(
    model,
    fv: FunctionVector,
    task: Task,
    n_demos: int = 5,
    alpha: float = 1.0,
    batch_texts: int = 32,
    seed: int = 0,
) -> dict:
    """Held-out accuracy (top-1 first answer token) of the task's test items: zero-shot and
    `n_demos`-shot (demonstrations from the training items), each without and with the vector.

    Returns `{"zero_shot": {"base", "fv"}, "few_shot": {"base", "fv"}, "n_test", ...}` plus the
    mean P(answer) of each condition under `"prob"`.
    """
    hm = _hm(model)
    check_model(model, fv)
    rng = random.Random(seed)
    test = task.test
    out: dict = {"task": task.name, "n_test": len(test), "layer": fv.layer, "alpha": alpha, "n_demos": n_demos, "prob": {}}
    for name, k in (("zero_shot", 0), ("few_shot", n_demos)):
        prompts = make_prompts(model.tokenizer, test, task.train, k, rng)
        base_p, base_c = answer_probs(hm, prompts, batch_texts=batch_texts)
        fv_p, fv_c = answer_probs(hm, prompts, fv.vector, fv.layer, alpha, batch_texts=batch_texts)
        out[name] = {"base": float(base_c.float().mean()), "fv": float(fv_c.float().mean())}
        out["prob"][name] = {"base": float(base_p.mean()), "fv": float(fv_p.mean())}
    return out

"""Activation harvesting: stream shuffled batches, or write a sharded memory-mapped store.

Rows are the activations of individual tokens at a hook point, `(n_tokens, d)`; BOS positions
are left out (their activations are outliers that carry no text). Several points are harvested
from one forward pass, which stops after the deepest point.

Store layout (a folder):
    manifest.json                 what made it: model, points, dtype, d, ctx_len, token counts,
                                  data fingerprint, completed shards
    <point>/shard_00000.npy ...   float rows `(rows, d)`, one file per shard, memory-mapped on read
"""

from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interp import fastpath
from interp.atomic import atomic_path, write_json
from interp.data import fingerprint, token_batches
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.models import resolve_device

STORE_VERSION = 1
NP_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def token_activations(
    hm: HookManager, tokens: torch.Tensor, names: Sequence[str], dtype: torch.dtype, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Activations of every non-BOS token of `tokens (batch, ctx)` at `names`: `{name: (batch*(ctx-1), d)}`.

    Residual-stream points of proven architectures run the plain HuggingFace modules
    (`interp.fastpath`, bit-identical to the bridge); everything else goes through `hm.collect`.
    """
    tokens = tokens.to(_model_device(hm.model))
    if fastpath.applies(hm, names):
        acts = fastpath.collect(hm.model, tokens, names, positions=slice(1, None), device=device, dtype=dtype)
    else:
        acts = hm.collect(tokens, names, positions=slice(1, None), device=device, dtype=dtype)
    return {name: acts[name].reshape(-1, acts[name].shape[-1]) for name in names}


def harvest(
    model: Any,
    points: str | Sequence[str],
    source: str,
    n_tokens: int,
    ctx_len: int = 128,
    batch_size: int = 8,
    out_batch_size: int = 4096,
    shuffle_buffer_tokens: int = 2**17,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    text_field: str = "text",
    progress: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield `{point: (out_batch_size, d)}` batches of shuffled token activations, `n_tokens` in all.

    Rows are shuffled within a buffer of `shuffle_buffer_tokens` (memory stays bounded) with one
    permutation shared by all points, so row i of every point is the same token. The last
    batch may be smaller. `device` is where the batches are put (default: the model's).
    """
    hm = HookManager(model)
    names = hm.resolve(points)
    out_device = _model_device(model) if device is None else resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    buffer: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    buffered = 0
    bar = tqdm(total=n_tokens, unit="tok", desc="harvest", disable=not progress)

    def drain(keep: int) -> Iterator[dict[str, torch.Tensor]]:
        nonlocal buffered
        full = {n: torch.cat(buffer[n]) for n in names}
        perm = torch.randperm(buffered, generator=gen)
        full = {n: t[perm] for n, t in full.items()}
        emit = buffered - keep
        emit -= emit % out_batch_size if keep else 0
        for start in range(0, emit, out_batch_size):
            yield {n: t[start : min(start + out_batch_size, emit)].to(out_device) for n, t in full.items()}
        for n in names:
            buffer[n] = [full[n][emit:]]
        buffered -= emit

    # Grad mode is switched off around the forward pass only, never across a `yield`: a
    # generator suspended inside `torch.no_grad()` would leave its consumer (a training step)
    # without autograd.
    with bar:
        for tokens in token_batches(model, source, ctx_len, batch_size, n_tokens, text_field):
            with torch.no_grad():
                acts = token_activations(hm, tokens, names, dtype, device="cpu")
            for n in names:
                buffer[n].append(acts[n])
            got = next(iter(acts.values())).shape[0]
            buffered += got
            bar.update(got)
            if buffered >= shuffle_buffer_tokens:
                yield from drain(keep=shuffle_buffer_tokens // 2)
        if buffered:
            yield from drain(keep=0)


class ActivationStore:
    """A harvested store on disk (see the module docstring). Open with `ActivationStore(path)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            raise InterpError(f"{self.path} is not an activation store (no manifest.json): make one with `interp cache`")
        import json

        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text())
            self.points: list[str] = list(self.manifest["points"])
            self.d: int = int(self.manifest["d"])
        except (ValueError, KeyError) as exc:
            raise InterpError(f"{manifest} is corrupt ({exc}): delete the store and harvest it again") from None

    @property
    def dtype(self) -> torch.dtype:
        return {v: k for k, v in NP_DTYPES.items()}[self.manifest["dtype"]]

    @property
    def n_tokens(self) -> int:
        """Rows written so far (equal to the target once the harvest is complete)."""
        return sum(s["rows"] for s in self.manifest["shards"])

    @property
    def complete(self) -> bool:
        return self.n_tokens >= self.manifest["n_tokens"]

    def _dir(self, point: str) -> Path:
        if point not in self.points:
            raise InterpError(f"store {self.path} has no point {point!r}: it holds {', '.join(self.points)}")
        return self.path / point

    def shard(self, point: str, i: int) -> torch.Tensor:
        """Shard `i` of `point`, memory-mapped: `(rows, d)` (no copy until used)."""
        arr = np.load(self._dir(point) / self.manifest["shards"][i]["file"], mmap_mode="r", allow_pickle=False)
        with warnings.catch_warnings():  # read-only map: torch warns that writes would be undefined
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr) if arr.dtype != np.uint16 else torch.from_numpy(arr).view(torch.bfloat16)

    def tensor(self, point: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """All rows of `point` as one in-memory tensor `(n_tokens, d)`.

        `out`, a preallocated `(n_tokens, d)` tensor, is filled instead of new memory (faster
        when it is read again and again: fresh pages cost more than the copy itself).
        """
        dtype = self.dtype
        if out is None:
            out = torch.empty((self.n_tokens, self.d), dtype=dtype)
        elif out.shape != (self.n_tokens, self.d) or out.dtype != dtype:
            raise InterpError(f"out must be a {dtype} tensor of shape ({self.n_tokens}, {self.d}), got {out.dtype} {tuple(out.shape)}")
        row = 0
        for i, shard in enumerate(self.manifest["shards"]):
            self._read_into(point, i, out[row : row + shard["rows"]])
            row += shard["rows"]
        return out

    def _read_into(self, point: str, i: int, out: torch.Tensor) -> None:
        """Read shard `i` of `point` straight into the contiguous `out` `(rows, d)`.

        A plain read copies from the page cache into `out` once; going through a fresh memory
        map instead adds a page fault for every 4 KiB of the source.
        """
        path = self._dir(point) / self.manifest["shards"][i]["file"]
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(f)
            if tuple(shape) != tuple(out.shape):
                raise InterpError(f"{path} holds {tuple(shape)} rows, the manifest says {tuple(out.shape)}: the store is corrupt; harvest it again")
            view = out.view(torch.uint8).numpy() if out.dtype == torch.bfloat16 else out.numpy()
            if f.readinto(memoryview(view).cast("B")) != out.numel() * out.element_size():
                raise InterpError(f"{path} is truncated: the store is corrupt; harvest it again")

    def batches(
        self,
        point: str | Sequence[str],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int = 1,
        shards_in_memory: int = 8,
        reuse: bool = False,
    ) -> Iterator[torch.Tensor] | Iterator[dict[str, torch.Tensor]]:
        """Yield `(batch_size, d)` batches of `point` (or `{point: batch}` for a list of points).

        With `shuffle`, shards are visited in a random order `shards_in_memory` at a time and
        their rows permuted together (memory stays bounded); the last batch may be smaller.
        With `reuse`, buffers kept on the store are refilled for every group (and every call),
        which avoids paying for fresh memory each time; then a batch is valid only until the
        next group is loaded (clone it to keep it). The rows and their order are the same either way.
        """
        names = [point] if isinstance(point, str) else list(point)
        for n in names:
            self._dir(n)
        gen = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest["shards"])
        for _ in range(epochs):
            order = torch.randperm(n_shards, generator=gen).tolist() if shuffle else list(range(n_shards))
            for g in range(0, n_shards, shards_in_memory):
                group = order[g : g + shards_in_memory]
                data = {n: self._load_group(n, group, reuse) for n in names}
                rows = next(iter(data.values())).shape[0]
                if shuffle:
                    perm = torch.randperm(rows, generator=gen)
                    data = {n: self._gather(n, t, perm, reuse) for n, t in data.items()}
                for start in range(0, rows, batch_size):
                    out = {n: t[start : start + batch_size] for n, t in data.items()}
                    yield out[names[0]] if isinstance(point, str) else out

    def _buffer(self, key: str, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """A `(rows, d)` view of a buffer kept on the store and reused across calls."""
        buffers = self.__dict__.setdefault("_buffers", {})
        buf = buffers.get(key)
        if buf is None or buf.shape[0] < rows or buf.dtype != dtype:
            buf = buffers[key] = torch.empty((rows, self.d), dtype=dtype)
        return buf[:rows]

    def _gather(self, point: str, data: torch.Tensor, perm: torch.Tensor, reuse: bool) -> torch.Tensor:
        """`data[perm]`, into a reused buffer when `reuse`."""
        if not reuse:
            return data[perm]
        return torch.index_select(data, 0, perm, out=self._buffer(point + "#shuffled", data.shape[0], data.dtype))

    def _load_group(self, point: str, group: list[int], reuse: bool) -> torch.Tensor:
        """Shards `group` of `point` concatenated `(rows, d)`, into a reused buffer when `reuse`."""
        if not reuse:
            return torch.cat([self.shard(point, i) for i in group])
        sizes = [self.manifest["shards"][i]["rows"] for i in group]
        buf = self._buffer(point, sum(sizes), self.dtype)
        row = 0
        for i, n in zip(group, sizes):
            self._read_into(point, i, buf[row : row + n])
            row += n
        return buf


def build_store(
    model: Any,
    points: str | Sequence[str],
    source: str,
    n_tokens: int,
    out: str | os.PathLike,
    ctx_len: int = 128,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    text_field: str = "text",
    shard_contexts: int = 128,
    resume: bool = True,
    progress: bool = True,
) -> ActivationStore:
    """Harvest `n_tokens` token activations at `points` into a store at `out`, in data order.

    Each shard holds `shard_contexts` contexts and is written atomically before the manifest
    records it, so an interrupted harvest (Ctrl-C, a kill) resumes at the first missing shard
    and the finished store equals one harvested in one go. `resume=False` on an existing
    store is an error rather than an overwrite.
    """
    if n_tokens <= 0:
        raise InterpError(f"token count must be positive, got {n_tokens}")
    if dtype not in NP_DTYPES:
        raise InterpError(f"unsupported store dtype {dtype}: use float32, float16 or bfloat16")
    hm = HookManager(model)
    names = hm.resolve(points)
    out = Path(out)
    _check_writable(out)
    d = hm.d_model or int(hm.collect(next(token_batches(model, source, ctx_len, 1, ctx_len - 1, text_field)), names[0])[names[0]].shape[-1])
    wanted = {
        "version": STORE_VERSION,
        "model": getattr(model, "interp_name", type(model).__name__),
        "points": names,
        "dtype": NP_DTYPES[dtype],
        "d": d,
        "ctx_len": ctx_len,
        "n_tokens": n_tokens,
        "data": source,
        "text_field": text_field,
        "data_fingerprint": fingerprint(source, text_field),
        "shard_contexts": shard_contexts,
        "bos_excluded": True,
    }
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        have = ActivationStore(out).manifest
        if not resume:
            raise InterpError(f"{out} already holds an activation store: pass --resume to continue it, or choose another --out")
        differs = [k for k in wanted if k not in ("n_tokens",) and have.get(k) != wanted[k]]
        if differs:
            raise InterpError(
                f"the store at {out} was made with other settings ({', '.join(f'{k}={have.get(k)!r}' for k in differs)}): "
                "choose another --out or delete it"
            )
        shards = have["shards"]
        if sum(s["rows"] for s in shards) < n_tokens:
            # A short last shard (the end of an earlier, smaller target) is redone whole.
            full_rows = shard_contexts * (ctx_len - 1)
            shards = [s for s in shards if s["rows"] == full_rows]
    else:
        shards = []
    manifest = {**wanted, "shards": shards}
    done_rows = sum(s["rows"] for s in shards)
    body = ctx_len - 1
    batches = token_batches(model, source, ctx_len, batch_size, n_tokens, text_field, skip_contexts=len(shards) * shard_contexts)
    if n_tokens > done_rows:
        # Read the first batch before creating anything, so bad data leaves no folder behind.
        first = next(batches, None)
        batches = itertools.chain([] if first is None else [first], batches)
    try:
        for n in names:
            (out / n).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InterpError(f"cannot write to {out} ({exc.strerror}): choose a writable --out") from None
    bar = tqdm(total=n_tokens, initial=min(done_rows, n_tokens), unit="tok", desc="cache", disable=not progress)
    with torch.no_grad(), bar:
        if n_tokens > done_rows:
            pending: dict[str, list[torch.Tensor]] = {n: [] for n in names}
            pending_contexts = 0
            for tokens in batches:
                acts = token_activations(hm, tokens, names, dtype)
                for n in names:
                    pending[n].append(acts[n])
                pending_contexts += tokens.shape[0]
                bar.update(tokens.shape[0] and next(iter(acts.values())).shape[0])
                if pending_contexts >= shard_contexts:
                    _flush(out, manifest, pending, shard_contexts * body)
                    pending_contexts -= shard_contexts
            if sum(t.shape[0] for t in pending[names[0]]):
                _flush(out, manifest, pending, None)
    store = ActivationStore(out)
    if store.n_tokens != n_tokens:
        raise InterpError(f"data {source!r} ran out after {store.n_tokens} tokens of the {n_tokens} asked for: ask for fewer --tokens")
    return store


def _check_writable(out: Path) -> None:
    """InterpError unless `out` can be created (or written to) here."""
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InterpError(f"cannot write to {out} ({parent} is not a writable folder): choose a writable --out")


def _flush(out: Path, manifest: dict, pending: dict[str, list[torch.Tensor]], rows: int | None) -> None:
    """Write the first `rows` pending rows (all when None) of each point as the next shard."""
    index = len(manifest["shards"])
    name = f"shard_{index:05d}.npy"
    count = 0
    for point, chunks in pending.items():
        data = torch.cat(chunks)
        take = data if rows is None else data[:rows]
        pending[point] = [] if rows is None else [data[rows:]]
        arr = take.view(torch.uint16).numpy() if take.dtype == torch.bfloat16 else take.numpy()
        with atomic_path(out / point / name, suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        count = take.shape[0]
    manifest["shards"].append({"file": name, "rows": count})
    write_json(out / "manifest.json", manifest)

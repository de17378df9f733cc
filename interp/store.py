"""The activation store: token rows of hook points harvested once into sharded, memory-mapped files.

Rows are made by `interp.activations` (one per non-BOS token, row i of every point the same token).

Store layout (a folder):
    manifest.json                 what made it: the artifact schema (`interp.manifest`: model,
                                  points, widths, data_fingerprint, ctx_len), the per-token shapes,
                                  dtype, token target, text field, completed shards
    <point>/shard_00000.npy ...   float rows `(rows, width)`, one file per shard, memory-mapped on read
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.activations import point_shapes, token_rows
from interp.atomic import atomic_path, write_json
from interp.data import fingerprint, recordable, token_batches
from interp.errors import InterpError
from interp.hooks import HookManager
from interp.manifest import differences, make_manifest
from interp.models import model_name

STORE_VERSION = 2  # 2: `widths` and `shapes` per point (version 1 had one `d` for all points)
NP_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class ActivationStore:
    """A harvested store on disk (see the module docstring). Open with `ActivationStore(path)`.

    `points` are its hook points, `widths` `{point: width}` the row width of each and `shapes`
    `{point: per-token shape}` (a width is the product of its shape). Stores written before
    widths were recorded per point (one `d` for all) read the same way.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            raise InterpError(f"{self.path} is not an activation store (no manifest.json): make one with `interp cache`")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text())
            self.points: list[str] = list(self.manifest["points"])
            widths = self.manifest.get("widths") or {p: self.manifest["d"] for p in self.points}
            self.widths: dict[str, int] = {p: int(widths[p]) for p in self.points}
            shapes = self.manifest.get("shapes") or {}
            self.shapes: dict[str, tuple[int, ...]] = {p: tuple(int(x) for x in shapes.get(p, [self.widths[p]])) for p in self.points}
        except (ValueError, KeyError, TypeError) as exc:
            raise InterpError(f"{manifest} is corrupt ({exc!r}): delete the store and harvest it again") from None

    @property
    def d(self) -> int:
        """The row width, for a store whose points all have the same one (else read `widths[point]`)."""
        distinct = set(self.widths.values())
        if len(distinct) != 1:
            raise InterpError(f"the points of the store at {self.path} differ in width ({self.widths}): read store.widths[point]")
        return distinct.pop()

    @property
    def schema(self) -> dict[str, Any]:
        """The artifact schema's fields (`interp.manifest.make_manifest`) for this store."""
        m = self.manifest
        return make_manifest(m.get("model"), self.widths, m.get("data_fingerprint"), m.get("ctx_len"))

    @property
    def dtype(self) -> torch.dtype:
        return {v: k for k, v in NP_DTYPES.items()}[self.manifest["dtype"]]

    @property
    def precision_loss(self) -> dict[str, dict[str, float]] | None:
        """What storing in float16/bfloat16 lost, per point, over every stored row: `relative_rms_error`
        (sqrt(sum (stored - float32)^2 / sum float32^2)) and `max_abs_error`. None for a float32 store
        (or one written before this was recorded)."""
        entries = [s["cast_error"] for s in self.manifest["shards"] if "cast_error" in s]
        if not entries or len(entries) != len(self.manifest["shards"]):
            return None
        out = {}
        for p in self.points:
            sse, ss = sum(e[p][0] for e in entries), sum(e[p][1] for e in entries)
            out[p] = {"relative_rms_error": math.sqrt(sse / ss) if ss > 0 else 0.0, "max_abs_error": max(e[p][2] for e in entries)}
        return out

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
        """Shard `i` of `point`, memory-mapped: `(rows, width)` (no copy until used)."""
        arr = np.load(self._dir(point) / self.manifest["shards"][i]["file"], mmap_mode="r", allow_pickle=False)
        with warnings.catch_warnings():  # read-only map: torch warns that writes would be undefined
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr) if arr.dtype != np.uint16 else torch.from_numpy(arr).view(torch.bfloat16)

    def tensor(self, point: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """All rows of `point` as one in-memory tensor `(n_tokens, width)`.

        `out`, a preallocated `(n_tokens, width)` tensor, is filled instead of new memory (faster
        when it is read again and again: fresh pages cost more than the copy itself).
        """
        dtype = self.dtype
        self._dir(point)
        shape = (self.n_tokens, self.widths[point])
        if out is None:
            out = torch.empty(shape, dtype=dtype)
        elif out.shape != shape or out.dtype != dtype:
            raise InterpError(f"out must be a {dtype} tensor of shape {shape}, got {out.dtype} {tuple(out.shape)}")
        row = 0
        for i, shard in enumerate(self.manifest["shards"]):
            self._read_into(point, i, out[row : row + shard["rows"]])
            row += shard["rows"]
        return out

    def _read_into(self, point: str, i: int, out: torch.Tensor) -> None:
        """Read shard `i` of `point` straight into the contiguous `out` `(rows, width)`.

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
        """Yield `(batch_size, width)` batches of `point` (or `{point: batch}` for a list of points).

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

    def _buffer(self, key: str, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """A `(rows, width)` view of a buffer kept on the store and reused across calls."""
        buffers = self.__dict__.setdefault("_buffers", {})
        buf = buffers.get(key)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != width or buf.dtype != dtype:
            buf = buffers[key] = torch.empty((rows, width), dtype=dtype)
        return buf[:rows]

    def _gather(self, point: str, data: torch.Tensor, perm: torch.Tensor, reuse: bool) -> torch.Tensor:
        """`data[perm]`, into a reused buffer when `reuse`."""
        if not reuse:
            return data[perm]
        out = self._buffer(point + "#shuffled", data.shape[0], self.widths[point], data.dtype)
        return torch.index_select(data, 0, perm, out=out)

    def _load_group(self, point: str, group: list[int], reuse: bool) -> torch.Tensor:
        """Shards `group` of `point` concatenated `(rows, width)`, into a reused buffer when `reuse`."""
        if not reuse:
            return torch.cat([self.shard(point, i) for i in group])
        sizes = [self.manifest["shards"][i]["rows"] for i in group]
        buf = self._buffer(point, sum(sizes), self.widths[point], self.dtype)
        row = 0
        for i, n in zip(group, sizes):
            self._read_into(point, i, buf[row : row + n])
            row += n
        return buf


def check_store(
    store: str | os.PathLike | ActivationStore,
    model_name: str | None,
    points: str | Sequence[str],
    data_fingerprint: str | None,
    ctx_len: int | None,
    text_field: str | None,
) -> ActivationStore:
    """The store at `store`, after checking that it was made for this use; InterpError otherwise.

    It must hold every point of `points` (names, not selectors) and match the model name, the
    data fingerprint (`interp.data.fingerprint(source, text_field)`), the context length and the
    text field. An argument given as None is not checked. The error is one line naming every
    field that differs (the store's value vs the wanted one) and what to do.
    """
    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    names = [points] if isinstance(points, str) else list(points)
    want = {"model": model_name, "points": names, "data_fingerprint": data_fingerprint, "ctx_len": ctx_len}
    _refuse_other_settings(store, want, {"text_field": text_field}, "use a store made with these settings, or delete it and harvest again")
    return store


def _refuse_other_settings(store: ActivationStore, want: dict[str, Any], settings: dict[str, Any], fix: str) -> None:
    """InterpError naming every difference between `store` and `want` (schema fields, compared by
    `interp.manifest.differences`) or `settings` (store-only manifest fields; None: not checked)."""
    diff = differences(store.schema, want)
    diff += [f"{k} {store.manifest.get(k)!r} vs {v!r}" for k, v in settings.items() if v is not None and store.manifest.get(k) != v]
    if diff:
        raise InterpError(f"the store at {store.path} was made with other settings ({'; '.join(diff)}): {fix}")


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
    overwrite: bool = False,
) -> ActivationStore:
    """Harvest `n_tokens` token activations at `points` into a store at `out`, in data order.

    Each shard holds `shard_contexts` contexts (`shard_contexts * (ctx_len - 1)` rows of
    `(rows, width)` per point) and is written atomically before the manifest records it, so an
    interrupted harvest (Ctrl-C, a kill) resumes at the first missing shard and the finished
    store equals one harvested in one go. Reusing a store checks its manifest first (schema
    fields, dtype, shard size, text field); `resume=False` on an existing store is an error unless
    `overwrite`, which deletes it first; a non-empty folder that holds no store is always refused.
    """
    if n_tokens <= 0:
        raise InterpError(f"token count must be positive, got {n_tokens}")
    if dtype not in NP_DTYPES:
        raise InterpError(f"unsupported store dtype {dtype}: use float32, float16 or bfloat16")
    if shard_contexts < 1:
        raise InterpError(f"shard_contexts must be at least 1, got {shard_contexts}")
    hm = HookManager(model)
    names = hm.resolve(points)
    out = Path(out)
    _check_target(out)
    shapes = point_shapes(hm, names)
    schema = make_manifest(model_name(model), {n: math.prod(s) for n, s in shapes.items()}, fingerprint(source, text_field), ctx_len)
    settings = {"dtype": NP_DTYPES[dtype], "shard_contexts": shard_contexts, "text_field": text_field}
    wanted = {
        "version": STORE_VERSION,
        **schema,
        "shapes": {n: list(s) for n, s in shapes.items()},
        **settings,
        "n_tokens": n_tokens,
        "data": recordable(source),
        "bos_excluded": True,
    }
    shard_rows = shard_contexts * (ctx_len - 1)
    shards: list[dict[str, Any]] = []
    if overwrite and (out / "manifest.json").exists():
        _delete_store(ActivationStore(out))
    if (out / "manifest.json").exists():
        have = ActivationStore(out)
        if not resume:
            raise InterpError(f"{out} already holds an activation store: pass --resume to continue it, --overwrite to replace it, "
                              "or choose another --out")
        extra = {**settings, "points": names} if set(have.points) > set(names) else settings
        _refuse_other_settings(have, schema, extra, "choose another --out or delete it")
        shards = have.manifest["shards"]
        if have.n_tokens < n_tokens and any(s["rows"] != shard_rows for s in shards):
            # A short last shard (the end of an earlier, smaller target) is redone whole. The
            # manifest forgets it before its files are overwritten, so it never counts a shard
            # whose files are being replaced.
            shards = [s for s in shards if s["rows"] == shard_rows]
            write_json(out / "manifest.json", {**wanted, "shards": shards})
    manifest = {**wanted, "shards": shards}
    done_rows = sum(s["rows"] for s in shards)
    if n_tokens > done_rows:
        batches = token_batches(model, source, ctx_len, batch_size, n_tokens, text_field, skip_contexts=len(shards) * shard_contexts)
        first = next(batches, None)  # read before anything is created, so bad data leaves no folder behind
        try:
            if not shards:
                write_json(out / "manifest.json", manifest)  # from here on the folder is recognisably a store
            for n in names:
                (out / n).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InterpError(f"cannot write to {out} ({exc.strerror}): choose a writable --out") from None
        with tqdm(total=n_tokens, initial=done_rows, unit="tok", desc="cache", disable=not progress) as bar:
            pending: dict[str, list[torch.Tensor]] = {n: [] for n in names}
            pending_rows = 0
            for tokens in itertools.chain([] if first is None else [first], batches):
                # A lower-precision store is read in float32 and cast at the flush, which measures what the cast lost.
                acts = token_rows(hm, tokens, names, schema["widths"], torch.float32)
                for n in names:
                    pending[n].append(acts[n])
                pending_rows += len(acts[names[0]])
                bar.update(len(acts[names[0]]))
                while pending_rows >= shard_rows:  # a batch may hold several shards
                    _flush(out, manifest, pending, shard_rows, dtype)
                    pending_rows -= shard_rows
            if pending_rows:
                _flush(out, manifest, pending, None, dtype)
    store = ActivationStore(out)
    if store.n_tokens < n_tokens:
        raise InterpError(f"data {source!r} ran out after {store.n_tokens} tokens of the {n_tokens} asked for: ask for fewer --tokens")
    return store


def _delete_store(store: ActivationStore) -> None:
    """Remove a store's files: its manifest first (from then on the folder is no store), then its shards."""
    import shutil

    (store.path / "manifest.json").unlink()
    for point in store.points:
        shutil.rmtree(store._dir(point), ignore_errors=True)


def _check_target(out: Path) -> None:
    """InterpError unless `out` is a store, an empty folder, or a folder that can be created here."""
    if out.is_dir() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise InterpError(f"{out} holds other files and no activation store (no manifest.json): choose a new or empty --out")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InterpError(f"cannot write to {out} ({parent} is not a writable folder): choose a writable --out")


def _cast(rows: torch.Tensor, dtype: torch.dtype, point: str) -> tuple[torch.Tensor, list[float] | None]:
    """`rows` (float32) in the store's dtype, and what the cast lost: `[sum sq. error, sum sq. value,
    max abs error]` (None for float32). A value outside the dtype's range is an error, not an inf."""
    if dtype == torch.float32:
        return rows, None
    low = rows.to(dtype)
    if not torch.isfinite(low).all() and torch.isfinite(rows).all():
        raise InterpError(f"activations at {point} exceed the range of {NP_DTYPES[dtype]} (largest |value| "
                          f"{rows.abs().max().item():.4g}): store them as bfloat16 or float32 (--store-dtype)")
    err = (low.float() - rows).double()
    return low, [float(err.square().sum()), float(rows.double().square().sum()), float(err.abs().max()) if err.numel() else 0.0]


def _flush(out: Path, manifest: dict, pending: dict[str, list[torch.Tensor]], rows: int | None, dtype: torch.dtype) -> None:
    """Write the first `rows` pending float32 rows (all when None) of each point as the next shard, in `dtype`.

    Every point's file is complete (written and renamed atomically) before the manifest, itself
    written atomically, counts the shard; a shard file the manifest does not list (a writer that
    died before recording it) is never read, and is overwritten when the harvest resumes. For a
    float16/bfloat16 store the shard's entry records what the cast lost per point (`cast_error`).
    """
    index = len(manifest["shards"])
    name = f"shard_{index:05d}.npy"
    count = 0
    errors = {}
    for point, chunks in pending.items():
        data = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        take = data if rows is None else data[:rows]
        pending[point] = [] if rows is None else [data[rows:]]
        take, error = _cast(take, dtype, point)
        if error is not None:
            errors[point] = error
        arr = take.view(torch.uint16).numpy() if take.dtype == torch.bfloat16 else take.numpy()
        with atomic_path(out / point / name, suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        count = take.shape[0]
    manifest["shards"].append({"file": name, "rows": count, **({"cast_error": errors} if errors else {})})
    write_json(out / "manifest.json", manifest)

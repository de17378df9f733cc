"""Text in, token contexts out.

Sources (`source` arguments everywhere, `--data` on the CLI):
- `builtin`: the offline State of the Union corpus (`interp.corpus`, ~2.1M tokens);
- `builtin:NAME`: a labelled set shipped in `interp/datasets/NAME.jsonl` (e.g. `builtin:sentiment`);
- a local `.txt` (one document per blank-line-separated block), `.jsonl`, `.csv`, `.tsv` or
  `.parquet` file (column `text_field`);
- anything else is taken as a HuggingFace hub dataset name (streamed; needs internet).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import torch

from interp.errors import InterpError

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def builtin_dataset_path(name: str) -> Path:
    """Path of a labelled set shipped with the package (`interp/datasets/NAME.jsonl`)."""
    root = Path(str(resources.files("interp") / "datasets"))
    path = root / (name if Path(name).suffix else f"{name}.jsonl")
    if not path.exists():
        have = sorted(p.stem for p in root.glob("*.jsonl")) if root.exists() else []
        raise InterpError(f"no built-in dataset {name!r}: available are {', '.join(have) or 'none'}")
    return path


def _local_path(source: str) -> Path | None:
    if source.startswith("builtin:"):
        return builtin_dataset_path(source.split(":", 1)[1])
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            raise InterpError(f"data source {source} is a directory: give a .txt/.jsonl/.csv/.tsv/.parquet file")
        return path
    if path.suffix in (".txt", *TABLE_SUFFIXES) or source.startswith((".", "/", "~")):
        raise InterpError(f"data file {source} does not exist: check the path, or use --data builtin")
    return None


def read_table(path: Path) -> Any:
    """A local table file as a pandas DataFrame; InterpError when it cannot be parsed."""
    import csv

    import pandas as pd

    try:
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=path.suffix == ".jsonl")
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", quoting=csv.QUOTE_MINIMAL)
    except ValueError as exc:
        if path.stat().st_size == 0 or "empty" in str(exc).lower() or "No columns" in str(exc):
            raise InterpError(f"data file {path} is empty: give a file with at least one row") from None
        raise InterpError(f"could not parse {path} as {path.suffix[1:]} ({str(exc).splitlines()[0][:120]})") from None
    except Exception as exc:  # pandas raises parser-specific types
        if path.stat().st_size == 0:
            raise InterpError(f"data file {path} is empty: give a file with at least one row") from None
        raise InterpError(f"could not parse {path} as {path.suffix[1:]} ({str(exc).splitlines()[0][:120]})") from None


def _column(table: Any, field: str, path: Path, option: str) -> list:
    if field not in table.columns:
        raise InterpError(f"column {field!r} not in {path} (columns: {', '.join(map(str, table.columns))}): pass {option}")
    return table[field].tolist()


def iter_texts(source: str, text_field: str = "text", split: str = "train") -> Iterator[str]:
    """Yield the documents of `source` (see the module docstring), skipping empty ones."""
    if source == "builtin":
        from interp.corpus import documents

        for doc in documents():
            yield doc.read_text(encoding="utf-8")
        return
    path = _local_path(source)
    if path is None:
        yield from _hub_texts(source, text_field, split)
        return
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        docs = [block.strip() for block in text.split("\n\n") if block.strip()]
        if not docs:
            raise InterpError(f"data file {path} is empty: give a file with some text")
        yield from docs
        return
    if path.suffix not in TABLE_SUFFIXES:
        raise InterpError(f"unsupported data file type {path.suffix!r}: use .txt, .jsonl, .csv, .tsv or .parquet")
    texts = [str(t) for t in _column(read_table(path), text_field, path, "--text-field") if isinstance(t, str) and t.strip()]
    if not texts:
        raise InterpError(f"column {text_field!r} of {path} holds no text")
    yield from texts


def _hub_texts(name: str, text_field: str, split: str) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
        for row in ds:
            if text_field not in row:
                raise InterpError(f"column {text_field!r} not in hub dataset {name} (columns: {', '.join(row)}): pass --text-field")
            if row[text_field]:
                yield row[text_field]
    except InterpError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InterpError(
            f"could not read data {name!r} ({first}): not a local file, and not a reachable hub dataset; "
            "use --data builtin or a local .txt/.jsonl/.csv/.parquet file"
        ) from None


def load_labelled(source: str, text_field: str = "text", label_field: str = "label") -> tuple[list[str], list]:
    """(texts, labels) from a local table file or `builtin:NAME`."""
    path = _local_path(source)
    if path is None or path.suffix not in TABLE_SUFFIXES:
        raise InterpError(f"labelled data must be a local .jsonl/.csv/.tsv/.parquet file or builtin:NAME, got {source!r}")
    table = read_table(path)
    if len(table) == 0:
        raise InterpError(f"data file {path} is empty: give a file with at least one row")
    texts = [str(t) for t in _column(table, text_field, path, "--text-field")]
    labels = _column(table, label_field, path, "--label-field")
    return texts, labels


def recordable(source: str) -> str:
    """`source` as an artifact records it: a local file by its absolute path (so the record still
    finds it from another working directory), anything else as given."""
    path = _local_path(source) if not source.startswith("builtin") else None
    return str(path.resolve()) if path is not None else source


def fingerprint(source: str, text_field: str = "text") -> str:
    """A short content hash of a data source, for manifests (hub sources: their name)."""
    h = hashlib.sha256(f"{text_field}\0".encode())
    if source == "builtin":
        from interp.corpus import documents

        paths = documents()
    else:
        path = _local_path(source)
        if path is None:
            return "hub:" + source
        paths = [path]
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def bos_id(tokenizer: Any) -> int:
    """The id each context starts with: the tokenizer's BOS, else its EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise InterpError("the model's tokenizer has neither a BOS nor an EOS token to start contexts with")
    return int(tid)


def token_batches(
    model: Any,
    source: str,
    ctx_len: int = 128,
    batch_size: int = 8,
    n_tokens: int | None = None,
    text_field: str = "text",
    skip_contexts: int = 0,
) -> Iterator[torch.Tensor]:
    """Pack `source` into contexts `(batch, ctx_len)` of token ids, each starting with BOS.

    Documents are tokenized without special tokens and joined with EOS; every context is
    `[BOS] + ctx_len - 1` stream tokens. `n_tokens` bounds the number of stream tokens
    (BOS excluded); the last batch may be smaller. `skip_contexts` drops the first contexts
    without yielding them (for resuming). The same source always gives the same contexts.
    """
    if ctx_len < 2:
        raise InterpError(f"context length must be at least 2, got {ctx_len}")
    if n_tokens is not None and n_tokens <= 0:
        raise InterpError(f"token count must be positive, got {n_tokens}")
    tok = model.tokenizer if hasattr(model, "tokenizer") else model
    bos = bos_id(tok)
    eos = tok.eos_token_id if tok.eos_token_id is not None else bos
    body = ctx_len - 1
    max_contexts = None if n_tokens is None else -(-n_tokens // body)
    stream: list[int] = []
    batch: list[list[int]] = []
    made = 0
    docs = iter_texts(source, text_field)
    pending: list[str] = []
    exhausted = False
    while max_contexts is None or made < max_contexts:
        while len(stream) < body and not exhausted:
            pending = [d for _, d in zip(range(8), docs)]
            if not pending:
                exhausted = True
                break
            for ids in tok(pending, add_special_tokens=False)["input_ids"]:
                stream.extend(ids)
                stream.append(eos)
        if len(stream) < body:
            break
        context, stream = [bos] + stream[:body], stream[body:]
        made += 1
        if made <= skip_contexts:
            continue
        if max_contexts is not None and made == max_contexts and n_tokens % body:
            context = context[: 1 + n_tokens % body]
            if batch:
                yield torch.tensor(batch)
                batch = []
            yield torch.tensor([context])
            return
        batch.append(context)
        if len(batch) == batch_size:
            yield torch.tensor(batch)
            batch = []
    if batch:
        yield torch.tensor(batch)
    if made == 0:
        raise InterpError(f"data {source!r} holds fewer than {body} tokens: give more text or a shorter --ctx-len")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write rows as JSON lines, atomically."""
    from interp.atomic import write_text

    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

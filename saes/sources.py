"""Where `interp sae train` gets its activations: a checked `--store` folder, or a streamed harvest.

`stream_source` streams activations for `train_sae(s)` from any token position (so a resumed
run seeks instead of re-running the model), with the harvest in a background thread and, under
torchrun, the model's forwards split over the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from interp.errors import InterpError

SHUFFLE_TOKENS = 2**17  # a streamed harvest shuffles rows within blocks of about this many tokens


def check_store_folder(store: Path) -> None:
    """One-line refusal of a --store that is a file, or a non-empty folder that is not an activation store."""
    if store.exists() and not store.is_dir():
        raise InterpError(f"--store {store} is a file, not a folder: choose a new or empty folder for the activation store")
    if store.is_dir() and not (store / "manifest.json").exists() and any(store.iterdir()):
        raise InterpError(f"--store {store} holds other files and no activation store (no manifest.json): choose a new or empty folder")


@dataclass(frozen=True)
class Text:
    """A text source for training and evaluation: what `--data` names, its text field, its content
    fingerprint (`interp.data.fingerprint`), and whether it can be read here."""

    source: str
    text_field: str
    fingerprint: str
    readable: bool = True


def read_text_source(source: str, text_field: str) -> Text:
    """`source` as given by the user (it must be readable: errors are the data module's one-liners)."""
    from interp.data import fingerprint

    return Text(source, text_field, fingerprint(source, text_field))


def recorded_text(source: str | None, text_field: str | None, recorded_fp: str | None) -> Text | None:
    """A text an artifact recorded (a store's or an SAE's data), readable only when it is still there
    with the same content; None when nothing was recorded."""
    from interp.data import fingerprint

    if not source:
        return None
    field = text_field or "text"
    try:
        same = recorded_fp is None or fingerprint(source, field) == recorded_fp
    except InterpError:  # moved, deleted, or a hub source without the network
        same = False
    return Text(source, field, recorded_fp or "", readable=same)


def store_text(store, data: str | None, text_field: str | None) -> Text:
    """The text `sae train --store` trains on: the store's own unless `--data` names it.

    A store carries its data (`manifest.json`: `data`, `text_field`, `data_fingerprint`), so training on
    it needs nothing repeated. An explicit `--data` (and `--text-field`) must be the same text, compared
    by content: a copy at another path is the same text; other text is refused in one line naming both.
    """
    m = store.manifest
    recorded = recorded_text(m.get("data"), m.get("text_field"), m.get("data_fingerprint"))
    if data is None:
        if recorded is None:
            raise InterpError(f"the store at {store.path} does not record the text it was made from: pass --data with that text")
        return recorded
    given = read_text_source(data, text_field or (recorded.text_field if recorded else "text"))
    if recorded is not None and recorded.readable and given.text_field == recorded.text_field and _same_file(data, recorded.source):
        return recorded  # a copy of the store's text under another name
    if recorded is not None and m.get("data_fingerprint") and given.fingerprint != m["data_fingerprint"]:
        field = f" (--text-field {given.text_field})" if given.text_field != recorded.text_field else ""
        raise InterpError(f"--data {data}{field} is not the text the store at {store.path} was made from ({recorded.source}, "
                          f"--text-field {recorded.text_field}): drop --data to train on the store's own text, or use another --store")
    return given


def _same_file(a: str, b: str) -> bool:
    """Whether two local data files hold the same bytes (fingerprints also hash the file's name)."""
    import filecmp

    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_file() and pb.is_file() and filecmp.cmp(pa, pb, shallow=False)


def training_span(cfg) -> int | None:
    """Stream tokens from the start of the training text that training may have read (None: unknown)."""
    if cfg.train_contexts is None:
        return None
    return cfg.train_contexts * (cfg.context_size - 1)


def stream_source(bridge, points: list[str], data: str, tokens: int, ctx_len: int, batch_size: int, seed: int, device,
                   text_field: str, progress: bool = True, split: bool = True, dicts: bool = False,
                   shuffle_tokens: int = SHUFFLE_TOKENS):
    """A callable source for `train_sae(s)`: `source(start)` streams activations from token `start` on,
    without running the model over the text before the shuffle block holding it: rows of one point,
    or with `dicts` `{point: rows}` of each (one harvest: one forward per batch feeds every point).
    The harvest runs in a background thread (`interp.prefetch`), overlapped with training.
    """
    from interp import distributed
    from interp.activations import harvest
    from interp.prefetch import prefetch

    # Under torchrun (`split`: every rank harvests the same points) the ranks split the model's work
    # on every block and exchange the rows, on a group of their own: the harvest runs in a
    # background thread beside the training's collectives.
    group = distributed.new_group() if split else None

    def source(start: int):
        stream = harvest(bridge, points, data, tokens, ctx_len=ctx_len, out_batch_size=batch_size, seed=seed, device=device,
                         text_field=text_field, progress=progress, shuffle_buffer_tokens=shuffle_tokens, skip_tokens=start,
                         split_over=group)
        batches = prefetch(stream, depth=2)
        return batches if dicts else (batch[points[0]] for batch in batches)

    return source

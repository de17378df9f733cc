"""Where `interp sae train` gets its activations: a checked `--store` folder, or a streamed harvest.

`stream_source` streams activations for `train_sae(s)` from any token position (so a resumed
run seeks instead of re-running the model), with the harvest in a background thread and, under
torchrun, the model's forwards split over the ranks.
"""

from __future__ import annotations

from pathlib import Path

from interp.errors import InterpError

SHUFFLE_TOKENS = 2**17  # a streamed harvest shuffles rows within blocks of about this many tokens


def check_store_folder(store: Path) -> None:
    """One-line refusal of a --store that is a file, or a non-empty folder that is not an activation store."""
    if store.exists() and not store.is_dir():
        raise InterpError(f"--store {store} is a file, not a folder: choose a new or empty folder for the activation store")
    if store.is_dir() and not (store / "manifest.json").exists() and any(store.iterdir()):
        raise InterpError(f"--store {store} holds other files and no activation store (no manifest.json): choose a new or empty folder")


def training_span(cfg) -> int | None:
    """Stream tokens from the start of the training text that training may have read (None: unknown)."""
    if cfg.train_contexts is None:
        return None
    return cfg.train_contexts * (cfg.context_size - 1)


def stream_source(bridge, points: list[str], data: str, tokens: int, ctx_len: int, batch_size: int, seed: int, device,
                   text_field: str, progress: bool = True, split: bool = True, dicts: bool = False):
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
                         text_field=text_field, progress=progress, shuffle_buffer_tokens=SHUFFLE_TOKENS, skip_tokens=start,
                         split_over=group)
        batches = prefetch(stream, depth=2)
        return batches if dicts else (batch[points[0]] for batch in batches)

    return source

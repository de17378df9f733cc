"""Activation streams for training: open a source at a token position, re-cut it into batches.

A source (`ActivationSource`) is either an iterable of batches (`Tensor (n, d_in)`, or
`dict[point, Tensor (n, d)]` for several points) or a callable `source(start_token)` returning
such an iterable that begins `start_token` tokens in (cheap resume: nothing is read twice).
An iterable is consumed up to the start instead. Batches of any size are re-cut into the
training batch size.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Union

import torch

from interp.errors import InterpError

ActivationSource = Union[Iterable[Any], Callable[[int], Iterable[Any]]]


def open_at(source: ActivationSource, start: int) -> Iterator[Any]:
    """Batches from `start` tokens into the stream."""
    if callable(source) and not isinstance(source, Iterable):
        return iter(source(start))
    return skip(iter(source), start)


def rows(batch: Any) -> int:
    """Rows (tokens) in a batch `(n, d)` or `{point: (n, d)}`."""
    return next(iter(batch.values())).shape[0] if isinstance(batch, dict) else batch.shape[0]


def slice_rows(batch: Any, a: int, b: int | None) -> Any:
    """Rows `a:b` of a batch."""
    return {k: v[a:b] for k, v in batch.items()} if isinstance(batch, dict) else batch[a:b]


def cat(parts: list[Any]) -> Any:
    """Batches joined along the rows."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def skip(it: Iterator[Any], n: int) -> Iterator[Any]:
    """`it` without its first `n` rows."""
    for batch in it:
        got = rows(batch)
        if n >= got:
            n -= got
            continue
        yield slice_rows(batch, n, None) if n else batch
        n = 0


def rebatch(it: Iterator[Any], size: int, limit: int) -> Iterator[Any]:
    """Re-cut a stream into batches of `size` rows, stopping after `limit` rows."""
    parts: list[Any] = []
    have = 0
    for batch in it:
        if limit <= 0:
            break  # the rows already taken still make a last, shorter batch
        batch = slice_rows(batch, 0, limit) if rows(batch) > limit else batch
        limit -= rows(batch)
        parts.append(batch)
        have += rows(batch)
        while have >= size:
            full = cat(parts)
            yield slice_rows(full, 0, size)
            rest = slice_rows(full, size, None)
            have -= size
            parts = [rest] if have else []
    if have:
        yield cat(parts)


def pick(batch: Any, point: str | None) -> torch.Tensor:
    """The `(n, d)` rows of `point` (None: the batch is one point's tensor)."""
    if point is None:
        if isinstance(batch, dict):
            raise InterpError("the activation source yields dicts of hook points; use train_saes, or give train_sae one point's batches")
        return batch
    if point not in batch:
        raise InterpError(f"the activation source has no batches for {point!r} (it has {', '.join(batch)}); harvest that hook point")
    return batch[point]


def chain(head: list, rest: Iterator) -> Iterator:
    """`head`'s batches, then `rest`'s."""
    yield from head
    yield from rest

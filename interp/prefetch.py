"""Run a producer (e.g. `harvest`) in a background thread, a few items ahead of its consumer.

Harvesting activations (a model forward) and training an SAE on them are both long tensor
operations that release the GIL, so with the producer in a thread the two overlap: while the
trainer takes a step on batch i, the model is already computing batch i+1. `prefetch` keeps at
most `depth` finished items waiting, so memory stays bounded.

With `device`, every tensor the producer yields (also inside dicts, lists and tuples) is moved
there by the producer thread, from pinned memory and without blocking when the target is a GPU,
so the consumer never waits for a host-to-device copy. Activations already on the device (a
model on the GPU harvesting for an SAE on the same GPU) are passed through untouched: no CPU
round trip.

Errors raised by the producer are raised again in the consumer, at the item where they
happened. Closing the returned iterator (a `break`, an exception or Ctrl-C in the consumer)
stops the producer thread at its next item.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator

import torch

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def to_device(item: Any, device: torch.device | None) -> Any:
    """`item` with every tensor in it (nested dicts, lists, tuples) on `device` (None: unchanged)."""
    if device is None:
        return item
    if isinstance(item, torch.Tensor):
        if item.device == device:
            return item
        if device.type == "cuda" and item.device.type == "cpu":
            return item.pin_memory().to(device, non_blocking=True)
        return item.to(device)
    if isinstance(item, dict):
        return {k: to_device(v, device) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return type(item)(to_device(v, device) for v in item)
    return item


def prefetch(source: Iterable[Any], depth: int = 2, device: str | torch.device | None = None) -> Iterator[Any]:
    """Yield the items of `source`, produced by a background thread at most `depth` items ahead.

    The items and their order are exactly `source`'s. `device` moves tensors as they are produced
    (see the module docstring). `depth` must be at least 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    target = torch.device(device) if device is not None else None
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    copy_stream = torch.cuda.Stream(target) if target is not None and target.type == "cuda" else None

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if copy_stream is not None:
                    with torch.cuda.stream(copy_stream):
                        item = to_device(item, target)
                    copy_stream.synchronize()  # the copy is complete before the consumer sees the item
                else:
                    item = to_device(item, target)
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Raised(exc))
            return
        finally:
            close = getattr(source, "close", None)
            if stop.is_set() and callable(close):
                close()
        put(_DONE)

    thread = threading.Thread(target=produce, name="interp-prefetch", daemon=True)
    thread.start()
    return _consume(items, stop, thread)


def _consume(items: queue.Queue, stop: threading.Event, thread: threading.Thread) -> Iterator[Any]:
    try:
        while True:
            try:
                item = items.get(timeout=0.1)  # a timeout keeps Ctrl-C responsive in the main thread
            except queue.Empty:
                if not thread.is_alive() and items.empty():
                    raise RuntimeError("the prefetch thread stopped without finishing its source") from None
                continue
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)

"""The background producer that overlaps harvesting with training."""

import threading

import pytest
import torch

from interp.activations import harvest
from interp.prefetch import prefetch, to_device


def test_items_and_order_are_the_sources():
    source = [{"x": torch.full((2, 3), float(i))} for i in range(25)]
    got = list(prefetch(iter(source), depth=3))
    assert len(got) == 25 and all(torch.equal(a["x"], b["x"]) for a, b in zip(got, source))


def test_the_producer_runs_ahead_of_the_consumer():
    # The consumer holds item 0 until the producer has started on item 2: possible only if the
    # producer works while the consumer is busy.
    started = [threading.Event() for _ in range(4)]

    def source():
        for i in range(4):
            started[i].set()
            yield i

    it = prefetch(source(), depth=2)
    assert next(it) == 0
    assert started[2].wait(timeout=10)
    assert list(it) == [1, 2, 3]


def test_a_producer_error_is_raised_in_the_consumer_at_its_item():
    def source():
        yield 1
        yield 2
        raise ValueError("bad shard 3")

    got = []
    with pytest.raises(ValueError, match="bad shard 3"):
        for item in prefetch(source()):
            got.append(item)
    assert got == [1, 2]


def test_closing_early_stops_the_producer_within_depth_items():
    produced, closed = [], threading.Event()

    def source():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    before = {t.name for t in threading.enumerate()}
    it = prefetch(source(), depth=2)
    for item in it:
        if item == 5:
            break
    it.close()
    assert closed.wait(timeout=10)
    assert len(produced) <= 6 + 2 + 1  # consumed, queued, and the one in the producer's hands
    assert not [t for t in threading.enumerate() if t.name == "interp-prefetch" and t.name not in before and t.is_alive()]


def test_prefetched_harvest_equals_harvest(tiny_model, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Line {i}: the dog ran in the park and a bird sang." for i in range(80)))
    kw = dict(ctx_len=16, batch_size=4, out_batch_size=64, shuffle_buffer_tokens=200, seed=3)
    plain = list(harvest(tiny_model, "blocks.1.hook_resid_post", str(corpus), 600, **kw))
    ahead = list(prefetch(harvest(tiny_model, "blocks.1.hook_resid_post", str(corpus), 600, **kw), depth=2))
    assert len(plain) == len(ahead) > 3
    point = "blocks.1.hook_resid_post"
    assert all(torch.equal(a[point], b[point]) for a, b in zip(plain, ahead))
    # Gradients in the consumer are unaffected by the producer's no_grad forward.
    w = torch.ones(64, requires_grad=True)
    (ahead[0][point] @ w).sum().backward()
    assert w.grad is not None


def test_to_device_moves_nested_tensors_and_keeps_others():
    item = {"a": torch.zeros(2), "b": [torch.ones(1), 3], "c": "text"}
    moved = to_device(item, torch.device("cpu"))
    assert moved["a"] is item["a"] and moved["b"][1] == 3 and moved["c"] == "text"
    assert to_device(item, None) is item

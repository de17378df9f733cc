"""Data sources and packing."""

import json

import pytest
import torch

from interp import InterpError
from interp.data import builtin_dataset_path, iter_texts, load_labelled, token_batches

PROSE = "\n\n".join(f"Paragraph {i}: the cat sat on the mat while the dog ran in the park." for i in range(40))


@pytest.fixture
def prose_file(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text(PROSE)
    return path


def test_packing_is_exact_and_deterministic(tiny_model, prose_file):
    tok = tiny_model.tokenizer
    batches = list(token_batches(tiny_model, str(prose_file), ctx_len=16, batch_size=4, n_tokens=100))
    contexts = torch.cat([b if b.shape[1] == 16 else torch.nn.functional.pad(b, (0, 16 - b.shape[1]), value=-1) for b in batches])
    assert (contexts[:, 0] == tok.bos_token_id).all()
    body = [t for row in contexts[:, 1:].tolist() for t in row if t != -1]
    assert len(body) == 100
    # The stream is the documents' tokens joined by EOS, in order.
    stream = []
    for doc in PROSE.split("\n\n"):
        stream += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert body == stream[:100]
    again = list(token_batches(tiny_model, str(prose_file), ctx_len=16, batch_size=4, n_tokens=100, skip_contexts=3))
    assert torch.equal(torch.cat(again[:-1]), contexts[3 : 3 + sum(b.shape[0] for b in again[:-1])])


def test_batches_restart_at_the_skip_point_and_the_short_last_context_comes_alone(tiny_model, prose_file):
    # 100 stream tokens at ctx_len 16: 6 full contexts of 15 tokens, then one of 10.
    every = list(token_batches(tiny_model, str(prose_file), ctx_len=16, batch_size=1, n_tokens=100))
    assert [tuple(b.shape) for b in every] == [(1, 16)] * 6 + [(1, 11)]
    blocks = list(token_batches(tiny_model, str(prose_file), ctx_len=16, batch_size=4, n_tokens=100))
    assert [tuple(b.shape) for b in blocks] == [(4, 16), (2, 16), (1, 11)]
    resumed = list(token_batches(tiny_model, str(prose_file), ctx_len=16, batch_size=4, n_tokens=100, skip_contexts=4))
    assert [tuple(b.shape) for b in resumed] == [(2, 16), (1, 11)]
    assert torch.equal(resumed[0], torch.cat(every[4:6])) and torch.equal(resumed[1], every[6])


def test_table_sources_and_labelled(tmp_path, tiny_model):
    rows = [{"body": f"text number {i} is here", "y": i % 2} for i in range(10)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv = tmp_path / "d.csv"
    csv.write_text("body,y\n" + "".join(f"\"{r['body']}\",{r['y']}\n" for r in rows))
    for path in (jsonl, csv):
        assert list(iter_texts(str(path), text_field="body")) == [r["body"] for r in rows]
        texts, labels = load_labelled(str(path), "body", "y")
        assert texts == [r["body"] for r in rows] and labels == [r["y"] for r in rows]


def test_bad_sources(tmp_path, tiny_model):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    table = tmp_path / "t.jsonl"
    table.write_text('{"text": "hello"}\n')
    with pytest.raises(InterpError, match="does not exist"):
        list(iter_texts(str(tmp_path / "missing.txt")))
    with pytest.raises(InterpError, match="is empty"):
        list(iter_texts(str(empty)))
    with pytest.raises(InterpError, match="column 'body' not in .*columns: text"):
        list(iter_texts(str(table), text_field="body"))
    with pytest.raises(InterpError, match="fewer than 15 tokens"):
        list(token_batches(tiny_model, str(table), ctx_len=16))
    with pytest.raises(InterpError, match="no built-in dataset"):
        builtin_dataset_path("nope")


@pytest.mark.slow
def test_builtin_corpus_is_large_real_prose(smol):
    docs = list(iter_texts("builtin"))
    assert len(docs) == 233 and docs[0].startswith("Fellow-Citizens of the Senate")
    n = sum(len(ids) for ids in smol.tokenizer(docs[::10], add_special_tokens=False)["input_ids"])
    assert n * 10 > 2_000_000 * 0.8  # ~2.1M tokens in all

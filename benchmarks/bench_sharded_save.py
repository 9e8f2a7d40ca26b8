"""FSDP2 checkpoints: loop-blocked time per save, synchronous (Accelerate's sharded ``save_state``) against
``run.checkpoint.async`` (DCP's ``async_save``), side by side, on 2 CPU processes over gloo.

A model of about 100 MB (``nn.Linear(5000, 5000)``) with AdamW's state (200 MB more), sharded by torch's
``fully_shard`` (Accelerate's state forced into FSDP2, as ``benchmarks/gpu_check.py --dry-cpu`` does:
Accelerate picks FSDP only on GPUs), so each rank writes a half. Repeats alternate the order; the
blocked time is measured as in ``bench_async_save.py`` (the save, then the commit at the next display
step after a pause standing in for training). Also prints the bytes of each rank's shard files in
the last checkpoint against the full state's: no rank writes (or gathers) the full model or optimizer.

Run: python benchmarks/bench_sharded_save.py [--repeats 4] [--size 5000] [--pause 3]
(it launches itself on 2 processes with torchrun).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--size", type=int, default=5000, help="the Linear layer's width (5000: 100 MB)")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds of 'training' between saves")
    return parser.parse_args()


def _prepared(size: int):
    """An Accelerator in FSDP2 (forced), and the sharded model after one AdamW step (its state exists)."""
    from accelerate import Accelerator
    from gpu_check import _force_fsdp2

    os.environ.update(FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="NO_WRAP", FSDP_RESHARD_AFTER_FORWARD="true")
    accelerator = Accelerator(cpu=True)
    _force_fsdp2("no")
    torch.manual_seed(0)
    model = nn.Linear(size, size)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    accelerator.backward(model(torch.randn(4, size)).sum())
    optimizer.step()
    return accelerator, model


def main() -> None:
    args = _arguments()
    if "RANK" not in os.environ:  # launch self on 2 processes
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                   __file__, *sys.argv[1:]]
        raise SystemExit(subprocess.run(command, env={**os.environ, "ACCELERATE_USE_CPU": "1",
                                                      "OMP_NUM_THREADS": "1"}).returncode)
    from bench_async_save import _blocked

    from distlearn.training.checkpoint import Checkpoints, find

    accelerator, model = _prepared(args.size)
    state_mb = 3 * sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6  # weights + 2 moments
    times: dict[bool, list[float]] = {False: [], True: []}
    root = Path(tempfile.mkdtemp(dir=Path.cwd())) if accelerator.is_main_process else None
    root = Path(_broadcast(str(root)))
    for repeat in range(args.repeats + 1):  # the first repeat warms up
        for mode in ((False, True) if repeat % 2 else (True, False)):
            store = Checkpoints(root / str(mode), keep_last=2, asynchronous=mode)
            blocked = _blocked(store, accelerator, repeat + 1, args.pause)
            store.finish(accelerator)
            if repeat:
                times[mode].append(blocked)
    if accelerator.is_main_process:
        assert [p.name for p, _ in find(root / "True")] == [p.name for p, _ in find(root / "False")]
        sync, background = statistics.median(times[False]), statistics.median(times[True])
        print(f"FSDP2 on 2 CPU processes: weights + AdamW state {state_mb:.0f} MB in all, {args.repeats} saves each")
        print(f"synchronous save: median {sync * 1000:.0f} ms blocked   ({', '.join(f'{t * 1000:.0f}' for t in times[False])})")
        print(f"background save:  median {background * 1000:.0f} ms blocked   "
              f"({', '.join(f'{t * 1000:.0f}' for t in times[True])})")
        print(f"ratio background / synchronous: {background / sync:.3f} (target <= 0.25)")
        last = find(root / "True")[0][0]
        shards = [sum(f.stat().st_size for f in last.glob(f"*/__{rank}_0.distcp")) / 1e6 for rank in range(2)]
        print(f"each rank's shard files: {', '.join(f'{mb:.0f}' for mb in shards)} MB (full state {state_mb:.0f} MB)")
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    accelerator.wait_for_everyone()


def _broadcast(value: str) -> str:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


if __name__ == "__main__":
    main()

"""A pool of real worker processes, one gloo process group per world size, kept for the session.

Starting processes and process groups costs seconds on two cores; tests run
hundreds of reductions, so each world size's group is started once and then
fed functions to run. A hung collective fails within the group timeout, and a
group whose rank failed is restarted before it is used again.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import socket
import traceback
from typing import Any, Callable

GROUP_TIMEOUT_S = 20
# What the fork server imports once for every process forked from it: the pool's ranks and the warm
# launches of tests/warm.py (a cold `distlearn train` spends ~7 s of CPU on these imports).
PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "accelerate", "sklearn.datasets", "sklearn.model_selection",
           "matplotlib.backends.backend_agg", "matplotlib.figure", "matplotlib.ticker", "wandb",
           "distlearn.command.cli", "distlearn.command.train_command", "distlearn.training.learner"]


class RankError(RuntimeError):
    """A function raised on one or more ranks; carries their tracebacks."""


def fork_context() -> mp.context.ForkServerContext:
    """The session's fork server, started once with ``PRELOAD`` imported and one intra-op thread
    (OpenMP reads OMP_NUM_THREADS when torch is imported: on a busy 2-core machine more threads made
    a step many times slower)."""
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    kept = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if kept is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = kept
    return ctx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, conn) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1",
    )
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}",
        timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S),
    )
    while True:
        job = conn.recv()
        if job is None:
            break
        fn, args = job
        try:
            conn.send(("ok", fn(rank, world_size, *args)))
        except BaseException:  # report everything, the test decides
            conn.send(("error", traceback.format_exc()))
    dist.destroy_process_group()


class Pool:
    """``run(fn, world_size, *args)`` runs ``fn(rank, world_size, *args)`` on every rank."""

    def __init__(self) -> None:
        # Workers fork from a server that imported torch once: seconds saved per process.
        self._ctx = fork_context()
        self._groups: dict[int, list[tuple[Any, Any]]] = {}

    def _group(self, world_size: int) -> list[tuple[Any, Any]]:
        if world_size not in self._groups:
            port = _free_port()
            group = []
            for rank in range(world_size):
                parent, child = self._ctx.Pipe()
                proc = self._ctx.Process(target=_worker, args=(rank, world_size, port, child), daemon=True)
                proc.start()
                group.append((proc, parent))
            self._groups[world_size] = group
        return self._groups[world_size]

    def run(self, fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120) -> list[Any]:
        group = self._group(world_size)
        for _, conn in group:
            conn.send((fn, args))
        results, errors = [], []
        for rank, (proc, conn) in enumerate(group):
            if not conn.poll(timeout):
                self._stop(world_size)
                raise TimeoutError(f"rank {rank} of {world_size} gave no answer in {timeout} s")
            status, value = conn.recv()
            if status == "error":
                errors.append(f"--- rank {rank} of {world_size} ---\n{value}")
            results.append(value)
        if errors:
            self._stop(world_size)  # a failed rank may have left the group unusable
            raise RankError("\n".join(errors))
        return results

    def _stop(self, world_size: int) -> None:
        for proc, conn in self._groups.pop(world_size, []):
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()

    def close(self) -> None:
        for world_size in list(self._groups):
            self._stop(world_size)

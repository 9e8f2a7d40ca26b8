"""Starting and ending the processes of a run: the Accelerator, the processes' agreement on
WORLD_SIZE, the process group after a torchrun restart, the launch's name across restarts, and
the orderly end.

torch is imported when a function runs, not with this module (``--help`` stays torch-free).
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..runtime import launch
from .console import logger
from .errors import EXIT_TRAINING_FAILED, RunError

__all__ = [
    "FINISHED_GROUP", "build_run_accelerator", "check_world_size", "close", "exit_now", "group_failure",
    "is_group_failure", "join_restarted_group", "launch_identity",
]

PRECISION_KEY = "learner_configs.learner_parameters.mixed_precision"


def build_run_accelerator(resolved: dict[str, Any], tracking_kwargs: dict[str, Any]) -> Any:
    """The Accelerator of this launch, with the learner's precision, accumulation and data seed, and
    ``tracking_kwargs`` (``log_with``).

    Raises:
        RunError: The group could not form (exit 1), or the launch cannot serve the config (exit 2).
    """
    from accelerate.utils import InitProcessGroupKwargs

    from ..runtime.accelerator import build_accelerator

    params = resolved["learner_configs"].get("learner_parameters") or {}
    seed = params.get("seed")
    kwargs = dict(params.get("accelerator_kwargs") or {})
    kwargs.update(tracking_kwargs)
    # run.timeout_s bounds every collective: a rank that never arrives ends the run instead of a 30-minute wait
    kwargs["kwargs_handlers"] = [*kwargs.get("kwargs_handlers", []),
                                 InitProcessGroupKwargs(timeout=timedelta(seconds=resolved["run"]["timeout_s"]))]
    check_world_size(resolved["run"]["timeout_s"])  # before the group: a disagreement would hang or time out in it
    try:
        join_restarted_group(resolved["run"]["timeout_s"])
    except Exception as exc:  # noqa: BLE001 - a group that cannot form is a launch failure, not bad input
        raise group_failure(exc) from None
    try:
        return build_accelerator(
            # the config's value wins over the launcher's, as in Accelerate; null: the launcher's
            mixed_precision=params.get("mixed_precision"),
            gradient_accumulation_steps=params.get("gradient_accumulation_steps") or 1,
            seed=resolved["run"]["seed"] if seed is None else seed,
            **kwargs,
        )
    except (ValueError, RuntimeError) as exc:  # fp16 on CPU, the CPU trap: the launch is wrong, not the code
        raise _launch_error(exc, params.get("mixed_precision")) from None


def _launch_error(exc: Exception, configured_precision: str | None) -> RunError:
    """The error for an Accelerator this launch could not build; fp16 says where it came from."""
    if is_group_failure(exc):  # peers that never answered (e.g. after a restart): not the user's input
        return group_failure(exc)
    if "fp16" not in str(exc):
        return RunError(f"cannot start training in this launch: {exc}")
    if configured_precision == "fp16":
        return RunError(f"{PRECISION_KEY}: {exc} Set {PRECISION_KEY}=bf16 (or no).")
    return RunError(
        f"{PRECISION_KEY} is null, so the launcher's precision applies, and it is fp16 (ACCELERATE_MIXED_PRECISION, "
        f"from accelerate launch --mixed_precision or MIXED_PRECISION for the launch scripts): {exc} Launch "
        f"with bf16 or no, or set {PRECISION_KEY}=bf16 (the config's value wins)."
    )


def join_restarted_group(timeout_s: float) -> None:
    """After a torchrun restart, join the process group through a store prefix of this attempt's own.

    torchrun (c10d rendezvous) shares its rendezvous TCPStore with the workers
    (``TORCHELASTIC_USE_AGENT_STORE=True``) without a per-attempt prefix, so the
    workers of a restarted group can read the addresses the dead attempt left there
    and dial them ("Connection refused"). A group initialised here, through
    ``/distlearn/attempt_<n>/``, sees only this attempt's keys; Accelerate then uses
    it. (launch/torchrun.sh sets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 instead: a
    fresh store per rendezvous round.)
    """
    import torch
    import torch.distributed as dist

    restart = launch.restart_count()
    if restart == 0 or not launch.agent_store_shared() or dist.is_initialized():
        return
    world, rank = launch.launched_world_size(), launch.rank()
    timeout = timedelta(seconds=timeout_s)
    host, port = launch.rendezvous_address()
    store = dist.TCPStore(host, port, world, is_master=False, timeout=timeout)
    gpu = torch.cuda.is_available() and not launch.force_cpu()
    dist.init_process_group("nccl" if gpu else "gloo", store=dist.PrefixStore(f"/distlearn/attempt_{restart}", store),
                            rank=rank, world_size=world, timeout=timeout)
    logger.info("restart %d: joined the process group through this attempt's store prefix", restart)


_WORLD_KEY = "/distlearn/world_size/"  # + rank: the WORLD_SIZE that rank was started with
_WORLD_READ = "/distlearn/world_size_read"  # how many ranks that disagree have read the others' values
_STORE: list[Any] = []  # the rendezvous store, kept open: rank 0's server is the one torch's env:// reuses
_SNAPSHOT_S = 3.0  # how long a rank that saw a disagreement waits for the others' values, for its message
_LINGER_S = 10.0  # how long rank 0, which hosts the store, waits for the others to read it before it exits


def check_world_size(timeout_s: float) -> None:
    """End every process of a hand launch that disagrees on ``WORLD_SIZE``, before the process group forms.

    Processes started with different world sizes do not form one group: the one expecting more
    waits for a rank that never comes, the other forms a group and times out in its first collective.
    So each process writes its ``WORLD_SIZE`` into the rendezvous store (rank 0 hosts it at
    ``MASTER_ADDR:MASTER_PORT``, as torch's ``env://`` does, which then reuses it) and reads those
    of ranks 0 to its ``WORLD_SIZE`` - 1, in order. A rank that disagrees with rank 0 sees so at
    once; the others see the disagreement among their peers. Every rank that sees one ends with a
    message naming each rank's ``WORLD_SIZE`` (exit 2). Not under torchrun's agent (its rendezvous
    agrees on the world) nor with WORLD_SIZE=1 (no group: a peer expecting it says it never answered).

    Raises:
        RunError: The world sizes disagree (exit 2), or a rank never answered within ``timeout_s`` (exit 1).
    """
    import torch.distributed as dist

    rendezvous = launch.env_rendezvous()
    if rendezvous is None or dist.is_initialized():  # one process, torchrun's agent, or a group that exists
        return
    host, port, rank, world = rendezvous
    if not 0 <= rank < world:
        raise RunError(f"rank {rank}: RANK={rank} is not below WORLD_SIZE={world}. {_SAME_WORLD}", every_rank=True)
    store = _rendezvous_store(host, port, rank, world, timeout_s)
    store.set(f"{_WORLD_KEY}{rank}", str(world))
    sizes: dict[int, int] = {}
    for peer in range(world):
        sizes[peer] = _peer_world_size(store, peer, rank, world, timeout_s)
        if sizes[peer] != world:
            break
    else:
        return
    told = _other_world_sizes(store, sizes, max(world, *sizes.values()), min(timeout_s, _SNAPSHOT_S))
    store.add(_WORLD_READ, 1)
    if rank == 0:  # the store dies with this process: let the others read it first
        _wait_for_count(store, _WORLD_READ, sum(size is not None for size in told.values()), min(timeout_s, _LINGER_S))
    said = ", ".join(f"rank {peer} has WORLD_SIZE={size}" if size is not None else f"rank {peer} has not started"
                     for peer, size in sorted(told.items()))
    raise RunError(f"rank {rank} (WORLD_SIZE={world}): the processes of this launch disagree on WORLD_SIZE: {said}. "
                   f"{_SAME_WORLD}", every_rank=True)


_SAME_WORLD = ("Start every process with the same WORLD_SIZE (the number of processes) and its own RANK, 0 to "
               "WORLD_SIZE - 1, with the same MASTER_ADDR and MASTER_PORT; a launcher (torchrun, accelerate launch, "
               "launch/*.sh) sets them all.")


def _rendezvous_store(host: str, port: int, rank: int, world: int, timeout_s: float) -> Any:
    """Rank 0: the rendezvous store's server at ``host:port`` (multi-tenant, so that the process group's
    own rendezvous reuses it); the others: a client of it."""
    import torch.distributed as dist

    try:
        store = dist.TCPStore(host, port, None, rank == 0, timedelta(seconds=timeout_s), multi_tenant=True)
    except (RuntimeError, ValueError) as exc:  # DistNetworkError, DistStoreError are RuntimeErrors
        if rank == 0:
            raise RunError(f"cannot start training in this launch: rank 0 cannot host the process group at "
                           f"MASTER_ADDR={host} MASTER_PORT={port}: {_first_line(exc)}. Another process may hold "
                           "that port (a second process started with RANK=0?): pick a free MASTER_PORT.",
                           every_rank=True) from None
        raise RunError(
            f"rank {rank} (WORLD_SIZE={world}): rank 0 did not answer at MASTER_ADDR={host} MASTER_PORT={port} "
            f"within run.timeout_s={timeout_s:g} s. Rank 0 is not running, cannot be reached from here, or was "
            f"started without a WORLD_SIZE above 1. {_SAME_WORLD}",
            exit_code=EXIT_TRAINING_FAILED, together=False, every_rank=True,
        ) from None
    _STORE.append(store)
    return store


def _peer_world_size(store: Any, peer: int, rank: int, world: int, timeout_s: float) -> int:
    """The WORLD_SIZE that rank ``peer`` wrote, waiting up to ``timeout_s`` for it."""
    key = f"{_WORLD_KEY}{peer}"
    try:
        store.wait([key], timedelta(seconds=timeout_s))
        return int(store.get(key))
    except RuntimeError as exc:  # a timeout, or rank 0's store gone
        detail = _first_line(exc)
        closed = "closed" in detail.lower() or "reset" in detail.lower()
        why = ("the store closed: rank 0, which hosts it, ended (it ran with WORLD_SIZE=1, alone, or failed: see "
               "its log)" if closed else f"it did not start within run.timeout_s={timeout_s:g} s")
        raise RunError(
            f"rank {rank} (WORLD_SIZE={world}): rank {peer} never wrote its WORLD_SIZE into the rendezvous store: "
            f"{why} ({detail}). {_SAME_WORLD}",
            exit_code=EXIT_TRAINING_FAILED, together=False, every_rank=True,
        ) from None


def _first_line(exc: BaseException) -> str:
    """An exception's first line: torch's store errors go on with a C++ backtrace."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _other_world_sizes(store: Any, sizes: dict[int, int], ranks: int, limit_s: float) -> dict[int, int | None]:
    """``sizes`` with the WORLD_SIZE of every other rank below ``ranks`` (None: not there within ``limit_s``),
    for the message: the ranks start at their own pace."""
    import time

    deadline = time.monotonic() + limit_s
    found: dict[int, int | None] = dict(sizes)
    for peer in range(ranks):
        if peer in found:
            continue
        try:
            store.wait([f"{_WORLD_KEY}{peer}"], timedelta(seconds=max(deadline - time.monotonic(), 0.01)))
            found[peer] = int(store.get(f"{_WORLD_KEY}{peer}"))
        except RuntimeError:  # not there in time, or the store closed
            found[peer] = None
    return found


def _wait_for_count(store: Any, key: str, count: int, limit_s: float) -> None:
    """Wait until the counter ``key`` reaches ``count``, at most ``limit_s`` seconds."""
    import time

    deadline = time.monotonic() + limit_s
    while store.add(key, 0) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def is_group_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the other processes of the group never answered."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        marker in text for marker in ("connectFullMesh", "Connection refused", "Connection reset", "timed out connecting")
    )


def group_failure(exc: BaseException) -> RunError:
    """A process group that could not form: a failed launch (exit 1), which a launcher may restart."""
    restart = launch.restart_count()
    when = f" on restart {restart} of this launch" if restart else ""
    return RunError(
        f"the process group could not form{when}: {exc}. The other processes did not answer: check that every "
        "process of the launch is running and can reach the others (with torchrun, use --rdzv-backend c10d "
        "or --standalone, or launch/torchrun.sh).",
        exit_code=EXIT_TRAINING_FAILED, together=False,
    )


def launch_identity() -> str | None:
    """A name for this launch that stays the same when the launcher restarts or requeues it, or None.

    ``DISTLEARN_RUN_ID`` (launch/torchrun.sh sets it; launch/slurm.sbatch names the folder of its job
    itself, since every run of an allocation shares ``SLURM_JOB_ID``), else under torchrun (or ``accelerate launch``) the agent process's start time with torchrun's
    ``TORCHELASTIC_RUN_ID`` (a fresh id per ``--standalone`` launch) or, when that is ``none``, the
    agent's pid. None for a launch that cannot restart. On several nodes the agent of rank 0 can
    change between restarts: set DISTLEARN_RUN_ID (the same on every node) or run.output_dir.
    """
    named = launch.distlearn_run_id()
    if named:
        return _safe_name(named)
    if not launch.under_torchelastic_agent():
        return None
    agent = os.getppid()  # the torchrun agent: it outlives the workers it restarts
    started = _process_start(agent)
    stamp = started.strftime("%Y%m%d-%H%M%S") + "-" if started is not None else ""
    run_id = launch.torchelastic_run_id()
    if run_id and run_id != "none":
        return stamp + _safe_name(run_id)[:8]
    return f"{stamp}{agent}"


def _process_start(pid: int) -> datetime | None:
    """When process ``pid`` started, from /proc; None where there is no /proc."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip())


def close(accelerator: Any, together: bool) -> None:
    """End the run on every rank in order: trackers, a barrier, then the process group.

    A process that exits while gloo's threads still talk to a peer can abort with "terminate
    called without an active exception" (exit -6) after a successful run: Accelerate's
    ``end_training`` destroys the group at once, while another rank may still be writing
    the outputs. The barrier makes every rank arrive first. ``together``: all ranks are on
    the same path (success, or an error they agreed on); after an error on one rank only,
    nobody waits for the others.
    """
    import torch.distributed as dist

    if together and dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception as exc:  # a rank is gone: nothing left to wait for
            logger.debug("barrier before teardown failed: %s", exc)
    accelerator.end_training()  # finishes trackers, destroys the process group
    if dist.is_available() and dist.is_initialized():  # e.g. a fork launch, which Accelerate leaves alone
        dist.destroy_process_group()


# A multi-process run's objects once its group is closed. Freeing a DDP model after the group
# is destroyed runs gloo's ProcessGroup destructor, which joins its worker threads and, seen
# here after successful two-process runs, can block forever (or abort: "terminate called
# without an active exception"). Everything is written and flushed by then, so the command
# exits without running those destructors.
FINISHED_GROUP: list[Any] = []


def exit_now(code: int) -> None:
    """Flush every stream and end the process with ``code``, skipping interpreter teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to flush
            pass
    os._exit(code)

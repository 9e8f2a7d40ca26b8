"""The launch as the environment describes it: every launcher variable distlearn reads is read here.

Rank, local rank and world size come from torchrun / ``accelerate launch`` (and MPI's names for
the world size). This module also notices a launch that asked for several CPU processes and
started one:

``accelerate launch --cpu --num_processes 2`` takes Accelerate's simple launcher,
which fans out only through ``mpirun``: it starts ONE process, with the
rendezvous variables (``MASTER_ADDR``/``MASTER_PORT``) of a multi-process run but
no ``WORLD_SIZE``. The run is then correct but single-process, which is not what
was asked for; :func:`single_process_launch_warning` says so and names a command
that starts the processes. It reads the environment and, on Linux, the
launcher's command line; it imports nothing heavy.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

__all__ = [
    "launched_world_size", "local_rank", "rank", "single_process_launch_warning", "warn_single_process_launch",
]

_ACCELERATE_MARK = "ACCELERATE_MIXED_PRECISION"  # every `accelerate launch` sets it for its children


def launched_world_size() -> int:
    """How many processes the launcher started (torchrun/accelerate set WORLD_SIZE, MPI its own)."""
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def rank() -> int:
    """This process's global rank as the launcher set it (0 without a launcher)."""
    return int(os.environ.get("RANK") or 0)


def local_rank() -> int | None:
    """This process's rank on its node as the launcher set it (``LOCAL_RANK``), or None without one."""
    value = os.environ.get("LOCAL_RANK", "")
    return int(value) if value.isdigit() else None


def single_process_launch_warning(
    environ: Mapping[str, str] | None = None, parent_cmdline: list[str] | None = None
) -> str | None:
    """A warning when ``accelerate launch`` was asked for several processes and started this one alone.

    Args:
        environ: The environment (default ``os.environ``).
        parent_cmdline: The launcher's arguments (default: read from ``/proc`` where it exists).

    Returns:
        The warning text, or None when the launch looks as intended.
    """
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE") or env.get("RANK") or _ACCELERATE_MARK not in env or not env.get("MASTER_PORT"):
        return None  # a real multi-process launch, no accelerate launch, or one process asked for
    argv = _parent_cmdline() if parent_cmdline is None else parent_cmdline
    if argv and "accelerate" not in " ".join(argv[:3]):
        return None  # MASTER_PORT came from somewhere else
    n = _num_processes(argv) or "several"
    script = _script(argv)
    return (
        f"accelerate launch was asked for {n} processes but started only this one: with --cpu (or a "
        f"MULTI_CPU config) it starts several only through mpirun. This run trains on one process. "
        f"To start {n} CPU processes use: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
        f"--num_processes {n if isinstance(n, int) else 'N'} {script}  (or DISTLEARN_CPU_PROCS="
        f"{n if isinstance(n, int) else 'N'} launch/train.sh CONFIG)"
    )


_WARNED: list[str] = []  # the warning given in this process, if any


def warn_single_process_launch(emit: Callable[[str], object]) -> None:
    """Give :func:`single_process_launch_warning` through ``emit``, at most once per process.

    The CLI (before it reads the config) and ``build_accelerator`` both call it: a run warns once.
    """
    if _WARNED:
        return
    warning = single_process_launch_warning()
    if warning is not None:
        _WARNED.append(warning)
        emit(warning)


def _parent_cmdline() -> list[str]:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _num_processes(argv: list[str]) -> int | None:
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--num[_-]processes(?:=(\d+))?", arg)
        if match:
            value = match.group(1) or (argv[i + 1] if i + 1 < len(argv) else "")
            return int(value) if value.isdigit() else None
    return None


def _script(argv: list[str]) -> str:
    """What was launched (``-m distlearn train ...`` or ``script.py ...``), for the suggested command."""
    try:
        start = argv.index("launch") + 1
    except ValueError:
        return "-m distlearn train ..."
    rest = argv[start:]
    i = 0
    while i < len(rest) and rest[i].startswith("-") and rest[i] not in ("-m", "--module"):
        flag = rest[i]
        i += 1 if "=" in flag or flag in ("--cpu", "--multi_gpu", "--use_cpu", "--debug") else 2
    return " ".join(rest[i:]) or "-m distlearn train ..."

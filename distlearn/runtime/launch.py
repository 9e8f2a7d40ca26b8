"""The launch as the environment describes it: every launcher variable distlearn reads is read here.

Rank, local rank and world size come from torchrun / ``accelerate launch`` (and MPI's names for
the world size); torchrun's restarts and rendezvous (``TORCHELASTIC_*``, ``MASTER_ADDR/PORT``);
what ``accelerate launch`` asked for (``ACCELERATE_*``); what the launch scripts in ``launch/``
pass down (``DISTLEARN_*``); the C++ compiler inductor uses (``CXX``). W&B's variables are read
by ``distlearn.command.tracking``, which owns W&B. Each reader takes the environment as an argument
(default ``os.environ``) where a test needs another one. This module also notices a launch that asked for several CPU processes and
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
    "agent_store_shared", "cxx_compiler", "deepspeed_asked", "distlearn_run_id", "env_rendezvous", "exit_code_file", "fsdp_asked",
    "force_cpu", "launch_script_command", "launched_by_accelerate", "launched_by_torchelastic", "launched_world_size",
    "launcher_mixed_precision", "local_rank", "rank", "rendezvous_address", "restart_count", "single_process_launch_warning",
    "torchelastic_run_id", "under_torchelastic_agent", "warn_single_process_launch",
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


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How often torchrun restarted this launch's workers (``TORCHELASTIC_RESTART_COUNT``; 0 without it)."""
    try:
        return int(_env(environ).get("TORCHELASTIC_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def under_torchelastic_agent(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a torchrun agent started this process, one that can restart it (``TORCHELASTIC_RESTART_COUNT`` set)."""
    return "TORCHELASTIC_RESTART_COUNT" in _env(environ)


def launched_by_torchelastic(environ: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun started this process (``TORCHELASTIC_RUN_ID`` set)."""
    return "TORCHELASTIC_RUN_ID" in _env(environ)


def torchelastic_run_id(environ: Mapping[str, str] | None = None) -> str:
    """torchrun's ``TORCHELASTIC_RUN_ID`` (a fresh id per ``--standalone`` launch), ``"none"`` when unset."""
    return _env(environ).get("TORCHELASTIC_RUN_ID", "none")


def agent_store_shared(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the workers share torchrun's rendezvous store (``TORCHELASTIC_USE_AGENT_STORE=True``)."""
    return _env(environ).get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def rendezvous_address(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Where the process group meets: (``MASTER_ADDR``, ``MASTER_PORT``); both must be set."""
    env = _env(environ)
    return env["MASTER_ADDR"], int(env["MASTER_PORT"])


def env_rendezvous(environ: Mapping[str, str] | None = None) -> tuple[str, int, int, int] | None:
    """(``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``) of a several-process launch whose
    processes meet through these variables alone (by hand, srun, a script), or None: one process, a
    variable missing or not a number, or a torchrun agent (its rendezvous agreed on the world already)."""
    env = _env(environ)
    needed = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
    if under_torchelastic_agent(env) or not all(env.get(k) for k in needed):
        return None
    try:
        port, this_rank, world = int(env["MASTER_PORT"]), int(env["RANK"]), int(env["WORLD_SIZE"])
    except ValueError:
        return None  # torch's own rendezvous says what is wrong with it
    return (env["MASTER_ADDR"], port, this_rank, world) if world > 1 else None


def force_cpu(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the launch asked for the CPU although a GPU may be there (``ACCELERATE_USE_CPU``)."""
    return _env(environ).get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def launched_by_accelerate(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``accelerate launch`` started this process (it sets ``ACCELERATE_MIXED_PRECISION`` for its children)."""
    return _ACCELERATE_MARK in _env(environ)


def launcher_mixed_precision(environ: Mapping[str, str] | None = None) -> str:
    """The launcher's precision (``ACCELERATE_MIXED_PRECISION``, from ``accelerate launch --mixed_precision``
    or its config file), lower case; ``"no"`` without one."""
    return _env(environ).get(_ACCELERATE_MARK, "no").strip().lower()


def deepspeed_asked(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the Accelerate config asked for DeepSpeed (``ACCELERATE_USE_DEEPSPEED=true``)."""
    return _env(environ).get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def fsdp_asked(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the Accelerate config asked for FSDP (``ACCELERATE_USE_FSDP``)."""
    return _env(environ).get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1")


def distlearn_run_id(environ: Mapping[str, str] | None = None) -> str | None:
    """``DISTLEARN_RUN_ID`` (launch/torchrun.sh sets it: the same across restarts), None when unset or blank."""
    return _env(environ).get("DISTLEARN_RUN_ID", "").strip() or None


OUTPUTS_TEST_SIGNAL = "DISTLEARN_TEST_OUTPUTS_SIGNAL"  # tests only, see outputs_test_signal()


def outputs_test_signal(environ: Mapping[str, str] | None = None) -> str:
    """``DISTLEARN_TEST_OUTPUTS_SIGNAL``, for tests only: ``"<point>:<SIGNAL>"`` makes the outputs' writer
    send itself that signal at that point (``stage:k``, ``swap:k``); ``""`` when unset."""
    return _env(environ).get(OUTPUTS_TEST_SIGNAL, "")


def exit_code_file(environ: Mapping[str, str] | None = None) -> str | None:
    """``DISTLEARN_EXIT_CODE_FILE``: where the launch scripts want a stopped run's exit code; None when unset."""
    return _env(environ).get("DISTLEARN_EXIT_CODE_FILE") or None


def launch_script_command(environ: Mapping[str, str] | None = None) -> str:
    """``DISTLEARN_LAUNCH_COMMAND``: how a launch script was started (e.g. ``"DISTLEARN_CPU_PROCS=2 launch/train.sh"``),
    ``""`` when not under one."""
    return _env(environ).get("DISTLEARN_LAUNCH_COMMAND", "").strip()


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
    env = _env(environ)
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


def cxx_compiler(environ: Mapping[str, str] | None = None) -> str | None:
    """The C++ compiler the environment names (``CXX``; inductor's own choice when unset), or None."""
    return _env(environ).get("CXX") or None

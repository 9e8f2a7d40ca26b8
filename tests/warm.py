"""Warm launches: ``python -m MODULE ARGS`` or ``python SCRIPT ARGS`` in a fresh process that skips the imports.

Not a test module. A one-process `distlearn train` started cold spends ~7 s of CPU importing torch,
torch._dynamo, Accelerate, scikit-learn and matplotlib before it trains for a fraction of a second.
Here the process is forked from the session's fork server (tests/dist_pool.py), which imported them
once; everything after the imports is the command's own: its environment (set before the module or
script runs), its folder, argv, its own session, stdout and stderr as files, the exit code from
``SystemExit`` or ``os._exit``, death by a real signal, the interpreter's exit (threads joined,
atexit handlers run). ``Popen`` mimics ``subprocess.Popen`` for the tests that wait on or signal
a launch.

``Ranks`` starts several such processes as one hand launch (``MASTER_ADDR``/``MASTER_PORT``, ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` set per rank, as srun or a script does) and
behaves as torchrun's agent does when a rank fails: the others get SIGTERM, then SIGKILL after a
grace period, and the launch exits 1. A cold ``torchrun`` spends ~9 s of CPU (its own imports and
each rank's); forked, a rank costs what it trains.

Claims about the interpreter's start itself (what a command imports, the console script) and every
launcher (torchrun, accelerate launch, the launch scripts: their restarts, messages, signals
forwarding) keep cold launches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dist_pool import _free_port, fork_context

# torchrun's agent waits this long for the other ranks to stop after SIGTERM before it kills them
STOP_GRACE_S = 30.0


def _redirect(fd: int, target: str | int | None) -> None:
    """Point ``fd`` at a file path (appended to) or another fd; ``None`` leaves it as inherited."""
    if target is None:
        return
    if isinstance(target, int):
        os.dup2(target, fd)
        return
    new = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(new, fd)
    os.close(new)


def _fresh_streams() -> None:
    """sys.stdout and sys.stderr as a new interpreter opens them on fds 1 and 2: stdout block-buffered
    unless a terminal, stderr line-buffered, both unbuffered under PYTHONUNBUFFERED. The fork server's
    own may write each piece of a print() apart, which interleaves the lines of ranks sharing a file."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        stream = open(fd, "w", buffering=1 if fd == 2 or os.isatty(fd) else -1, closefd=False,
                      encoding=getattr(old, "encoding", None), errors=getattr(old, "errors", None))
        if unbuffered:
            stream.reconfigure(write_through=True)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _child(command: list[str], cwd: str, env: dict[str, str], stdout: str | None, stderr: str | int | None) -> None:
    """Runs in the forked process: become the command, as ``python`` would have started it."""
    import atexit
    import runpy
    import threading

    os.setsid()  # its own session, like start_new_session=True: a signal to the test's group misses it
    _redirect(1, stdout)
    _redirect(2, 1 if stderr == subprocess.STDOUT else stderr)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    _fresh_streams()
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    try:
        if command[0] == "-m":
            sys.argv = [command[1], *command[2:]]
            sys.path[:0] = [cwd, *extra]  # python -m puts the working folder first
            runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        else:
            script = str(Path(cwd, command[0]))
            sys.argv = [script, *command[1:]]
            sys.path[:0] = [str(Path(script).parent), *extra]  # python SCRIPT puts its folder first
            runpy.run_path(script, run_name="__main__")
    finally:  # what the interpreter does on its way out, which a forked child's os._exit would skip
        threading._shutdown()
        atexit._run_exitfuncs()


def _command(args: list[str]) -> list[str]:
    """``[python, -m, MOD, ...]`` or ``[python, SCRIPT, ...]`` without the interpreter (which must be ours)."""
    if not args or args[0] != sys.executable or len(args) < 2:
        raise ValueError(f"a warm launch runs this interpreter's -m MODULE or SCRIPT, not {args}")
    return list(args[1:])


class Popen:
    """A warm launch with ``subprocess.Popen``'s ``pid``, ``poll``, ``wait``, ``communicate``, ``kill``, ``returncode``.

    ``stdout``/``stderr``: ``subprocess.PIPE`` (read back as text by ``communicate``), ``DEVNULL``,
    an open file (appended to by its path), or ``subprocess.STDOUT`` for stderr.
    """

    def __init__(self, args: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE, **_: Any) -> None:
        self.args = args
        self._folder = tempfile.mkdtemp(prefix="warm-")
        self._out, out = self._target(stdout, "stdout")
        self._err, err = self._target(stderr, "stderr")
        self._proc = fork_context().Process(
            target=_child, args=(_command(args), str(cwd or os.getcwd()), dict(os.environ if env is None else env),
                                 out, err), daemon=False)
        self._proc.start()
        self.pid = self._proc.pid
        self.returncode: int | None = None

    def _target(self, spec: Any, name: str) -> tuple[str | None, str | int | None]:
        """(the file to read back, the child's target) for one stream."""
        if spec == subprocess.PIPE:
            path = os.path.join(self._folder, name)
            return path, path
        if spec == subprocess.STDOUT:
            return None, subprocess.STDOUT
        if spec is None:  # inherited
            return None, None
        if spec == subprocess.DEVNULL:
            return None, os.devnull
        return None, getattr(spec, "name", spec)  # an open file: its path

    def poll(self) -> int | None:
        if self.returncode is None and self._proc.exitcode is not None:
            self.returncode = self._proc.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _read(self, path: str | None) -> str | None:
        return None if path is None or not os.path.exists(path) else Path(path).read_text(errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        self.wait(timeout)
        return self._read(self._out), self._read(self._err)

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self._proc.kill()


class Ranks(Popen):
    """``procs`` warm processes of one command, one hand launch on localhost; ``Popen``'s calls for all of them.

    Their stdout and stderr go to one file each, as a launcher's children share its streams. ``pid``
    is rank 0's, ``pids`` every rank's, ``codes`` their exit codes; ``send_signal`` and ``kill`` reach every rank still running.
    """

    def __init__(self, procs: int, args: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE, **_: Any) -> None:
        self.args = args
        self._folder = tempfile.mkdtemp(prefix="warm-ranks-")
        self._out, out = self._target(stdout, "stdout")
        self._err, err = self._target(stderr, "stderr")
        base = dict(os.environ if env is None else env)
        port = str(_free_port())
        self._ranks = [Popen(args, cwd=cwd, stdout=out, stderr=err,
                             env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(procs),
                                  "LOCAL_WORLD_SIZE": str(procs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
                       for rank in range(procs)]
        self.pids = [rank.pid for rank in self._ranks]
        self.pid = self.pids[0]
        self.returncode = None
        self.codes: list[int] | None = None  # each rank's exit code, once all have ended
        self._stop_by: float | None = None  # when the grace after a failed rank's SIGTERM ends

    def poll(self) -> int | None:
        """None while a rank runs; then 0, or 1 when a rank failed (torchrun's exit code)."""
        import time

        if self.returncode is not None:
            return self.returncode
        codes = [rank.poll() for rank in self._ranks]
        if self._stop_by is None and any(code not in (None, 0) for code in codes):
            self._stop_by = time.monotonic() + STOP_GRACE_S  # as torchrun's agent: stop the others
            self.send_signal(signal.SIGTERM)
        elif self._stop_by is not None and time.monotonic() > self._stop_by:
            self.kill()
        if all(code is not None for code in codes):
            self.codes = codes
            self.returncode = 0 if not any(codes) else 1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        for rank in self._ranks:
            rank.send_signal(signum)

    def kill(self) -> None:
        for rank in self._ranks:
            if rank.poll() is None:
                rank.kill()


def run(args: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None,
        timeout: float | None = None, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
        procs: int = 1, **_: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True, ...)``, warm, on ``procs`` ranks (``Ranks``
    for more than one); a timeout kills it and raises."""
    proc = (Popen(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr) if procs == 1 else
            Ranks(procs, args, cwd=cwd, env=env, stdout=stdout, stderr=stderr))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)



def one_process(command: list[str]) -> bool:
    """Whether ``command`` is one process that may start warm: this interpreter on a script or on
    ``-m distlearn`` (not a launcher such as ``-m torch.distributed.run``, not ``-c`` code)."""
    if len(command) < 2 or command[0] != sys.executable or command[1] == "-c":
        return False
    return command[1] != "-m" or command[2] == "distlearn"


def popen_for(command: list[str]) -> type:
    """``Popen`` (warm) for a one-process command, ``subprocess.Popen`` for anything else."""
    return Popen if one_process(command) else subprocess.Popen

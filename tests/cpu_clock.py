"""CPU time of each test and each test file, the session's child processes included (``--cpu-clock``).

Not a test module; a pytest plugin loaded by tests/conftest.py. On a shared machine wall time says
little; the CPU time of the process tree (pytest, the fork server, the pool's ranks, warm and cold
launches) is what a change to the suite's cost moves. Read from /proc (Linux), so each reading is
the tree's user+system time: live processes' own and their reaped children's.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, own + reaped children's CPU seconds) for every readable process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based from state
        out[int(name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / _TICK)
    return out


def tree_cpu(root: int | None = None) -> float:
    """CPU seconds of ``root`` (this process) and all its descendants, dead ones included once reaped."""
    stats = _stats()
    children = defaultdict(list)
    for pid, (ppid, _) in stats.items():
        children[ppid].append(pid)
    total, todo = 0.0, [root or os.getpid()]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, ()))
    return total


class CpuClock:
    def __init__(self, config: pytest.Config) -> None:
        self.by_test: dict[str, float] = {}
        self.by_file: dict[str, float] = defaultdict(float)
        self.start = tree_cpu()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        before = tree_cpu()
        yield
        spent = tree_cpu() - before
        self.by_test[item.nodeid] = spent
        self.by_file[item.nodeid.split("::")[0]] += spent

    def pytest_terminal_summary(self, terminalreporter):
        total = tree_cpu() - self.start
        write = terminalreporter.write_line
        terminalreporter.section("CPU time by file (s, the session's processes included)")
        for path, cpu in sorted(self.by_file.items(), key=lambda kv: -kv[1]):
            write(f"{cpu:8.1f}  {path}")
        write(f"{total:8.1f}  whole session so far (collection, fixtures and the fork server's imports included)")
        terminalreporter.section("the 25 tests with the most CPU time (s)")
        for nodeid, cpu in sorted(self.by_test.items(), key=lambda kv: -kv[1])[:25]:
            write(f"{cpu:8.1f}  {nodeid}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-clock", action="store_true",
                     help="print the CPU time of each test file and of the costliest tests, child processes included")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--cpu-clock"):
        config.pluginmanager.register(CpuClock(config), "distlearn-cpu-clock")

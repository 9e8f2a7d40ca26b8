"""``distlearn train`` with one rank that stops answering: for the run.timeout_s test.

    torchrun --nproc_per_node 2 stalled_rank.py [distlearn train arguments]

The last rank sleeps STALL_S seconds (default 120) before its first epoch's summary,
so the other ranks wait in that collective until the process-group timeout; with
DIE=1 it kills itself (SIGKILL) there instead, so the others lose their peer.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from distlearn.command import cli
from distlearn.training.epoch import EpochAccounting

if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
    reduce = EpochAccounting.reduce

    def stalled(self, *args, **kwargs):
        if os.environ.get("DIE") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(os.environ.get("STALL_S", "120")))
        return reduce(self, *args, **kwargs)

    EpochAccounting.reduce = stalled

sys.exit(cli.main(["train", *sys.argv[1:]]))

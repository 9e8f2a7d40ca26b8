"""``python -m distlearn train ...``: the ``distlearn`` command, also for launchers (``accelerate launch -m``, ``torchrun -m``)."""

from distlearn.command.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Soak: a rank SIGKILLed under launch/torchrun.sh with MAX_RESTARTS=1, N times in a row.

    PYTHONPATH=$PWD python benchmarks/soak_elastic_restart.py [N=10] [--plain]

Each attempt trains configs/wine.yaml on 2 CPU processes (8 epochs, a checkpoint every 3
optimizer steps, default output folder runs/<config>-<launch id> in a temporary folder),
SIGKILLs one worker once a checkpoint of step >= 15 exists, and waits. An attempt passes when
the launch exits 0, resumed once ("restart 1 of this launch: resuming from checkpoint ..."),
left exactly one run folder, and its record (clock readings aside) and model file equal the
uninterrupted run's. ``--plain``: plain ``torchrun --standalone --max-restarts 1`` instead of the
script (the library's per-attempt store prefix, not the script's store setting, does the work).
Prints one line per attempt and the count.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from elastic_restart import killed_and_restarted, reference  # noqa: E402


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 10
    plain = "--plain" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        ref = reference(Path(tmp) / "reference")
        passed = 0
        for i in range(n):
            ok, why = killed_and_restarted(Path(tmp) / f"attempt-{i}", ref, plain=plain)
            passed += ok
            print(f"attempt {i + 1}: {'ok' if ok else 'FAILED: ' + why}", flush=True)
        print(f"{passed}/{n} restarted runs resumed and ended equal to the uninterrupted run"
              f" ({'plain torchrun' if plain else 'launch/torchrun.sh'})")


if __name__ == "__main__":
    main()

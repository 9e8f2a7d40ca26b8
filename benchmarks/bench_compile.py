"""``torch.compile`` (inductor) against eager on the charlm config, on this machine, side by side.

Each repeat trains the charlm experiment (``configs/charlm.yaml``, its model, batch and optimizer;
the text cut to ``--chars`` characters) for ``--epochs`` epochs, eager and compiled in turn
(eager, compiled, eager, compiled, ...: load drifts hit both alike), in one process, one thread.
The compiled run starts from an empty in-memory compile cache (``torch._dynamo.reset()``); its
first epoch includes compiling. Printed: the median epoch time after the first of each, their
ratio (eager / compiled: above 1 means compiled is faster), and the compile time (the compiled
run's first epoch minus its later epochs' median; the first repeat compiles cold, into an empty
cache folder of its own, later ones find inductor's on-disk cache).

    python benchmarks/bench_compile.py [--repeats 3] [--epochs 3] [--chars 60000] [--backend inductor]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def train_once(chars: int, epochs: int, compile_options: dict | None) -> list[float]:
    """One charlm training; returns each epoch's time (the record's ``time_cost``)."""
    import torch._dynamo
    from accelerate.state import AcceleratorState, GradientState

    from distlearn.experiment.config import build_experiment, load_config

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch._dynamo.reset()
    at = "learner_configs.learner_parameters"
    overrides = [f"data_configs.data_parameters.max_chars={chars}", f"{at}.n_epochs={epochs}", "run.tracking.backend=none"]
    if compile_options is not None:
        overrides.append(f"{at}.compile={{backend: {compile_options['backend']}}}")
    experiment = build_experiment(load_config("charlm", overrides))
    record = experiment.learner.train(experiment.model, experiment.data_loaders["train_loader"], disable_tqdm=True)
    return [record["training"][e]["time_cost"] for e in sorted(record["training"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chars", type=int, default=60000)
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # an empty on-disk compile cache of our own: the first repeat's compile is a cold one
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench-compile-"))
    eager, compiled, compile_times = [], [], []
    begin = time.time()
    for repeat in range(args.repeats):
        e = train_once(args.chars, args.epochs, None)
        c = train_once(args.chars, args.epochs, {"backend": args.backend})
        eager += e[1:]
        compiled += c[1:]
        compile_times.append(c[0] - statistics.median(c[1:]))
        print(f"repeat {repeat}: eager epochs {[round(t, 2) for t in e]} s, compiled {[round(t, 2) for t in c]} s",
              flush=True)
    e_med, c_med = statistics.median(eager), statistics.median(compiled)
    print(f"charlm, {args.chars} chars, {args.epochs} epochs x {args.repeats} repeats, 1 thread, "
          f"backend {args.backend}, torch {torch.__version__} ({time.time() - begin:.0f} s in all)")
    print(f"epoch time after the first: eager {e_med:.3f} s, compiled {c_med:.3f} s, "
          f"ratio eager/compiled {e_med / c_med:.2f}x")
    print(f"compile time (first epoch minus a later one): first repeat {compile_times[0]:.1f} s, "
          f"median {statistics.median(compile_times):.1f} s")


if __name__ == "__main__":
    main()

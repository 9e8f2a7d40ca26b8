"""FSDP2 training jobs for tests/test_sharded.py, run on the ranks of tests/dist_pool.py (not a test module).

Accelerate 1.16 chooses FSDP only on accelerator devices; on the CPU its state is put into FSDP2 after
the Accelerator is built (as benchmarks/gpu_check.py's ``_force_fsdp2`` does for one process), with the
plugin Accelerate builds from ``accelerate launch``'s FSDP_* variables. ``prepare`` then shards the model
with torch's ``fully_shard`` over gloo, and checkpoints go through Accelerate's and DCP's real paths.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any

N_SAMPLES, GLOBAL_BATCH, HIDDEN = 96, 12, 8192  # 8 steps per epoch on 2 (6 per process) or 3 (4); 230 KB of weights
# What `accelerate launch` sets from configs/accelerate/fsdp.yaml (its state-dict type: see train()).
FSDP_ENV = {"FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "NO_WRAP", "FSDP_RESHARD_AFTER_FORWARD": "true",
            "FSDP_OFFLOAD_PARAMS": "false"}


def make_model() -> Any:
    """The MLP every job trains (its own state_dict keys are the checkpoint's)."""
    from torch import nn

    return nn.Sequential(nn.Linear(4, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))


def torch_model_keys() -> list[str]:
    """The model's own state_dict keys."""
    return list(make_model().state_dict())


def _reset() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _force_fsdp2(accelerator: Any, state_dict_type: str) -> None:
    """Accelerate's state as it is on a GPU under FSDP2 (the plugin from the FSDP_* variables)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    env = {**FSDP_ENV, "FSDP_STATE_DICT_TYPE": state_dict_type}
    kept = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        plugin = FullyShardedDataParallelPlugin()
    finally:
        for key, value in kept.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    assert accelerator.is_fsdp2


def _held_at(step: int, marker: Path, stop: bool) -> Any:
    """A stand-in for sharded._save_async that holds the optimizer's write of ``step``'s checkpoint: for
    ever (a kill comes), or (``stop``) for a second after it ends, with a SIGTERM to rank 0 meanwhile."""
    import signal
    import threading

    from distlearn.training import sharded

    original = sharded._save_async

    def save(state: dict, folder: Path, writer: Any) -> Future:
        if folder.parent.name != f".tmp-step-{step:08d}" or folder.name != sharded.OPTIMIZER_DIR:
            return original(state, folder, writer)
        marker.touch()
        held: Future = Future()
        if stop:
            written = original(state, folder, writer)
            threading.Timer(1.0, lambda: held.set_result(written.result())).start()
            if int(os.environ["RANK"]) == 0:
                os.kill(os.getpid(), signal.SIGTERM)
        return held

    return save


def train(rank: int, world: int, folder: str, asynchronous: bool = False, resume: str | None = None,
          stuck_step: int | None = None, stop_step: int | None = None, every: int = 3,
          state_dict_type: str = "SHARDED_STATE_DICT", legacy: bool = False) -> dict[str, Any]:
    """Two epochs of an MLP under FSDP2, saving every ``every`` steps (``stuck_step``, ``stop_step``: see
    :func:`_held_at`), the config's ``fsdp_state_dict_type`` ``state_dict_type``; ``legacy``: saved as
    before checkpoints were sharded (what the config says).

    Returns the full weights and (rank 0) the full optimizer state at the end, the record's epochs,
    the sample indices of each forward on this rank, and the plugin's state-dict type after training;
    after a stop, the checkpoint it saved and the folders in ``checkpoints/``.
    """
    import torch
    from torch import nn
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.utils.data import DataLoader, TensorDataset

    from distlearn import BackwardLearner
    from distlearn.training import full_weights, sharded
    from distlearn.training.checkpoint import Checkpoints, Interrupted

    from contextlib import nullcontext

    from distlearn.training import checkpoint

    _reset()
    original, formats = sharded._save_async, checkpoint.checkpoint_format
    if legacy:
        checkpoint.checkpoint_format = lambda accelerator, folder=None: nullcontext()
    if stuck_step is not None or stop_step is not None:
        sharded._save_async = _held_at(stuck_step or stop_step, Path(folder) / "writing", stop_step is not None)
    try:
        x = torch.randn(N_SAMPLES, 4, generator=torch.Generator().manual_seed(0))
        index = {tuple(row.tolist()): i for i, row in enumerate(x)}
        loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=GLOBAL_BATCH // world, shuffle=True)
        learner = BackwardLearner(n_epochs=2, loss=nn.CrossEntropyLoss(), display_every_n_steps=1, seed=0,
                                  optimizer_configs={"optimizer_class": "torch.optim.AdamW",
                                                     "optimizer_parameters": {"lr": 0.01}})
        _force_fsdp2(learner.accelerator(), state_dict_type)
        torch.manual_seed(0)
        model = make_model()
        seen: list[list[int]] = []
        model.register_forward_pre_hook(lambda m, args: seen.append([index[tuple(r.tolist())] for r in args[0]]))
        checkpoints = Checkpoints(folder, every_n_steps=every, keep_last=10, asynchronous=asynchronous,
                                  resume_from=resume)
        with checkpoints.catch_signals():
            try:
                record = learner.train(model, loader, checkpoints=checkpoints, disable_tqdm=True)
            except Interrupted as exc:
                return {"stopped": exc.checkpoint.name, "folders": sorted(p.name for p in checkpoints.root.iterdir())}
        prepared, optimizer = learner.prepared_model, learner.accelerator()._optimizers[0]
        final = Path(folder) / "final"  # the run's full weights as `distlearn train` writes them: gathered per tensor
        final.mkdir(exist_ok=True)
        accelerator = learner.accelerator()
        full_weights.save_full_weights(final, full_weights.model_weights(accelerator, prepared),
                                       write=accelerator.is_main_process, max_shard_size=100_000)
        weights = {k: v.full_tensor() for k, v in prepared.state_dict().items()}
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # the test's own gather, after training
        optim = get_optimizer_state_dict(prepared, sharded._plain(optimizer), options=full)
        plugin_type = str(learner.accelerator().state.fsdp_plugin.state_dict_type)
        return {"weights": weights, "optimizer": optim["state"] if rank == 0 else None, "seen": seen,
                "epochs": {e: {k: v for k, v in r.items() if k in ("samples", "train_loss", "optimizer_steps")}
                           for e, r in record["training"].items()}, "state_dict_type": plugin_type}
    finally:
        sharded._save_async, checkpoint.checkpoint_format = original, formats
        _reset()


def start_killable(world: int, folder: str, kwargs: dict[str, Any]) -> list[Any]:
    """``train_with(kwargs)`` on a fresh group of ``world`` ranks forked from the session's fork server (not the pool's:
    these are SIGKILLed); returns the processes."""
    import dist_pool

    ctx, port = dist_pool.fork_context(), dist_pool._free_port()
    procs = []
    for rank in range(world):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=dist_pool._worker, args=(rank, world, port, child), daemon=True)
        proc.start()
        parent.send((train_with, (folder, kwargs)))
        procs.append((proc, parent))
    return procs


def train_with(rank: int, world: int, folder: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """:func:`train` with keyword arguments (the pool passes positional ones)."""
    return train(rank, world, folder, **kwargs)

"""The shape of an experiment config: its sections, the run defaults, the sizes left to the data.

An experiment config has four sections (``data_configs``, ``model_configs``,
``learner_configs``, ``metric_configs``), each naming a class by its dotted path and the keyword
arguments to build it with (``model_class: distlearn.models.MLP``, ``model_parameters:
{hidden_sizes: [256]}``), plus a ``run`` section for the run itself. The learner's parameters
nest the optimizer, loss and lr_scheduler configs the same way. ``configs/digits.yaml`` is a
complete example.

Sizes come from the data object (``AUTO_SIZED``): the model's ``in_features``/
``out_features`` left out, ``auto`` or null take its ``n_features``/``n_outputs``; a
metric's ``num_classes`` left out or ``auto`` takes its ``n_classes`` (a fixed-size
confusion matrix: no host sync to grow it during training; null keeps the metric's own
default). ``run`` keys left out take ``RUN_DEFAULTS``.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..options import DEFAULT_KEEP_LAST, DEFAULT_RESUME_BATCH, DEFAULT_TIMEOUT_S

# Section key -> prefix of its "<prefix>_class" / "<prefix>_parameters" keys.
SECTIONS: dict[str, str] = {
    "data_configs": "data",
    "model_configs": "model",
    "learner_configs": "learner",
    "metric_configs": "metric",
}
OPTIONAL_SECTIONS = frozenset({"metric_configs"})  # null or absent: no metric

# The learner's nested configs: key -> (prefix, constructor arguments distlearn supplies).
LEARNER_NESTED: dict[str, tuple[str, frozenset[str]]] = {
    "optimizer_configs": ("optimizer", frozenset({"params"})),
    "loss_configs": ("loss", frozenset()),
    "lr_scheduler_configs": ("lr_scheduler", frozenset({"optimizer"})),
}
# Learner constructor arguments that only code can supply (objects, not YAML values).
LEARNER_SUPPLIED = frozenset({"accelerator", "optimizer", "loss", "lr_scheduler"})

# Section -> (parameter -> the data object's attribute filling it). A parameter the class accepts
# is filled when the config leaves it out or writes `auto`; for the model also when it writes null.
AUTO_SIZED: dict[str, dict[str, str]] = {
    "model_configs": {"in_features": "n_features", "out_features": "n_outputs", "vocab_size": "vocab_size"},
    "metric_configs": {"num_classes": "n_classes"},
}
AUTO = "auto"

RUN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "output_dir": None,  # None: runs/<config name>-<timestamp>, see command.run_folder.default_output_dir()
    "overwrite": False,
    # mode None: online with W&B credentials, offline without
    "tracking": {"backend": "wandb", "project": "distlearn", "entity": None, "name": None, "mode": None},
    # every_n_steps / every_n_minutes None: checkpoints at epoch ends only (minutes: checked at display steps);
    # keep_last: complete checkpoints kept; async: written in the background (the DDP path);
    # keep_best: the best validation epoch's weights in <output_dir>/best/ (needs data_parameters.val_size)
    "checkpoint": {"every_n_steps": None, "every_n_minutes": None, "keep_last": DEFAULT_KEEP_LAST, "keep_best": False,
                   "async": False},
    "resume": "auto",  # auto: the newest complete checkpoint in output_dir, else fresh; none; or a checkpoint path
    "timeout_s": DEFAULT_TIMEOUT_S,  # process-group timeout: a rank that never arrives ends the run after this long
    "nonfinite": "error",  # a NaN/inf training loss: error (stop) or skip (skip that optimizer step)
    # resuming on another number of processes: keep the global batch (global) or the per-process one
    "resume_batch": DEFAULT_RESUME_BATCH,
    "display_step": 1,  # log, test and validate every this many epochs (and the last)
    "early_stopping": None,  # or {patience: N, min_delta: x}: stop when validation stops improving
    # one device's dense peak TFLOP/s for MFU; null: the table in runtime/peaks.py, where the device is listed
    "peak_tflops": None,
}

DEFAULT_CONFIG_NAME = "digits"


def plain(cfg: Any) -> Any:
    """A fresh plain-Python copy (interpolations resolved): nothing we do reaches the caller's object."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return copy.deepcopy(cfg)


def with_run_defaults(c: Any) -> Any:
    """Fill ``run`` keys a plain-dict config leaves out (``load_config`` has merged them already)."""
    if not isinstance(c, dict):
        return c
    run = c.setdefault("run", {})
    if isinstance(run, dict):
        for key, value in RUN_DEFAULTS.items():
            run.setdefault(key, copy.deepcopy(value))
        for section in ("tracking", "checkpoint"):
            if isinstance(run[section], dict):
                for key, value in RUN_DEFAULTS[section].items():
                    run[section].setdefault(key, value)
    return c

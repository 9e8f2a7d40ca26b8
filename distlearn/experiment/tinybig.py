"""Reading a tinybig experiment file as a distlearn config.

tinybig's experiment files wrap the sections in a top-level ``configurations:``
mapping with ``device`` and ``random_seed``, and name tinybig's classes
(``tinybig.learner.backward_learner``, ``tinybig.metric.mse``). distlearn's
learner and metrics follow the same interfaces, so those map one to one; so do
tinybig's scikit-learn data sets (iris, diabetes, ...). tinybig's own models
(``tinybig.model.rpn``) and its other data sets have no distlearn counterpart:
they stay in the config, and validation names the key and what distlearn offers
instead (:func:`unmapped_problem`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["from_tinybig", "is_tinybig", "unmapped_problem"]

logger = logging.getLogger(__name__)

PREFIX = "tinybig."
LEARNERS = {"tinybig.learner.backward_learner": "distlearn.learner.BackwardLearner"}
METRICS = {
    "tinybig.metric.accuracy": "distlearn.metrics.Accuracy",
    "tinybig.metric.f1": "distlearn.metrics.F1",
    "tinybig.metric.mse": "distlearn.metrics.MSE",
    "tinybig.metric.mae": "distlearn.metrics.MAE",
}
# tinybig data sets that are scikit-learn's: distlearn.data.SklearnDataset(name=...)
SKLEARN_DATA = {"iris", "diabetes", "digits", "wine", "breast_cancer"}
REGRESSION_DATA = {"diabetes"}
# What distlearn offers in place of a tinybig class it cannot map, by config section.
OFFERS = {
    "model_configs": (
        "distlearn.models.MLP (in_features/out_features: auto, hidden_sizes, activation, dropout) "
        "or any torch.nn.Module class path; replace the whole model_configs section"
    ),
    "data_configs": (
        "distlearn.data.SklearnDataset (name: digits, iris, wine, breast_cancer, diabetes) "
        "or distlearn.data.CSVDataset (path, target, task) for your own table"
    ),
}
OFFERS["learner_configs"] = "distlearn.learner.BackwardLearner (tinybig.learner.backward_learner maps to it)"
OFFERS["metric_configs"] = "distlearn.metrics.Accuracy, F1, MSE or MAE"
DEFAULT_OFFER = "the distlearn class of the same role (see configs/digits.yaml) or any class path"


def is_tinybig(cfg: Any) -> bool:
    """Whether a loaded YAML mapping is a tinybig experiment file (a top-level ``configurations:``)."""
    try:
        return "configurations" in cfg and isinstance(cfg["configurations"], Mapping)
    except TypeError:
        return False


def from_tinybig(cfg: Mapping[str, Any], source: str = "the config") -> dict[str, Any]:
    """Translate a tinybig experiment file to distlearn's layout; one log line says what was mapped.

    Args:
        cfg: The file's mapping (with the ``configurations:`` wrapper).
        source: The file's name, for the log line.

    Returns:
        A new distlearn config: the sections, ``run.seed`` from ``random_seed``, mapped
        class paths. Classes that cannot be mapped are left for validation to report.
    """
    body = copy.deepcopy(dict(cfg["configurations"]))
    out = {k: v for k, v in cfg.items() if k != "configurations"}  # anything beside the wrapper stays
    mapped: list[str] = []
    ignored: list[str] = []
    for key in ("device",):
        if key in body:
            body.pop(key)
            ignored.append(key)  # the launcher chooses the device
    if "random_seed" in body:
        seed = body.pop("random_seed")
        out.setdefault("run", {})["seed"] = seed
        mapped.append("random_seed -> run.seed")
    for key in ("output_configs", "result_configs"):
        if key in body:
            body.pop(key)
            ignored.append(key)  # distlearn writes its outputs to run.output_dir
    for key, section in body.items():
        if isinstance(section, dict) and "device" in section:  # model_configs.device in some files
            section.pop("device")
            ignored.append(f"{key}.device")
    _map_class(body.get("learner_configs"), "learner", LEARNERS, mapped)
    _map_metric(body.get("metric_configs"), mapped)
    ignored.extend(_map_data(body.get("data_configs"), mapped))
    out.update(body)
    logger.warning(
        "distlearn: %s is a tinybig experiment file: mapped %s%s", source, ", ".join(mapped) or "nothing",
        f"; ignored {', '.join(ignored)}" if ignored else "",
    )
    return out


def unmapped_problem(path: str, key: str) -> str | None:
    """The problem line for a ``tinybig.*`` class distlearn cannot map, naming what it offers instead.

    Args:
        path: A dotted class path, left by :func:`from_tinybig` or written by hand.
        key: The config key holding it.

    Returns:
        The problem line, or None for a path that is not tinybig's.
    """
    if not path.startswith(PREFIX):
        return None
    section = key.split(".", 1)[0]
    offer = OFFERS.get(section, DEFAULT_OFFER)
    return f"{key}: {path!r} is tinybig's own class, which distlearn cannot map; distlearn offers {offer}"


def _map_class(section: Any, prefix: str, table: Mapping[str, str], mapped: list[str]) -> type | None:
    if not isinstance(section, dict):
        return None
    path = section.get(f"{prefix}_class")
    if isinstance(path, str) and path in table:
        section[f"{prefix}_class"] = table[path]
        mapped.append(f"{path} -> {table[path]}")
    return None


def _map_metric(section: Any, mapped: list[str]) -> None:
    if not isinstance(section, dict):
        return
    path = section.get("metric_class")
    if not (isinstance(path, str) and path in METRICS):
        return
    _map_class(section, "metric", METRICS, mapped)
    params = section.get("metric_parameters")
    if isinstance(params, dict) and "name" in params and not _accepts(METRICS[path], "name"):
        params.pop("name")  # the metric's name is its class's


def _map_data(section: Any, mapped: list[str]) -> list[str]:
    """Map a tinybig scikit-learn data set; returns the parameters left out."""
    if not isinstance(section, dict):
        return []
    path = section.get("data_class")
    name = path[len("tinybig.data."):] if isinstance(path, str) and path.startswith("tinybig.data.") else None
    if name not in SKLEARN_DATA:
        return []
    params = dict(section.get("data_parameters") or {})
    new = {"name": name}
    if "train_batch_size" in params:
        new["batch_size"] = params["train_batch_size"]
    if name in REGRESSION_DATA:
        new["stratify"] = False
    section["data_class"] = "distlearn.data.SklearnDataset"
    section["data_parameters"] = new
    dropped = sorted(set(params) - {"name", "train_batch_size"})
    mapped.append(f"{path} -> distlearn.data.SklearnDataset(name={name!r})")
    mapped.extend(f"{k} -> batch_size" for k in params if k == "train_batch_size")
    return [f"data_parameters.{k}" for k in dropped]  # test_batch_size: the test loader uses batch_size


def _accepts(class_path: str, parameter: str) -> bool:
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        return parameter in inspect.signature(getattr(importlib.import_module(module), name)).parameters
    except Exception:
        return False

"""A run folder read back: its config, the weights to evaluate (``best``, ``last`` or a checkpoint), its W&B id,
and the run rebuilt with those weights (:func:`load_run`) to evaluate or predict without writing a loop.

    saved = distlearn.load_run("runs/digits-20260101-120000", checkpoint="best")
    saved.evaluate()            # {"test_loss", "test_score", "test_scores", ...}: the same on every rank
    saved.predict()["y_pred"]   # every test sample once, in dataset order

Nothing here writes into the run folder. Reading it needs no torch (:func:`open_folder`,
:func:`choose_weights`); :func:`load_run` builds the experiment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..specs import ConfigError
from .weights import INDEX_FILE, INIT_FROM, WEIGHTS_FILE, load_weights, weights_file

__all__ = ["CHECKPOINT_CHOICES", "RunFolderError", "SavedRun", "Weights", "choose_weights", "load_run",
           "open_folder", "read_run", "rebuild", "run_config", "wandb_run_id"]

CHECKPOINT_CHOICES = ("best", "last")  # or a checkpoint folder
CONFIG_FILE, RECORD_FILE, BEST_DIR = "config.yaml", "record.json", "best"
_HALF_WRITTEN = (".outputs-staging", ".outputs-new")  # command/files.py's staging names (no upward import)
_WANDB_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(\w+)$")


class RunFolderError(ValueError):
    """The folder is not a run that can be evaluated (the message says why and what to do)."""


@dataclass(frozen=True)
class Weights:
    """The weights chosen in a run folder.

    Attributes:
        label: ``best``, ``last`` or the checkpoint folder's name: names ``eval-<label>.json``.
        path: The weights: a ``.safetensors`` file, the index of shards, or a checkpoint's DCP folder.
        source: What they are, for the console (``the final weights``, ``checkpoint step-... (epoch 2)``).
        epoch: The 0-based epoch they end (None when unknown).
    """

    label: str
    path: Path
    source: str
    epoch: int | None = None


def open_folder(run_dir: str | Path) -> Path:
    """The run folder, checked: it exists, is a folder, holds a run's ``config.yaml``, and no output set is
    half-replaced in it.

    Raises:
        RunFolderError: Any of these does not hold.
    """
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise RunFolderError(f"no such run folder: {str(path)!r}")
    if not path.is_dir():
        raise RunFolderError(f"{str(path)!r} is not a folder; give the folder a `distlearn train` run wrote")
    if not (path / CONFIG_FILE).is_file() and not (path / "checkpoints").is_dir():
        raise RunFolderError(f"{str(path)!r} is not a run folder: it holds neither {CONFIG_FILE} nor checkpoints/; "
                             "give the folder a `distlearn train` run wrote (its run.output_dir)")
    if any((path / name).exists() for name in _HALF_WRITTEN):
        raise RunFolderError(f"{str(path)!r}: its outputs are being replaced (a run is writing them, or was killed "
                             "while it did): wait for the run to end, or run its `distlearn train` command again, "
                             "which makes the set whole")
    return path.resolve()


def run_config(run_dir: Path, overrides: Sequence[str] = ()) -> Any:
    """The run's resolved config with ``overrides``: its ``config.yaml``, or for a run killed before writing one,
    the config its newest checkpoint saved.

    Raises:
        RunFolderError: Neither exists; ConfigError: a bad override.
    """
    from omegaconf import OmegaConf

    from ..training import checkpoint as store
    from .load import load_config

    if (run_dir / CONFIG_FILE).is_file():
        return load_config(run_dir / CONFIG_FILE, overrides)
    newest = store.latest(run_dir)
    if newest is None or not isinstance(newest[1].get("config"), dict):
        raise RunFolderError(f"{run_dir} holds no {CONFIG_FILE} and no complete checkpoint: the run has written "
                             "nothing to evaluate yet")
    cfg = OmegaConf.create(newest[1]["config"])
    for override in overrides:  # one by one, so that a failure names its override
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([override]))
        except Exception as exc:  # noqa: BLE001 - OmegaConf's grammar and merge errors
            raise ConfigError([f"override {override!r}: {str(exc).splitlines()[0]}"]) from None
    return cfg


def choose_weights(run_dir: Path, checkpoint: str | Path = "last") -> Weights:
    """The weights ``--checkpoint`` names in a checked run folder (:func:`open_folder`).

    ``last``: the final ``model.safetensors`` of a completed run, else the newest complete checkpoint
    (a run stopped or killed); ``best``: ``best/model.safetensors``; anything else: a checkpoint
    folder of this run, by path or by name (``step-00000046``).

    Raises:
        RunFolderError: No such weights (what there is instead said).
    """
    from ..training import checkpoint as store

    if checkpoint == "best":
        return _best(run_dir)
    if checkpoint == "last":
        status = _status(run_dir)
        final = _final_weights(run_dir)
        if status == "completed" and final is not None:
            return Weights("last", final, "the final weights", _last_epoch(run_dir))
        newest = store.latest(run_dir)
        if newest is None:
            raise RunFolderError(f"{run_dir} holds no weights to evaluate: the run did not finish (status "
                                 f"{status or 'unknown'}) and has no complete checkpoint yet; let it run or resume "
                                 "it to its first checkpoint")
        why = f"the run did not finish ({status or 'running, or killed'}): "
        return _checkpoint_weights(run_dir, *newest, label="last", why=why)
    return _named_checkpoint(run_dir, str(checkpoint))


def _final_weights(folder: Path) -> Path | None:
    """``folder``'s own full weights (``model.safetensors`` or the index of its shards), or None."""
    return next((p for p in (folder / WEIGHTS_FILE, folder / INDEX_FILE) if p.is_file()), None)


def _best(run_dir: Path) -> Weights:
    path = _final_weights(run_dir / BEST_DIR)
    if path is None:
        raise RunFolderError(f"the run kept no best weights ({BEST_DIR}/{WEIGHTS_FILE} is missing in {run_dir}): "
                             "train with run.checkpoint.keep_best: true, or use --checkpoint last")
    try:
        best = json.loads((run_dir / BEST_DIR / "best.json").read_text())
    except (OSError, ValueError):
        best = {}
    epoch = best.get("epoch") if isinstance(best, dict) else None
    said = f" (epoch {epoch + 1}, {best.get('metric')} {best.get('score')})" if isinstance(epoch, int) else ""
    return Weights("best", path, f"the best epoch's weights{said}", epoch if isinstance(epoch, int) else None)


def _named_checkpoint(run_dir: Path, name: str) -> Weights:
    from ..training import checkpoint as store

    root = store.checkpoint_dir(run_dir)
    given = Path(name).expanduser()
    folder = given if given.is_dir() else root / name
    kept = ", ".join(p.name for p, _ in store.find(run_dir)) or "none"
    if not folder.is_dir() or folder.resolve().parent != root.resolve():
        raise RunFolderError(f"--checkpoint {name!r}: expected best, last or a checkpoint folder of this run under "
                             f"{root}/ (complete ones there: {kept})")
    try:
        meta = store.committed_marker(folder)
    except store.CheckpointError as exc:
        raise RunFolderError(f"--checkpoint {name!r}: not a complete checkpoint: {exc} (complete ones: {kept})") from None
    return _checkpoint_weights(run_dir, folder.resolve(), meta, label=folder.name)


def _checkpoint_weights(run_dir: Path, folder: Path, meta: Mapping[str, Any], label: str, why: str = "") -> Weights:
    try:
        path = weights_file(folder)
    except ValueError as exc:
        raise RunFolderError(str(exc)) from None
    epoch, done = int(meta["epoch"]), int(meta.get("batches_done") or 0)
    where = f"epoch {epoch + 1}, after batch {done}" if done else f"the end of epoch {epoch}"
    return Weights(label, path, f"{why}checkpoint {folder.name} ({where})", epoch - 1 if not done else None)


def _record(run_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((run_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _status(run_dir: Path) -> str | None:
    return _record(run_dir).get("status")


def _last_epoch(run_dir: Path) -> int | None:
    epochs = [int(k) for k in (_record(run_dir).get("training") or {}) if str(k).isdigit()]
    return max(epochs) if epochs else None


def wandb_run_id(run_dir: Path) -> str | None:
    """The W&B run id of a tracked run: from its newest checkpoint (where training keeps it), else from the name of
    a ``wandb/*run-*-<id>`` folder in it; None for an untracked run."""
    from ..training import checkpoint as store

    for folder, _ in store.find(run_dir):
        try:
            run_id = (store.load_progress(folder, 0).get("extra") or {}).get("wandb_run_id")
        except (OSError, ValueError, RuntimeError):
            continue
        if run_id:
            return str(run_id)
    names = sorted((p.name for p in (run_dir / "wandb").glob("*run-*")), reverse=True) if (run_dir / "wandb").is_dir() else []
    return next((m.group(1) for n in names if (m := _WANDB_FOLDER.match(n))), None)


@dataclass
class SavedRun:
    """A run rebuilt from its folder with the chosen weights: the experiment's objects, ready to evaluate.

    Attributes:
        run_dir: The run folder.
        weights: Which weights were loaded (:class:`Weights`).
        experiment: The built :class:`~distlearn.experiment.Experiment` (data, loaders, model, learner, metric).
    """

    run_dir: Path
    weights: Weights
    experiment: Any

    @property
    def model(self) -> Any:
        return self.experiment.model

    @property
    def data(self) -> Any:
        return self.experiment.data

    @property
    def learner(self) -> Any:
        return self.experiment.learner

    def evaluate(self) -> dict[str, Any]:
        """The test loss and every metric on the test data (every rank calls it; the same result on each)."""
        return self._test(return_full_result=False)

    def predict(self, return_scores: bool = True) -> dict[str, Any]:
        """:meth:`evaluate` plus ``y_pred``, ``y_true`` and ``y_score`` (with ``return_scores``): every test sample
        (for token labels every target token) once, in dataset order, on every rank."""
        return self._test(return_full_result=True, return_scores=return_scores)

    def _test(self, **options: Any) -> dict[str, Any]:
        loader = self.experiment.data_loaders.get("test_loader")
        if loader is None:
            raise RunFolderError(f"the data of {self.run_dir} has no test loader (test_size 0?): nothing to evaluate; "
                                 "point data_configs at data with a test part")
        return self.learner.test(self.model, loader, metric=self.experiment.metric, **options)


def read_run(run_dir: str | Path, checkpoint: str | Path = "last",
             overrides: Sequence[str] = ()) -> tuple[Path, Weights, dict[str, Any]]:
    """The checked run folder, the chosen weights and the run's resolved config with ``overrides`` (no torch).

    Raises:
        RunFolderError: The folder or the weights cannot be used; ConfigError: a bad override.
    """
    from omegaconf import OmegaConf

    from .validate import validate_config

    folder = open_folder(run_dir)
    weights = choose_weights(folder, checkpoint)
    cfg = run_config(folder, overrides)
    validate_config(cfg, check_output_dir=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["model_configs"].pop(INIT_FROM, None)  # the run's own weights replace the ones it started from
    return folder, weights, resolved


def rebuild(folder: Path, weights: Weights, resolved: dict[str, Any], accelerator: Any = None) -> SavedRun:
    """The experiment of :func:`read_run`'s config built, its model holding exactly ``weights``.

    Raises:
        ConfigError, ValueError, OSError: The data or model cannot be built, or the weights do not fit the model.
    """
    from .build import build_experiment

    learner_kwargs = {}
    if accelerator is not None:  # its options went into that Accelerator
        (resolved["learner_configs"].get("learner_parameters") or {}).pop("accelerator_kwargs", None)
        learner_kwargs["accelerator"] = accelerator
    experiment = build_experiment(resolved, validated=True, **learner_kwargs)
    load_weights(experiment.model, weights.path)
    return SavedRun(folder, weights, experiment)


def load_run(run_dir: str | Path, checkpoint: str | Path = "last", overrides: Sequence[str] = (),
             accelerator: Any = None) -> SavedRun:
    """Rebuild a run from its folder with its weights: the Python face of ``distlearn evaluate`` / ``predict``.

    Args:
        run_dir: The folder ``distlearn train`` wrote.
        checkpoint: ``"last"`` (default), ``"best"`` or a checkpoint folder of the run (see :func:`choose_weights`).
        overrides: ``key.path=value`` strings applied to the run's config, e.g. other data of the same shape.
        accelerator: An Accelerator to evaluate with; None: the learner builds its own on first use.

    Returns:
        The :class:`SavedRun`; its ``model`` holds exactly the chosen weights.

    Raises:
        RunFolderError: The folder or the weights cannot be used; ConfigError: a bad override;
        ValueError: weights that do not fit the model (the keys and the first shape named).
    """
    return rebuild(*read_run(run_dir, checkpoint, overrides), accelerator=accelerator)

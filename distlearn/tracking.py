"""Experiment tracking: Weights & Biases through Accelerate's tracker API.

Accelerate already limits the tracker to the main process (``init_trackers``,
``log`` and the tracker's ``finish`` are main-process only), so a
:class:`Tracker` is used the same way on every rank; the values it logs come
from the learner's per-epoch record, which every rank computed together.

Whether a run goes online is decided here, before anything starts, so that
nothing waits for a network that is not there (measured: with an API key and
no network ``wandb.init`` blocks ~90 s; with no key and online mode it fails):

1. ``WANDB_MODE`` in the environment wins (``offline``, ``disabled``, ...):
   tests and clusters without a network set it once for every run;
2. else ``run.tracking.mode`` from the config;
3. else ``online`` when W&B credentials are configured (``WANDB_API_KEY``,
   ``WANDB_IDENTITY_TOKEN_FILE``, or a ``.netrc`` entry for the W&B host, the
   places ``wandb`` itself reads) and ``offline`` when none are.

An offline run is written under ``WANDB_DIR`` (default: the run's output
folder) as ``wandb/offline-run-*``; upload it later with ``wandb sync``.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .records import EpochRecord, scores
from .report import finite

__all__ = ["Tracker", "epoch_metrics", "resolve_mode", "wandb_credentials"]

logger = logging.getLogger(__name__)

DEFAULT_WANDB_HOST = "https://api.wandb.ai"
# wandb's own spellings of WANDB_MODE, mapped to the three modes distlearn reports.
_ENV_MODES = {"online": "online", "run": "online", "shared": "online", "offline": "offline",
              "dryrun": "offline", "disabled": "disabled"}


def wandb_credentials(environ: Mapping[str, str] | None = None) -> str | None:
    """Where W&B credentials would come from, or None when there are none.

    Mirrors the sources ``wandb`` reads, without importing it or touching the
    network: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, then the
    ``.netrc`` file (``NETRC``, else ``~/.netrc``, else ``~/_netrc``) entry
    for the host of ``WANDB_BASE_URL`` (default ``api.wandb.ai``).

    Args:
        environ: The environment to read (default ``os.environ``).

    Returns:
        The source's name (``"WANDB_API_KEY"``, a netrc path, ...) or None.
    """
    env = os.environ if environ is None else environ
    for key in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if env.get(key):
            return key
    if env.get("NETRC"):
        path = Path(env["NETRC"]).expanduser()
    else:
        home = Path(env.get("HOME") or Path.home())
        path = next((p for p in (home / ".netrc", home / "_netrc") if p.exists()), home / ".netrc")
    host = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST).netloc
    try:
        entry = netrc.netrc(str(path)).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError):  # no file, or one wandb could not read either
        return None
    return str(path) if entry and entry[2] else None


def resolve_mode(tracking: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The W&B mode of a run and why: ``("online" | "offline" | "disabled", reason)``.

    Args:
        tracking: The config's ``run.tracking`` section (``backend``, ``mode``, ...).
        environ: The environment to read (default ``os.environ``).

    Returns:
        ``"disabled"`` when ``backend`` is ``none``; otherwise the mode chosen by
        the rules in the module docstring, and a short reason for the summary.
    """
    env = os.environ if environ is None else environ
    if tracking.get("backend", "wandb") != "wandb":
        return "disabled", "run.tracking.backend is none"
    env_mode = (env.get("WANDB_MODE") or "").strip().lower()
    if env_mode:
        mode = _ENV_MODES.get(env_mode, "online")
        configured = tracking.get("mode")
        if configured and configured != mode:
            logger.warning("WANDB_MODE=%s in the environment wins over run.tracking.mode=%s", env_mode, configured)
        return mode, f"WANDB_MODE={env_mode}"
    if tracking.get("mode"):
        return tracking["mode"], "run.tracking.mode"
    source = wandb_credentials(env)
    if source:
        return "online", f"W&B credentials from {source}"
    return "offline", "no W&B credentials (WANDB_API_KEY or ~/.netrc)"


def epoch_metrics(epoch: int, summary: EpochRecord) -> dict[str, float]:
    """The numbers to log for one epoch of a learner's record, named for a dashboard.

    Args:
        epoch: The 0-based epoch.
        summary: ``record["training"][epoch]``: ``train_loss``, ``train_scores`` (every
            metric by name; else ``train_score`` under ``metric_name``), ``lr``,
            ``samples_per_second``, ``time_cost`` and ``test_result`` (``test_loss``,
            ``test_scores``) or None.

    Returns:
        ``{"epoch", "train/loss", "train/<metric>" for each metric, "test/loss", "test/<metric>",
        "lr", "samples_per_second", "epoch_time"}`` with missing or non-finite values left out.
    """
    test = summary.get("test_result") or {}
    values = {"train/loss": summary.get("train_loss"), "test/loss": test.get("test_loss")}
    for part, by_name in (("train", scores(summary, "train")), ("test", scores(test, "test"))):
        values.update({f"{part}/{name}": value for name, value in by_name.items()})
    values.update(lr=summary.get("lr"), samples_per_second=summary.get("samples_per_second"),
                  epoch_time=summary.get("time_cost"))
    out: dict[str, float] = {"epoch": epoch}
    for key, value in values.items():
        number = finite(value)
        if number is not None:
            out[key] = number
    return out


class Tracker:
    """One run's tracking on an Accelerator built with ``log_with="wandb"``; a no-op when disabled.

    Every rank makes the same calls; Accelerate acts on the main process only.
    After a successful :meth:`start`, a failing ``log`` or ``finish`` is
    logged as a warning and tracking stops: tracking must never stop training
    (a rank that raises while the others wait in a collective hangs the run).

    Args:
        tracking: The config's ``run.tracking`` section.
        environ: The environment to read (default ``os.environ``).
    """

    def __init__(self, tracking: Mapping[str, Any], environ: Mapping[str, str] | None = None):
        self.env = os.environ if environ is None else environ
        self.tracking = dict(tracking)
        self.mode, self.reason = resolve_mode(self.tracking, self.env)
        self.dir: Path | None = None  # where the W&B files go, set by start()
        self.run_dir: Path | None = None  # the wandb run folder, on the main process after start()
        self._accelerator: Any = None
        self.run_id: str | None = None  # the W&B run id, on the main process after start()

    @property
    def enabled(self) -> bool:
        """Whether this run is tracked (backend wandb and mode not disabled)."""
        return self.mode != "disabled"

    def accelerator_kwargs(self) -> dict[str, Any]:
        """What the Accelerator must be built with for this tracker (``log_with``)."""
        return {"log_with": "wandb"} if self.enabled else {}

    def start(
        self, accelerator: Any, config: Mapping[str, Any], output_dir: str | Path, resume_id: str | None = None
    ) -> None:
        """Start the W&B run with the resolved config (the main process only; every rank calls).

        Args:
            accelerator: An Accelerator built with :meth:`accelerator_kwargs`.
            config: The resolved config as a plain nested dict.
            output_dir: The run's output folder: the W&B files go there unless
                ``WANDB_DIR`` is set, and its name is the W&B run name unless
                ``run.tracking.name`` is set.
            resume_id: The W&B run id of the run this one continues (from its checkpoint): the
                run logs into it (``resume="allow"``). Offline, W&B writes a second
                ``offline-run-*`` folder under the same id; ``wandb sync`` both folders.

        Raises:
            Whatever ``wandb.init`` raises (on the main process): a run that was
            asked to be tracked and cannot be is an error, reported before training.
        """
        if not self.enabled:
            return
        output_dir = Path(output_dir)
        self.dir = Path(self.env["WANDB_DIR"]) if self.env.get("WANDB_DIR") else output_dir
        init = {"name": self.tracking.get("name") or output_dir.name, "dir": str(self.dir)}
        if self.tracking.get("entity"):
            init["entity"] = self.tracking["entity"]
        if resume_id:
            init.update(id=resume_id, resume="allow")
        # W&B's own console lines (a ~25-line block at the end) stay off the terminal; its files stay complete,
        # and distlearn's summary says where the run went. WANDB_SILENT=false brings them back.
        init["settings"] = {"silent": self.env.get("WANDB_SILENT", "true").lower() != "false"}
        if not self.env.get("WANDB_MODE"):  # a user's WANDB_MODE is read by wandb itself; an init argument would win
            init["mode"] = self.mode
        if accelerator.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._accelerator = accelerator
        accelerator.init_trackers(
            self.tracking.get("project") or "distlearn", config=dict(config), init_kwargs={"wandb": init}
        )
        if accelerator.is_main_process:
            run = accelerator.get_tracker("wandb", unwrap=True)
            run_files = getattr(run, "dir", None)  # <dir>/wandb/<offline-run-...>/files
            self.run_dir = Path(run_files).parent if run_files else None
            self.run_id = getattr(run, "id", None)

    def log_epoch(self, epoch: int, summary: Mapping[str, Any]) -> None:
        """Log one epoch's numbers at ``step=epoch`` (the learner's ``on_epoch_end`` hook)."""
        if self._accelerator is None:
            return
        try:
            self._accelerator.log(epoch_metrics(epoch, summary), step=epoch)
        except Exception as exc:  # see the class docstring
            logger.warning("W&B logging failed at epoch %d, tracking stops: %s: %s", epoch, type(exc).__name__, exc)
            self._accelerator = None

    def finish(self) -> None:
        """Finish the W&B run (flushes an offline run to disk). Safe to call twice."""
        if self._accelerator is None:
            return
        accelerator, self._accelerator = self._accelerator, None
        for tracker in accelerator.trackers:
            try:
                tracker.finish()
            except Exception as exc:  # see the class docstring
                logger.warning("finishing the W&B run failed: %s: %s", type(exc).__name__, exc)
        accelerator.trackers.clear()  # so that accelerator.end_training() does not finish it again

    def describe(self) -> str:
        """One line for the run summary: where the tracked run went."""
        if not self.enabled:
            return f"off ({self.reason})"
        where = self.run_dir or self.dir
        text = f"W&B {self.mode} ({self.reason}): {where}"
        if self.mode == "offline" and self.run_dir is not None:
            text += f"; upload with: wandb sync {self.run_dir}"
        return text

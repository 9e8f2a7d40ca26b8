"""Experiment tracking: Weights & Biases through Accelerate's tracker API.

Every rank holds a tracker and makes the same calls on it; :func:`make_tracker`
is the one place that looks at the rank: the main process gets a
:class:`Tracker`, which does the W&B work, and the others a
:class:`NoOpTracker`, which does nothing (torchtitan's pattern). Neither runs a
collective, so the ranks stay in step whatever W&B does; the values logged come
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

Two step axes, declared with ``wandb.define_metric``: the per-epoch numbers are plotted against
``epoch``, the running loss (``running/loss``, every ``display_every_n_steps`` steps) against
``global_step`` (optimizer steps). W&B's own ``_step`` only counts rows, so neither axis has to
increase with the other. A resumed run logs no epoch twice (its checkpoint is saved before the
epoch is logged) and, online, no global step at or below the last one the W&B run holds.

An offline run is written under ``WANDB_DIR`` (default: the run's output
folder) as ``wandb/offline-run-*``; upload it later with ``wandb sync`` (the summary's line
names every folder of a resumed run, oldest first).
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..training.records import CHOICE_KEYS, EpochRecord, scores
from .record_numbers import finite
from .tracking_axes import define_axes, throughput_metrics

__all__ = [
    "NoOpTracker", "RunTracker", "Tracker", "accelerator_kwargs", "epoch_metrics", "make_tracker", "resolve_mode",
    "update_run_summary", "wait_for_wandb", "wandb_credentials",
]

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
        return _ENV_MODES.get(env_mode, "online"), f"WANDB_MODE={env_mode}"
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
            ``samples_per_second``, ``time_cost``, ``test_result`` (``test_loss``,
            ``test_scores``) or None, and ``val_result`` (``val_loss``, ``val_scores``) when validated.

    Returns:
        ``{"epoch", "train/loss", "train/<metric>" for each metric, "val/loss", "val/<metric>", "test/loss",
        "test/<metric>", "lr", "samples_per_second", "epoch_time", "throughput/..."}`` with missing or
        non-finite values left out.
    """
    test, val = summary.get("test_result") or {}, summary.get("val_result") or {}
    values = {"train/loss": summary.get("train_loss"), "val/loss": val.get("val_loss"),
              "test/loss": test.get("test_loss")}
    parts = (("train", scores(summary, "train")), ("val", scores(val, "val")), ("test", scores(test, "test")))
    for part, by_name in parts:
        values.update({f"{part}/{name}": value for name, value in by_name.items()})
    values.update(lr=summary.get("lr"), samples_per_second=summary.get("samples_per_second"),
                  epoch_time=summary.get("time_cost"))
    values.update(throughput_metrics(summary.get("throughput")))
    out: dict[str, float] = {"epoch": epoch}
    for key, value in values.items():
        number = finite(value)
        if number is not None:
            out[key] = number
    return out


class RunTracker(Protocol):
    """The calls the command makes on a tracker, on every rank alike (see :func:`make_tracker`)."""

    mode: str
    reason: str
    run_id: str | None

    def start(self, accelerator: Any, config: Mapping[str, Any], output_dir: str | Path,
              resume_id: str | None = None) -> None: ...

    def log_epoch(self, epoch: int, summary: Mapping[str, Any]) -> None: ...

    def log_step(self, global_step: int, loss: float, lr: float) -> None: ...

    def summarize(self, record: Mapping[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...

    def describe(self) -> str: ...


def accelerator_kwargs(tracking: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the Accelerator must be built with for this run's tracking (``log_with``), the same on every rank.

    Args:
        tracking: The config's ``run.tracking`` section.
        environ: The environment to read (default ``os.environ``).
    """
    return {"log_with": "wandb"} if resolve_mode(tracking, environ)[0] != "disabled" else {}


def make_tracker(
    tracking: Mapping[str, Any], is_main_process: bool, environ: Mapping[str, str] | None = None
) -> RunTracker:
    """The tracker this process holds: a :class:`Tracker` on the main process of a tracked run, else a
    :class:`NoOpTracker`.

    The rank check lives here only: every rank then makes the same calls, and only the main
    process's tracker touches W&B (its files, its network, its console lines).

    Args:
        tracking: The config's ``run.tracking`` section.
        is_main_process: Whether this is the main process (``accelerator.is_main_process``).
        environ: The environment to read (default ``os.environ``).
    """
    if not is_main_process:
        return NoOpTracker(tracking, environ)
    mode, reason = resolve_mode(tracking, environ)
    configured = tracking.get("mode")
    if reason.startswith("WANDB_MODE=") and configured and configured != mode:  # said once, by the main process
        logger.warning("%s in the environment wins over run.tracking.mode=%s", reason, configured)
    return NoOpTracker(tracking, environ) if mode == "disabled" else Tracker(tracking, environ)


class NoOpTracker:
    """The tracker of every process but the main one, and of an untracked run: takes a
    :class:`Tracker`'s calls and does nothing (no W&B import, no file, no collective).

    Args:
        tracking: The config's ``run.tracking`` section (for :meth:`describe`).
        environ: The environment to read (default ``os.environ``).
    """

    run_id: str | None = None  # the W&B run id is known on the main process only

    def __init__(self, tracking: Mapping[str, Any], environ: Mapping[str, str] | None = None):
        self.mode, self.reason = resolve_mode(tracking, environ)

    def start(self, accelerator: Any, config: Mapping[str, Any], output_dir: str | Path,
              resume_id: str | None = None) -> None:
        """Nothing to start here."""

    def log_epoch(self, epoch: int, summary: Mapping[str, Any]) -> None:
        """Nothing to log here."""

    def log_step(self, global_step: int, loss: float, lr: float) -> None:
        """Nothing to log here."""

    def summarize(self, record: Mapping[str, Any]) -> None:
        """Nothing to summarize here."""

    def finish(self, exit_code: int = 0) -> None:
        """Nothing to finish here."""

    def describe(self) -> str:
        """One line for the run summary."""
        if self.mode == "disabled":
            return f"off ({self.reason})"
        return f"W&B {self.mode} ({self.reason}), on the main process"


def wait_for_wandb() -> None:
    """Wait until W&B's service has written every finished run of this process.

    ``run.finish()`` can return before the service has written the run file, and a multi-process command
    ends with ``os._exit`` (command/group.py), which skips W&B's own exit hook: the run would lose its end.
    """
    try:
        import wandb

        wandb.teardown()
    except Exception as exc:  # tracking never stops the command
        logger.warning("waiting for W&B's service failed: %s: %s", type(exc).__name__, exc)


class Tracker:
    """One run's W&B tracking, on the main process, through Accelerate's tracker API.

    Built by :func:`make_tracker` on the main process of a tracked run (the Accelerator built
    with :func:`accelerator_kwargs`); the other processes hold a :class:`NoOpTracker`.
    After a successful :meth:`start`, a failing ``log`` or ``finish`` is logged as a
    warning and tracking stops: tracking must never stop training (a rank that raises while
    the others wait in a collective hangs the run).

    Args:
        tracking: The config's ``run.tracking`` section.
        environ: The environment to read (default ``os.environ``).
    """

    def __init__(self, tracking: Mapping[str, Any], environ: Mapping[str, str] | None = None):
        self.env = os.environ if environ is None else environ
        self.tracking = dict(tracking)
        self.mode, self.reason = resolve_mode(self.tracking, self.env)
        self.dir: Path | None = None  # where the W&B files go, set by start()
        self.run_dir: Path | None = None  # the wandb run folder, after start()
        self._accelerator: Any = None
        self.run_id: str | None = None  # the W&B run id, after start()
        self._last_step: int | None = None  # the last global step logged (a resumed online run: the run's)

    @property
    def enabled(self) -> bool:
        """Whether this run is tracked (backend wandb and mode not disabled)."""
        return self.mode != "disabled"

    def start(
        self, accelerator: Any, config: Mapping[str, Any], output_dir: str | Path, resume_id: str | None = None
    ) -> None:
        """Start the W&B run with the resolved config.

        Args:
            accelerator: An Accelerator built with :func:`accelerator_kwargs`, on its main process.
            config: The resolved config as a plain nested dict.
            output_dir: The run's output folder: the W&B files go there unless
                ``WANDB_DIR`` is set, and its name is the W&B run name unless
                ``run.tracking.name`` is set.
            resume_id: The W&B run id of the run this one continues (from its checkpoint): the
                run logs into it (``resume="allow"``). Offline, W&B writes a second
                ``offline-run-*`` folder under the same id; :meth:`describe` names them all.

        Raises:
            Whatever ``wandb.init`` raises: a run that was asked to be tracked and cannot be
            is an error, reported before training (on every rank: the command shares it).
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
        self.dir.mkdir(parents=True, exist_ok=True)
        self._accelerator = accelerator
        try:
            accelerator.init_trackers(
                self.tracking.get("project") or "distlearn", config=dict(config), init_kwargs={"wandb": init}
            )
        except Exception:
            # Accelerate has already listed a tracker without a run: finishing it would only add a warning.
            accelerator.trackers.clear()
            self._accelerator = None
            raise
        run = accelerator.get_tracker("wandb", unwrap=True)
        run_files = getattr(run, "dir", None)  # <dir>/wandb/<offline-run-...>/files
        self.run_dir = Path(run_files).parent if run_files else None
        self.run_id = getattr(run, "id", None)
        self._last_step = define_axes(run, resumed=bool(resume_id))

    def log_epoch(self, epoch: int, summary: Mapping[str, Any]) -> None:
        """Log one epoch's numbers against ``epoch`` (the learner's ``on_epoch_end`` hook)."""
        self._log(epoch_metrics(epoch, summary), f"epoch {epoch}")

    def log_step(self, global_step: int, loss: float, lr: float) -> None:
        """Log the running loss against ``global_step`` (the learner's ``Monitor.on_running_loss`` hook);
        a step the W&B run already holds (a resumed run's) is not logged again."""
        if self._last_step is not None and global_step <= self._last_step:
            return
        self._last_step = global_step
        values = {"global_step": global_step, "running/loss": finite(loss), "running/lr": finite(lr)}
        self._log({k: v for k, v in values.items() if v is not None}, f"step {global_step}")

    def _log(self, values: dict[str, float], where: str) -> None:
        if self._accelerator is None:
            return
        try:
            self._accelerator.log(values)  # no step=: W&B's _step counts rows; the axes are epoch and global_step
        except Exception as exc:  # see the class docstring
            logger.warning("W&B logging failed at %s, tracking stops: %s: %s", where, type(exc).__name__, exc)
            self._accelerator = None

    def summarize(self, record: Mapping[str, Any]) -> None:
        """Put what the validation chose (``best_epoch``, ``best_score``, ``best_metric``, ``stopped_early``,
        ``stopped_epoch``: :data:`~distlearn.training.records.CHOICE_KEYS`) in the W&B run's summary."""
        values = {key: record[key] for key in CHOICE_KEYS if record.get(key) is not None}
        if self._accelerator is None or not values:
            return
        try:
            for tracker in self._accelerator.trackers:
                run = getattr(tracker, "run", None)
                if run is not None:
                    run.summary.update(values)
        except Exception as exc:  # see the class docstring
            logger.warning("W&B summary failed, tracking stops: %s: %s", type(exc).__name__, exc)
            self._accelerator = None

    def finish(self, exit_code: int = 0) -> None:
        """Finish the W&B run (flushes an offline run to disk). Safe to call twice.

        Args:
            exit_code: Non-zero marks the W&B run as failed (the command is ending on an error).
        """
        if self._accelerator is None:
            return
        accelerator, self._accelerator = self._accelerator, None
        for tracker in accelerator.trackers:
            try:
                run = getattr(tracker, "run", None)
                if exit_code and run is not None:
                    run.finish(exit_code=exit_code)  # Accelerate's finish() takes no exit code
                else:
                    tracker.finish()
            except Exception as exc:  # see the class docstring
                logger.warning("finishing the W&B run failed: %s: %s", type(exc).__name__, exc)
        accelerator.trackers.clear()  # so that accelerator.end_training() does not finish it again
        wait_for_wandb()


    def describe(self) -> str:
        """One line for the run summary: where the tracked run went."""
        if not self.enabled:
            return f"off ({self.reason})"
        where = self.run_dir or self.dir
        text = f"W&B {self.mode} ({self.reason}): {where}"
        if self.mode == "offline" and self.run_dir is not None:
            text += f"; upload with: wandb sync {' '.join(str(p) for p in self.offline_folders())}"
        return text

    def offline_folders(self) -> list[Path]:
        """Every offline folder of this W&B run in ``run_dir``'s folder, oldest first (empty before :meth:`start`).

        W&B 0.31 cannot resume an offline run: each resumed session writes another
        ``offline-run-<time>-<id>`` folder under the same id, holding only its own epochs.
        ``wandb sync`` takes them all in one command and uploads them in order into one run.
        """
        if self.run_dir is None:
            return []
        folders = set(self.run_dir.parent.glob(f"offline-run-*-{self.run_id}")) if self.run_id else set()
        return sorted(folders | {self.run_dir}, key=lambda p: p.name)  # the name starts with the start time


def update_run_summary(run_dir: Path, tracking: Mapping[str, Any], mode: str, run_id: str,
                       summary: Mapping[str, float]) -> None:
    """Resume W&B run ``run_id`` (as training does: its project, its folder) and update its summary
    (``distlearn evaluate``: no step is logged, so W&B's increasing-step rule holds)."""
    import wandb

    init: dict[str, Any] = {"project": tracking.get("project") or "distlearn", "id": run_id, "resume": "allow",
                            "dir": os.environ.get("WANDB_DIR") or str(run_dir),
                            "settings": wandb.Settings(silent=os.environ.get("WANDB_SILENT", "true").lower() != "false")}
    if tracking.get("entity"):
        init["entity"] = tracking["entity"]
    if not os.environ.get("WANDB_MODE"):  # the user's WANDB_MODE is read by wandb itself
        init["mode"] = mode
    run = wandb.init(**init)
    try:
        run.summary.update(dict(summary))
    finally:
        run.finish()
        wait_for_wandb()

"""BackwardLearner: the tinybig backward learner, on Accelerate, with exact distributed numbers.

The same script trains on 1 CPU, 1 GPU or many processes (``python``,
``accelerate launch``, ``torchrun``). Every reported number is global and
exact: losses are sample-weighted means, metric states are summed across
ranks, and the samples Accelerate repeats to even out the last batch are left
out. The per-step path never syncs the host with the device; the ranks talk
once per epoch (one :func:`~distlearn.accumulators.calculate` for all train
numbers, one for the test numbers) and at every ``display_every_n_steps``-th
step. With ``checkpoints=`` (:class:`~distlearn.checkpoint.Checkpoints`) it saves
every n optimizer steps and at every epoch's end, resumes exactly where a
checkpoint left off, and stops with a checkpoint when a process is signalled.

    learner = BackwardLearner(n_epochs=10, loss=torch.nn.CrossEntropyLoss(),
                              optimizer_configs={"optimizer_class": "torch.optim.AdamW",
                                                 "optimizer_parameters": {"lr": 1e-3}})
    record = learner.train(model, {"train_loader": train, "test_loader": test}, metric=Accuracy())
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from tqdm.auto import tqdm

from ..runtime.accelerator import build_accelerator, check_accelerator, prepare_loader
from ..accumulators import Cat, Mean, Sum, calculate
from .batches import Batches, Report, give_ignore_index, leaves_out_ignored
from .checkpoint import Checkpoints, Interrupted
from ..metrics import Metric, Metrics, is_metric
from ..options import MIXED_PRECISION, NONFINITE_MODES, SCHEDULER_INTERVALS, is_int
from ..runtime.ranks import agree
from .records import EpochRecord, Record, TestResult, scores

__all__ = ["BackwardLearner", "NonFiniteLossError"]

logger = logging.getLogger(__name__)



class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (raised on every rank)."""


class BackwardLearner:
    """Trains a model by backpropagation under Accelerate; interface of tinybig's ``backward_learner``.

    Args:
        name: a name for the learner.
        n_epochs: epochs per :meth:`train` call.
        lr_scheduler, optimizer, loss: ready objects; each wins over its config.
        lr_scheduler_configs, optimizer_configs, loss_configs: the reference's
            format, ``{"optimizer_class": "torch.optim.AdamW", "optimizer_parameters": {"lr": 1e-3}}``.
            The optimizer is built in :meth:`train` on the model's parameters,
            the scheduler on that optimizer. The dicts are never modified.
        gradient_accumulation_steps: micro-batches per optimizer step (default 1).
        max_grad_norm: clip the global gradient norm to this before each step.
        mixed_precision: "no", "bf16" or "fp16" (GPU only); None (default): the
            launcher's (``accelerate launch --mixed_precision``), else "no".
        scheduler_interval: step the scheduler once per "epoch" or once per
            optimizer "step"; never more, whatever the number of processes.
        seed: seeds the RNGs at the start of :meth:`train` and the shuffled data
            order (epoch e's order depends only on seed and e).
        display_every_n_steps: every this many steps the ranks agree on the
            running loss (one small collective and one host sync), stop on a
            non-finite loss, and the main process shows it on the progress bar.
            0: only at the end of each epoch.
        accelerator: an existing Accelerator (checked against the launch).
        accelerator_kwargs: more keyword arguments for the Accelerator the
            learner builds (e.g. ``log_with``, ``kwargs_handlers``).
        loss_fn: ``loss_fn(model, batch) -> loss`` (or ``(loss, output)``) for any other loss;
            wins over ``loss``. Without both, the model's ``output.loss`` / ``output["loss"]``.
        label_key: the labels' key in dict batches (default ``"labels"``).
        ignore_index: token labels equal to this are not targets (default -100).
        label_shift: leading labels per row the model does not predict (1 for causal LMs
            that shift labels themselves, as Hugging Face ``*ForCausalLM``).

    Raises:
        ValueError, TypeError: an invalid option or config, naming the key.
    """

    def __init__(
        self,
        name: str = "error_backward_propagation_algorithm",
        n_epochs: int = 100,
        lr_scheduler: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        loss: Callable[..., torch.Tensor] | None = None,
        lr_scheduler_configs: Mapping[str, Any] | None = None,
        optimizer_configs: Mapping[str, Any] | None = None,
        loss_configs: Mapping[str, Any] | None = None,
        *,
        gradient_accumulation_steps: int | None = None,
        max_grad_norm: float | None = None,
        mixed_precision: str | None = None,
        scheduler_interval: str = "epoch",
        seed: int = 0,
        display_every_n_steps: int = 50,
        accelerator: Accelerator | None = None,
        accelerator_kwargs: Mapping[str, Any] | None = None,
        loss_fn: Callable[[nn.Module, Any], Any] | None = None,
        label_key: str = "labels",
        ignore_index: int = -100,
        label_shift: int = 0,
    ) -> None:
        _check_int("n_epochs", n_epochs, 1)
        _check_int("display_every_n_steps", display_every_n_steps, 0)
        _check_int("seed", seed, 0)
        if gradient_accumulation_steps is not None:
            _check_int("gradient_accumulation_steps", gradient_accumulation_steps, 1)
        if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a number > 0 or None, got {max_grad_norm!r}")
        if mixed_precision is not None and mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(f"scheduler_interval must be one of {SCHEDULER_INTERVALS}, got {scheduler_interval!r}")
        if accelerator is not None:
            if accelerator_kwargs:
                raise ValueError("pass either accelerator or accelerator_kwargs, not both")
            _check_matches(accelerator, "mixed_precision", mixed_precision)
            _check_matches(accelerator, "gradient_accumulation_steps", gradient_accumulation_steps)
        self.name = name
        self.n_epochs = n_epochs
        if loss is None and loss_configs is not None:
            loss_class, loss_parameters = _config_spec("loss", loss_configs)
            loss = loss_class(**loss_parameters)
        self.loss = loss
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.loss_configs = loss_configs  # kept as given, never modified
        self.optimizer_configs = optimizer_configs
        self.lr_scheduler_configs = lr_scheduler_configs
        self._optimizer_spec = _config_spec("optimizer", optimizer_configs)  # (class, parameters), built in train()
        self._lr_scheduler_spec = _config_spec("lr_scheduler", lr_scheduler_configs)
        if lr_scheduler is not None and getattr(lr_scheduler, "optimizer", None) is not optimizer:
            raise ValueError(
                "an lr_scheduler object must be built on the optimizer object passed as optimizer=...; "
                "otherwise give lr_scheduler_configs and the learner builds it on its optimizer"
            )
        scheduler_class = type(lr_scheduler) if lr_scheduler is not None else (self._lr_scheduler_spec or (object,))[0]
        if scheduler_interval == "step" and issubclass(scheduler_class, ReduceLROnPlateau):
            raise ValueError("ReduceLROnPlateau steps on a validation loss: use scheduler_interval='epoch'")
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.mixed_precision = mixed_precision
        self.scheduler_interval = scheduler_interval
        self.seed = seed
        self.display_every_n_steps = display_every_n_steps
        self.accelerator_kwargs = dict(accelerator_kwargs or {})
        self.loss_fn = loss_fn
        self._batch_options = {"label_key": label_key, "ignore_index": ignore_index, "label_shift": label_shift}
        Batches(loss, loss_fn, **self._batch_options)  # checks the options now
        self._accelerator = accelerator
        self._prepared_loaders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # user's loader -> prepared
        self._prepared: dict[str, Any] = {}  # Accelerator list name -> what the last train() prepared into it
        self.epoch = 0  # epochs completed (train() starts at 0, or where load_state_dict() left it)
        self.step = 0  # optimizer steps taken, counted like epoch
        self._resume = False  # set by load_state_dict(): the next train() continues from epoch/step
        self._global_batch = 0  # samples per optimizer micro-step over all ranks, set by _prepare()

    # ------------------------------------------------------------------ #
    # Public API
    # ------------------------------------------------------------------ #

    def accelerator(self, device: str | torch.device | None = None) -> Accelerator:
        """The Accelerator this learner trains with, built on first use (this starts the process group)."""
        if self._accelerator is None:
            self._accelerator = build_accelerator(
                mixed_precision=self.mixed_precision,
                gradient_accumulation_steps=self.gradient_accumulation_steps or 1,
                seed=self.seed,
                device=device,
                **self.accelerator_kwargs,
            )
        else:
            check_accelerator(self._accelerator)
            if device is not None and self._accelerator.num_processes == 1:
                wanted, have = _resolved(device), _resolved(self._accelerator.device)
                if wanted != have:  # "cuda" and "cuda:0" are one device when cuda:0 is the current one
                    raise ValueError(f"device={str(device)!r} but this learner's Accelerator runs on {have}")
        return self._accelerator

    @property
    def prepared_model(self) -> nn.Module | None:
        """The model as the last :meth:`train` prepared it (wrapped for DDP/FSDP), or None before.

        Save through it (``accelerator.get_state_dict(learner.prepared_model)``): under FSDP the
        module you passed in holds only this rank's shard.
        """
        return self._prepared.get("_models")

    def train(
        self,
        model: nn.Module,
        data_loader: Any,
        device: str | torch.device | None = None,
        metric: Metric | None = None,
        test_check: bool = True,
        disable_tqdm: bool = False,
        display_step: int = 1,
        train_idx: torch.Tensor | None = None,
        test_idx: torch.Tensor | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        checkpoints: Checkpoints | None = None,
        nonfinite: str = "error",
    ) -> Record:
        """Train ``model`` for ``n_epochs``; returns the training record (identical on every rank).

        Training runs epochs ``0 .. n_epochs - 1``, or, after :meth:`load_state_dict`, continues
        from the loaded epoch and step count (``range(epoch, n_epochs)``; the record holds those
        epochs). The model, optimizer and scheduler states come from ``accelerator.load_state``.

        Args:
            model: an ``nn.Module`` called as ``model(features)``, ``model(*inputs)`` or
                ``model(**batch)`` (see :mod:`distlearn.batches`).
            data_loader: ``{"train_loader": ..., "test_loader": ...}`` or one training loader;
                batches are ``(features, labels)``, ``(input_1, ..., input_k, labels)`` or dicts.
            device: None lets Accelerate choose; honoured on a single process.
            metric: a :class:`~distlearn.metrics.Metric` (left untouched: copies accumulate).
            test_check: test after every ``display_step``-th epoch and the last one.
            disable_tqdm: hide the progress bar (shown on the main process only).
            display_step: log (and test) every this many epochs.
            train_idx, test_idx: output rows used for loss and metric (full-batch training).
            on_epoch_end: called on every rank with (epoch, epoch record) once the epoch's
                numbers are final, e.g. to log them to a tracker (which writes on the main process).
            checkpoints: where and how often to save checkpoints (every ``every_n_steps``
                optimizer steps and at every epoch's end), and the checkpoint to resume from
                (``checkpoints.resume_from``): training then continues exactly where it was
                saved, mid-epoch included, and the record holds every epoch since the start.
            nonfinite: a NaN/inf training loss is an ``"error"`` (NonFiniteLossError, naming
                epoch and step; no checkpoint of the broken state is saved), or ``"skip"``: every rank
                skips that optimizer step, the batch counts with weight 0, and the epoch's record says
                ``skipped_steps``. Skip checks the gradients once per optimizer step (one host sync).

        Returns:
            ``{"preparation": {...}, "training": {epoch: {...}}}``, see the README.

        Raises:
            ValueError: no loss or optimizer, an empty loader, batches of no known form;
                on every rank.
            NonFiniteLossError: the loss became NaN/inf, naming epoch and step; on every rank.
        """
        begin = time.time()
        train_loader, test_loader = _split_loaders(data_loader)
        metric = _fresh(metric)
        _check_int("display_step", display_step, 1)
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
        train_loader = self._resume_loader(train_loader, checkpoints, device)  # another world size: its batch size
        accelerator, model, optimizer, scheduler, loader = self._prepare(model, train_loader, device)
        batches = self._batches()
        # Token targets reach the metric with the ignored tokens left in when it leaves them out itself
        # (a mask on the device); taking them out first is boolean indexing, a host sync per step.
        keep_ignored = leaves_out_ignored(metric, batches.ignore_index)
        train_idx = None if train_idx is None else torch.as_tensor(train_idx, device=accelerator.device)
        say = logger.info if accelerator.is_main_process else _quiet  # the one rank check for logging
        preparation = time.time() - begin
        record: Record = {"preparation": {"preparation_time_cost": preparation}, "training": {}}
        resumed = self._start(accelerator, checkpoints, record, test_loader, metric, train_loader)  # this rank's saved progress, or None
        first_epoch = self.epoch
        stop = None  # the signal every rank agreed to stop on (see Checkpoints.catch_signals)
        saved = None

        for epoch in range(first_epoch, self.n_epochs):
            loader.set_epoch(epoch)  # the shuffle depends only on (seed, epoch): resumable
            model.train()
            log, done = self._begin_epoch(accelerator, metric, resumed if epoch == first_epoch else None)
            batches_left = _remaining(loader, done) if done else loader
            bar = None  # a progress bar only where it is shown: building even a disabled one costs per epoch
            if not disable_tqdm and accelerator.is_main_process:
                # 1-based like the log lines; left on screen only while the epoch runs (one line per epoch stays)
                bar = batches_left = tqdm(batches_left, desc=f"epoch {epoch + 1}/{self.n_epochs}", initial=done,
                                          total=len(loader), leave=False)
            for step, batch in enumerate(batches_left, start=done):
                if step == done and done:  # the first batch after a mid-epoch resume: the saved RNG from here on
                    _set_rng_states(resumed["rng"])
                if epoch == first_epoch and step == done:  # the batch form, decided on every rank together
                    agree(batches.problem(batch, "data_loader['train_loader']", model))
                with accelerator.accumulate(model):
                    # prepare() already runs model.forward under Accelerate's autocast
                    out = batches.step(model, batch, train_idx)
                    accelerator.backward(out.loss)
                    if self.max_grad_norm and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), self.max_grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    skip = _optimizer_step(accelerator, model, optimizer, nonfinite)  # True: skipped on a NaN
                log.skipped_steps += skip
                # step_was_skipped is a Python flag; under fp16 the GradScaler in optimizer.step() syncs per step.
                stepped = accelerator.sync_gradients and not skip and not optimizer.step_was_skipped
                if stepped:
                    self.step += 1
                    if scheduler is not None and self.scheduler_interval == "step":
                        scheduler.step()
                if skip or nonfinite == "skip" and not _finite(out.loss):
                    log.add_skipped(out.loss)  # weight 0; every rank logs every batch, so the vectors stay aligned
                else:
                    report = batches.real(accelerator, out, model, train_idx, metric is not None, keep_ignored)
                    self._log_batch(report, log, metric)
                if self.display_every_n_steps and (step + 1) % self.display_every_n_steps == 0:
                    # a collective, on every rank; it also tells every rank whether one was signalled to stop
                    running, signalled = log.running_loss(step + 1, epoch, _stop_flags(checkpoints))
                    stop = stop or signalled
                    if bar is not None:
                        bar.set_postfix(loss=f"{running:.4g}", lr=f"{lr:.3g}", refresh=False)
                if stepped and checkpoints is not None:  # every n steps, or now when stopping on a signal
                    self._checkpoint_mid_epoch(accelerator, checkpoints, stop, epoch, step + 1, log, metric, record)

            summary = self._summarise_epoch(
                log, metric, epoch, log.start, log.now(), preparation, _stop_flags(checkpoints), nonfinite
            )
            stop = stop or summary.pop("stop")
            summary.update(lr=float(lr), optimizer_steps=self.step)
            if nonfinite == "skip":
                summary["skipped_steps"] = log.skipped_steps
            plateau = isinstance(getattr(scheduler, "scheduler", None), ReduceLROnPlateau)
            due = epoch % display_step == 0 or epoch == self.n_epochs - 1 or plateau  # plateau needs it every epoch
            if test_check and test_loader is not None and due:
                summary["test_result"] = self.test(model, test_loader, None, metric, False, test_idx)
            if scheduler is not None and self.scheduler_interval == "epoch":
                _step_per_epoch(scheduler, summary)
            record["preparation"]["preparation_time_cost"] = summary.pop("preparation_time_cost")
            record["training"][epoch] = summary
            self.epoch = epoch + 1
            if checkpoints is not None:  # before the tracker hears of the epoch: a resumed run never logs it twice
                saved = checkpoints.save(accelerator, self._progress(accelerator, epoch + 1, 0, None, None, record))
            if epoch % display_step == 0 or epoch == self.n_epochs - 1:
                say(_describe(epoch, self.n_epochs, summary))
            if on_epoch_end is not None:
                on_epoch_end(epoch, summary)
            if stop and epoch + 1 < self.n_epochs:
                raise Interrupted(stop, record, saved)
        return record

    def test(
        self,
        model: nn.Module,
        test_loader: Any,
        device: str | torch.device | None = None,
        metric: Metric | None = None,
        return_full_result: bool = True,
        test_idx: torch.Tensor | None = None,
        return_scores: bool = True,
    ) -> TestResult:
        """Evaluate ``model`` on ``test_loader``; the result is identical on every rank.

        Args:
            return_scores: with ``return_full_result``, also return ``y_score``; False keeps
                memory bounded for sequence outputs (``y_score`` is then None).

        Returns:
            ``test_loss``, ``test_score``, ``time_cost``, ``metric_name``, and with
            ``return_full_result`` also ``y_pred``, ``y_true``, ``y_score``
            (lists): every test sample exactly once, in dataset order (for token labels:
            every target token, row by row).
        """
        begin = time.time()
        metric = _fresh(metric)
        accelerator = self.accelerator(device)
        loader = self._prepare_loader(accelerator, test_loader, evaluation=True)
        _check_loader("test_loader", test_loader, loader)
        module = _eval_module(accelerator, model)
        idx = None if test_idx is None else torch.as_tensor(test_idx, device=accelerator.device)
        log = _BatchLog()
        scores, preds, trues = Cat(), Cat(), Cat()
        batches = self._batches()
        has_loss = False
        module.eval()
        with torch.no_grad():
            for step, batch in enumerate(loader):
                if step == 0:  # the batch form, decided on every rank together
                    agree(batches.problem(batch, "test_loader", module))
                with accelerator.autocast():  # the model may not have been prepared (no train() before)
                    out = batches.step(module, batch, idx, require_loss=False)
                # The target tokens only (y_pred/y_true list them): for token labels, boolean indexing syncs
                # with the host once per test batch, which evaluation can afford (training does not).
                report = batches.real(accelerator, out, module, idx, metric is not None or return_full_result)
                has_loss = has_loss or out.loss is not None  # the same on every rank: each has a first batch
                if report.loss is not None and report.rows:
                    log.add(report.loss, report.weight, report.rows)
                if report.scores is None:
                    continue
                score = _scores(self.loss, report.scores)
                if metric is not None:
                    metric.update(y_score=score, y_true=report.target)
                if return_full_result:
                    preds.update(metric.predict(score) if metric is not None else _default_predict(self.loss, score, report.target))
                    trues.update(report.target)
                    if return_scores:
                        scores.update(score.float())
        if accelerator.distributed_type == DistributedType.FSDP:  # (importing FSDP costs ~0.5 s elsewhere)
            _reshard(module)

        accumulators: dict[str, Any] = {"seconds": Mean()}
        accumulators["seconds"](time.time() - begin)  # the mean over ranks, so all ranks report the same
        if has_loss:
            accumulators["loss"] = log.loss_mean()
        if metric is not None:
            accumulators["score"] = metric
        if return_full_result:
            accumulators.update(y_pred=preds, y_true=trues)
            if return_scores:
                accumulators["y_score"] = scores
        values = calculate(accumulators)
        result: TestResult = {
            "test_loss": float(values["loss"]) if "loss" in values else None,
            **_scores_of(metric, values.get("score"), "test"),
            "time_cost": float(values["seconds"]),
            "metric_name": metric.name if metric is not None else None,
        }
        if return_full_result:
            y_score = values["y_score"].tolist() if return_scores else None
            result.update(y_pred=values["y_pred"].tolist(), y_true=values["y_true"].tolist(), y_score=y_score)
        return result

    def state_dict(self) -> dict[str, Any]:
        """The learner's own progress counters: epochs completed, optimizer steps taken, seed.

        Model, optimizer and scheduler states are saved by ``accelerator.save_state``. For a
        checkpoint that resumes mid-epoch exactly (the epoch's partial numbers, the RNG, the
        position in the data), pass ``checkpoints=`` to :meth:`train` instead.
        """
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the counters of :meth:`state_dict`: the next :meth:`train` continues from them.

        That train() runs epochs ``epoch .. n_epochs - 1`` and counts optimizer steps on from
        ``step``; a later train() starts from 0 again. Restore the model, optimizer and
        scheduler states with ``accelerator.load_state`` (after the learner's Accelerator exists).

        Args:
            state_dict: ``{"epoch": int, "step": int, "seed": int}``.
        """
        self.epoch, self.step, self.seed = int(state_dict["epoch"]), int(state_dict["step"]), int(state_dict["seed"])
        self._resume = True

    # ------------------------------------------------------------------ #
    # Helpers the loop calls
    # ------------------------------------------------------------------ #

    def _prepare(self, model: nn.Module, train_loader: Any, device: Any) -> tuple:
        """Check the learner can train, build the optimizer and scheduler, prepare everything with Accelerate."""
        if self.optimizer is None and self._optimizer_spec is None:
            raise ValueError(
                "BackwardLearner has no optimizer: pass optimizer=... or optimizer_configs={'optimizer_class': ...}"
            )
        accelerator = self.accelerator(device)
        # seed + rank: ranks draw different dropout masks for their different rows. The
        # weights start equal anyway (DDP broadcasts rank 0's), and the data order has its
        # own seed (the seedable sampler), so it stays the same for any number of ranks.
        set_seed(self.seed, device_specific=True)
        optimizer, scheduler = self.optimizer, self.lr_scheduler
        if optimizer is None:
            optimizer_class, parameters = self._optimizer_spec
            optimizer = optimizer_class(model.parameters(), **copy.deepcopy(parameters))
        if scheduler is None and self._lr_scheduler_spec is not None:
            scheduler_class, parameters = self._lr_scheduler_spec
            scheduler = scheduler_class(optimizer, **copy.deepcopy(parameters))
        self._forget_prepared(accelerator)
        model, optimizer = accelerator.prepare(model, optimizer)
        loader = self._prepare_loader(accelerator, train_loader)
        if scheduler is not None:
            scheduler = accelerator.prepare(scheduler)  # so that save_state() includes it ...
            scheduler.step_with_optimizer = False  # ... but stepped by us, once (not num_processes times)
        self._prepared = {"_models": model, "_optimizers": optimizer, "_schedulers": scheduler}
        self._global_batch = int(getattr(loader, "total_batch_size", 0))  # samples per step over all ranks
        _check_loader("data_loader['train_loader']", train_loader, loader)
        return accelerator, model, optimizer, scheduler, loader

    def _start(self, accelerator: Accelerator, checkpoints: Checkpoints | None, record: dict, test_loader: Any,
               metric: Metric | None = None, train_loader: Any = None):
        """Where training starts: a checkpoint's position, the counters of :meth:`load_state_dict`, or 0.

        A checkpoint of another number of processes is merged into this one's (see
        :func:`~distlearn.checkpoint.reshard`; ``metric`` tells how its states reduce).

        Returns:
            This rank's saved progress when resuming from a checkpoint (its partial epoch is
            restored by :meth:`_begin_epoch`), else None.
        """
        resume_from = checkpoints.resume_from if checkpoints is not None else None
        if resume_from is None:
            if not self._resume:
                self.epoch = self.step = 0
            self._resume = False
            return None
        self._resume = False
        if test_loader is not None:  # the loaders prepared in the order they were saved in
            self._prepare_loader(accelerator, test_loader, evaluation=True)
        progress = checkpoints.load(accelerator, resume_from, metric=metric, n_samples=_n_samples(train_loader),
                                    drop_last=bool(getattr(train_loader, "drop_last", False)))
        self.epoch, self.step = int(progress["epoch"]), int(progress["step"])
        record["training"].update(progress["record"]["training"])
        # This session's part: the summary tells its wall time from the whole run's training time by it.
        record["preparation"]["resumed_from"] = {
            "epoch": self.epoch, "batches_done": int(progress["batches_done"]), "optimizer_step": self.step,
        }
        if not progress["batches_done"]:  # at an epoch's end: the saved RNG applies now (the next epoch draws)
            _set_rng_states(progress["rng"])
        return progress

    def _begin_epoch(self, accelerator: Accelerator, metric: Metric | None, resumed: Mapping[str, Any] | None):
        """A fresh batch log and metric for the epoch, or the saved partial ones; returns (log, batches done).

        The epoch's clock starts here (a resumed epoch's goes on from where its checkpoint read it).
        """
        log = _BatchLog()
        if metric is not None:
            metric.reset()
        if resumed is None or not resumed["batches_done"]:
            return log, 0
        log.load_state_dict(resumed["log"], accelerator.device)
        if metric is not None and resumed["metric"] is not None:
            metric.load_state_dict(_to_device(resumed["metric"], accelerator.device))
        return log, int(resumed["batches_done"])

    def _checkpoint_mid_epoch(self, accelerator, checkpoints, stop, epoch, done, log, metric, record) -> None:
        """After an optimizer step: save when due or stopping (not on the epoch's last batch: its end saves).

        Raises:
            Interrupted: when stopping on a signal, once the checkpoint is saved.
            NonFiniteLossError: the loss so far is NaN/inf: the broken state is never saved.
        """
        if not (stop or checkpoints.due(self.step)) or _last_batch(accelerator):
            return
        log.running_loss(done, epoch)  # a collective; raises on every rank on a NaN
        saved = checkpoints.save(accelerator, self._progress(accelerator, epoch, done, log, metric, record))
        if stop:
            raise Interrupted(stop, record, saved)

    def _progress(self, accelerator: Accelerator, epoch: int, batches_done: int, log, metric, record) -> dict:
        """This rank's training progress for a checkpoint: one state dict, restored by :meth:`_start`.

        The position is kept two ways: ``batches_done`` (batches of ``epoch`` each rank has trained
        on) and ``samples_done``, the offset in the epoch's global sample order, which does not
        depend on the number of processes.
        """
        return {
            "epoch": epoch,
            "step": self.step,
            "batches_done": batches_done,
            "samples_done": batches_done * self._global_batch,
            "global_batch": self._global_batch,
            "world_size": accelerator.num_processes,
            "rank": accelerator.process_index,
            "log": None if log is None else log.state_dict(),
            "metric": None if metric is None else metric.state_dict(),
            "record": copy.deepcopy(record),
            "rng": _rng_states(),
            "seed": self.seed,
        }

    def _resume_loader(self, loader: Any, checkpoints: Checkpoints | None, device: Any) -> Any:
        """The training loader to resume with: on another number of processes, one that keeps the global batch.

        The epoch's global sample order depends only on (seed, epoch), and step k of Q processes
        with ``global / Q`` samples each covers the same samples as step k of the P processes that
        saved the checkpoint: skipping the saved number of batches skips exactly the samples trained on.
        """
        if checkpoints is None or checkpoints.resume_from is None or not isinstance(loader, torch.utils.data.DataLoader):
            return loader
        world = self.accelerator(device).num_processes
        size = checkpoints.per_process_batch(world, loader.batch_size)
        if size == loader.batch_size:
            return loader
        logger.info("elastic resume: per-process batch %d -> %d (global batch kept)", loader.batch_size, size)
        return _with_batch_size(loader, size)

    def _forget_prepared(self, accelerator: Accelerator) -> None:
        """Drop what this learner's previous train() prepared from the Accelerator's lists.

        Accelerate has no public way to unregister prepared objects, and ``save_state``
        saves every entry of these private lists: without this, a second train() would
        save the stale optimizer and scheduler next to the new ones. Only this learner's
        own objects go (by identity): a user's Accelerator may hold others.
        """
        for name, old in self._prepared.items():
            items = getattr(accelerator, name, None)
            if old is not None and isinstance(items, list):
                items[:] = [item for item in items if item is not old]  # in place: schedulers hold the list
        self._prepared = {}

    def _prepare_loader(self, accelerator: Accelerator, loader: Any, evaluation: bool = False) -> Any:
        """Prepare a loader once per learner (re-preparing would register it with Accelerate again).

        An evaluation loader with ``drop_last=True`` is refused: the samples it leaves out would
        depend on the number of processes.
        """
        if not isinstance(loader, torch.utils.data.DataLoader):
            raise TypeError(f"expected a torch.utils.data.DataLoader, got {type(loader).__name__}")
        if loader not in self._prepared_loaders:
            self._prepared_loaders[loader] = prepare_loader(accelerator, loader, drop_last_ok=not evaluation)
        return self._prepared_loaders[loader]

    def _batches(self) -> Batches:
        """How batches are called and weighed, for this train()/test() (the loss may have been set since)."""
        return Batches(self.loss, self.loss_fn, **self._batch_options)

    def _log_batch(self, report: Report, log: _BatchLog, metric: Metric | None) -> None:
        """Record one training batch's loss and metric on its real samples only (local, no sync).

        On the last batch, Accelerate trained on repeated samples too; ``report`` holds only
        the real ones (with no real sample: weight 0, so it counts for nothing).
        """
        log.add(report.loss, report.weight, report.rows)
        if report.scores is not None and metric is not None:
            if report.ignored is not None:  # every token, the ignored ones too: the metric leaves them out
                give_ignore_index(metric, report.ignored)  # (learner's copy; the same numbers as masking)
            metric.update(y_score=_scores(self.loss, report.scores), y_true=report.target)

    def _summarise_epoch(
        self, log, metric, epoch, start, end, preparation, stop_flags=None, nonfinite="error"
    ) -> EpochRecord:
        """All of the epoch's train numbers in ONE collective; identical on every rank.

        ``stop_flags`` (see :func:`_stop_flags`) ride along: ``summary["stop"]`` is the signal any rank got, or None.
        """
        loss, batch_loss = log.loss_means()
        accumulators: dict[str, Any] = {"loss": loss, "batch_loss": batch_loss, "samples": Sum()}
        accumulators["samples"](sum(log.rows))
        if stop_flags is not None:
            accumulators["stop"] = Sum()
            accumulators["stop"](torch.tensor(stop_flags, dtype=torch.int64))
        # Clock readings averaged over ranks, so every rank records the same times; a Mean rides in the
        # same all-reduce as the sums (a Max would cost one more collective per epoch).
        accumulators["times"] = Mean()
        accumulators["times"](torch.tensor([preparation, start, end, *log.times], dtype=torch.float64))
        if metric is not None:
            accumulators["score"] = metric
        values = calculate(accumulators)
        batch_loss = values["batch_loss"].tolist()
        if nonfinite == "error":  # with "skip", a skipped batch's loss is NaN (weight 0 on every rank): left as null
            log.raise_if_non_finite(batch_loss, epoch)
        preparation, start, end, *times = values["times"].tolist()
        name = metric.name if metric is not None else None
        batches = {}
        for i, (t, loss) in enumerate(zip(times, batch_loss)):
            cost = t - (times[i - 1] if i else start)
            batches[i] = {"time": t, "time_cost": cost, "loss": loss, "score": None, "metric_name": name}
        return {
            "start_time": start,
            "end_time": end,
            "time_cost": end - start,
            "train_loss": float(values["loss"]),
            **_scores_of(metric, values.get("score"), "train"),
            "metric_name": name,
            "samples": int(values["samples"]),
            "samples_per_second": values["samples"] / (end - start) if end > start else None,
            "batch_records": batches,
            "test_result": None,
            "preparation_time_cost": preparation,  # moved to record["preparation"] by train()
            "stop": Checkpoints.agreed_signal(values["stop"].tolist()) if stop_flags is not None else None,
        }


# ---------------------------------------------------------------------- #
# Per-batch bookkeeping without host syncs
# ---------------------------------------------------------------------- #


class _BatchLog:
    """One pass's per-batch losses (detached tensors, left on the device), real sizes and end times.

    Appending a detached loss costs no kernel and no host sync; sizes and times
    are Python numbers the host already has. Stacked once, at the end (and, for
    the running loss, once per display step: only the batches since the last one).

    Times are read on the pass's training clock (:meth:`now`): the wall clock, less the time the
    run was down. A pass resumed from a checkpoint goes on from the clock reading saved with it, so
    the time between the checkpoint and the restart counts nowhere: the epoch's time is the time
    spent training it before the kill plus after, and no batch time is negative.
    """

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.sizes: list[Any] = []  # each loss's weight: rows (int) or target tokens (0-d tensor, no sync)
        self.rows: list[int] = []
        self.times: list[float] = []
        self._running = Mean()  # the losses of batches [0, _running_upto), for running_loss()
        self._running_upto = 0
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite gradient (nonfinite="skip")
        self.shift = 0.0  # seconds this pass was down (killed until resumed), left out of its clock
        self.start = self.now()  # when the pass began, on its clock

    def now(self) -> float:
        """The pass's training clock: ``time.time()`` less the seconds the run was down during the pass."""
        return time.time() - self.shift

    def add(self, loss: torch.Tensor, size: Any, rows: int) -> None:
        self.losses.append(loss.detach())
        self.sizes.append(size)
        self.rows.append(rows)
        self.times.append(self.now())

    def add_skipped(self, loss: torch.Tensor) -> None:
        """A batch whose optimizer step was skipped (nonfinite="skip"): it counts with weight 0."""
        self.add(torch.zeros_like(loss.detach()), 0, 0)

    def state_dict(self) -> dict[str, Any]:
        """The batches so far, for a checkpoint (one stacked tensor: one device copy, no per-batch sync)."""
        return {
            "losses": torch.stack(self.losses).cpu() if self.losses else None,
            "sizes": list(self.sizes),
            "rows": list(self.rows),
            "times": list(self.times),
            "running": self._running.state_dict(),
            "running_upto": self._running_upto,
            "skipped_steps": self.skipped_steps,
            "start": self.start,
            "saved_at": self.now(),  # the clock when saved: a resumed pass goes on from here
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        """Go on with a saved pass; its clock resumes at the reading it was saved with."""
        losses = state["losses"]
        self.losses = [] if losses is None else list(losses.to(device).unbind(0))
        self.sizes, self.rows, self.times = list(state["sizes"]), list(state["rows"]), list(state["times"])
        self._running.load_state_dict(_to_device(state["running"], device))
        self._running_upto = int(state["running_upto"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        # A checkpoint written before the clock was saved: its last batch's time stands for both readings.
        saved_at = state.get("saved_at", self.times[-1] if self.times else None)
        if saved_at is not None:
            self.shift = time.time() - float(saved_at)
            self.start = float(state.get("start", self.times[0] if self.times else saved_at))

    def _stacked(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        losses = torch.stack(self.losses[start:stop]).reshape(stop - start)
        sizes = self.sizes[start:stop]
        if all(isinstance(s, int) for s in sizes):
            weights = torch.tensor(sizes, dtype=torch.float64, device=losses.device)
        else:
            weights = torch.stack([torch.as_tensor(s, device=losses.device).double() for s in sizes])
        return losses, weights

    def loss_mean(self) -> Mean:
        """The sample-weighted mean loss: each batch's mean loss weighted by its real size."""
        mean = Mean()
        if self.losses:
            mean.extend(*self._stacked(0, len(self.losses)))
        return mean

    def loss_means(self) -> tuple[Mean, Mean]:
        """``(loss_mean(), batch_loss())``, the batches stacked once for both (once per epoch)."""
        if not self.losses:  # nothing logged on this rank: it contributes zeros of the agreed shape
            return Mean(), Mean()
        losses, weights = self._stacked(0, len(self.losses))
        mean, per_batch = Mean(), Mean()
        mean.extend(losses, weights)
        per_batch(losses, weight=weights)
        return mean, per_batch

    def batch_loss(self, upto: int | None = None) -> Mean:
        """Each batch's loss over all ranks (a vector Mean: elementwise weighted)."""
        mean = Mean()
        losses, weights = self._stacked(0, len(self.losses) if upto is None else upto)
        mean(losses, weight=weights)
        return mean

    def running_loss(self, upto: int, epoch: int, stop_flags: list[int] | None = None) -> Any:
        """The global mean loss of the first ``upto`` batches; a collective. Raises on NaN/inf.

        With ``stop_flags`` (see :func:`_stop_flags`), returns ``(loss, the signal any rank got or None)``,
        found in the same collective.
        """
        if upto > self._running_upto:  # extend with the new batches only: O(steps) per epoch, not O(steps^2)
            self._running.extend(*self._stacked(self._running_upto, upto))
            self._running_upto = upto
        accumulators: dict[str, Any] = {"loss": self._running}
        if stop_flags is not None:
            accumulators["stop"] = Sum()
            accumulators["stop"](torch.tensor(stop_flags, dtype=torch.int64))
        values = calculate(accumulators)
        value = float(values["loss"])
        if not math.isfinite(value):  # every rank sees the same value: all take this path
            self.raise_if_non_finite(self.batch_loss(upto).calculate().tolist(), epoch)
        if stop_flags is None:
            return value
        return value, Checkpoints.agreed_signal(values["stop"].tolist())

    @staticmethod
    def raise_if_non_finite(batch_loss: list[float], epoch: int) -> None:
        bad = next((i for i, v in enumerate(batch_loss) if not math.isfinite(v)), None)
        if bad is not None:
            raise NonFiniteLossError(
                f"the training loss is {batch_loss[bad]} at epoch {epoch}, step {bad} (0-based batch index in the "
                f"epoch, {len(batch_loss)} batches seen). Lower the learning rate, set max_grad_norm, or check the "
                "data for NaN/inf values."
            )


def _step_per_epoch(scheduler: Any, summary: Mapping[str, Any]) -> None:
    """The epoch's scheduler step; ReduceLROnPlateau gets the global test loss (else the train loss)."""
    if not isinstance(scheduler.scheduler, ReduceLROnPlateau):
        scheduler.step()
        return
    test = summary["test_result"]
    scheduler.step(test["test_loss"] if test is not None and test["test_loss"] is not None else summary["train_loss"])


def _remaining(loader: Any, done: int):
    """The loader's batches after the first ``done`` (read and dropped, so the order is the loader's own)."""
    for i, batch in enumerate(loader):
        if i >= done:
            yield batch


def _optimizer_step(accelerator: Accelerator, model: nn.Module, optimizer: Any, nonfinite: str) -> bool:
    """``optimizer.step()`` and ``zero_grad()`` (no-ops between accumulation boundaries).

    With ``nonfinite="skip"``, a step whose gradients hold a NaN/inf is skipped; returns True then.
    The gradients are all-reduced first, so a NaN on any rank is one on every rank: all skip together.
    """
    skip = nonfinite == "skip" and accelerator.sync_gradients and not _finite_gradients(model)
    if not skip:
        optimizer.step()
    optimizer.zero_grad()
    return skip


def _finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite (one host sync; only with nonfinite="skip")."""
    return bool(torch.isfinite(loss.detach()).all())


def _finite_gradients(model: nn.Module) -> bool:
    """Whether every gradient is finite (one host sync; only with nonfinite="skip")."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def _stop_flags(checkpoints: Checkpoints | None) -> list[int]:
    """This rank's stop-signal flags (all 0 without checkpoints: nothing to stop with)."""
    from .checkpoint import STOP_SIGNALS

    return checkpoints.stop_flags() if checkpoints is not None else [0] * len(STOP_SIGNALS)


def _n_samples(loader: Any) -> int | None:
    """The samples one epoch of a training loader draws (its sampler's length), or None if it cannot say."""
    if not isinstance(loader, torch.utils.data.DataLoader) or loader.batch_size is None:
        return None  # a batch_sampler: its batches need not be the sampler's samples in order
    try:
        return len(loader.sampler)
    except TypeError:  # an iterable dataset or a sampler without a length
        return None


def _last_batch(accelerator: Accelerator) -> bool:
    return bool(accelerator.gradient_state.end_of_dataloader)


def _rng_states() -> dict[str, Any]:
    """This process's random generators (torch CPU and accelerator devices, Python, NumPy)."""
    import random

    import numpy as np

    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _with_batch_size(loader: torch.utils.data.DataLoader, batch_size: int) -> torch.utils.data.DataLoader:
    """A copy of ``loader`` with another batch size: the same dataset, sampler, collation and workers."""
    extra = {"prefetch_factor": loader.prefetch_factor} if loader.num_workers else {}
    return torch.utils.data.DataLoader(
        loader.dataset, batch_size=batch_size, sampler=loader.sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        persistent_workers=loader.persistent_workers, **extra,
    )


def _to_device(state: Any, device: torch.device) -> Any:
    """An accumulator's state dict with its tensors on ``device`` (checkpoints load on the CPU)."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, Mapping):
        out = {k: _to_device(v, device) for k, v in state.items()}
        if "device" in out and isinstance(out["device"], str):
            out["device"] = str(device)
        return out
    return state


def _check_loader(name: str, raw: Any, prepared: Any) -> None:
    """Raise on every rank if this rank's loader gives no batch.

    Only a rank with a problem calls the collective here; the others meet it
    in the check of their first batch (``Batches.problem``), so a healthy run pays
    one collective for both checks.
    """
    problem = _loader_problem(name, raw, prepared)
    if problem is not None:
        agree(problem)


def _loader_problem(name: str, raw: Any, prepared: Any) -> str | None:
    if len(raw) == 0:
        return f"{name} is empty (0 batches): it needs at least one sample"
    if len(prepared) == 0:
        return (
            f"{name} gives no batch to each process ({len(raw)} batches, drop_last=True, "
            "fewer samples than one global batch): lower the batch size or set drop_last=False"
        )
    return None


def _resolved(device: str | torch.device) -> torch.device:
    """A device with its index: a bare "cuda" is the current CUDA device, a bare "cpu" is cpu:0."""
    device = torch.device(device)
    if device.index is not None:
        return device
    backend = getattr(torch, device.type, None)
    index = backend.current_device() if device.type != "cpu" and hasattr(backend, "current_device") else 0
    return torch.device(device.type, index)


def _eval_module(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The module to evaluate: unwrapped from DDP, so evaluation needs no collective per batch.

    Under FSDP a model train() sharded runs forward through its wrapper (only it can gather the
    weights). A model train() never prepared (test() first) holds its full weights and is evaluated
    as without FSDP, on this rank's device, under test()'s autocast. It is not prepared here:
    ``prepare_model`` would register it with the Accelerator for good (``save_state`` would save it
    next to the trained model), patch its ``forward``, and leave it on the host (Accelerate places
    no model under FSDP), with the batches on the GPU.
    """
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        wrapped = next((m for m in accelerator._models if m is model or accelerator.unwrap_model(m) is model), None)
        if wrapped is not None:
            return wrapped
        if _sharded(model):  # sharded by an earlier train() of this learner, or by the caller
            return model
    return accelerator.unwrap_model(model).to(accelerator.device)


def _reshard(module: nn.Module) -> None:
    """Free an FSDP2 root's gathered weights after evaluation.

    FSDP2 leaves the root module unsharded after its forward, expecting a backward to
    follow; after test() none does, and every GPU would hold the whole model until the
    next training step.
    """
    if _sharded(module) and hasattr(module, "reshard"):  # FSDP2's FSDPModule; FSDP1 reshards by itself
        module.reshard()


def _sharded(model: nn.Module) -> bool:
    """Whether FSDP (1 or 2) already wraps ``model``: it runs forward itself and must not be moved."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return isinstance(model, (FSDPModule, FullyShardedDataParallel))


def _scores(loss: Any, output: torch.Tensor) -> torch.Tensor:
    """The scores metrics and ``y_score`` get from model outputs: probabilities for BCEWithLogitsLoss.

    The one place that decides it: metrics threshold 1-D scores at 0.5 (probabilities), so
    logits would be misread; :func:`_default_predict` uses the same 0.5 on these scores.
    """
    return torch.sigmoid(output) if isinstance(loss, nn.BCEWithLogitsLoss) else output


def _default_predict(loss: Any, y_score: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Predictions without a metric: class indices for classification losses (or class-index labels
    when the model computes its loss), else the outputs."""
    classes = loss is None and not y_true.dtype.is_floating_point and y_score.dim() == y_true.dim() + 1
    if isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)) or classes:
        return y_score.argmax(-1)
    if isinstance(loss, nn.BCEWithLogitsLoss):
        return (y_score >= 0.5).long()  # y_score holds probabilities here (see _scores), as metrics threshold them
    return y_score


def _fresh(metric: Any) -> Metric | Metrics | None:
    """A reset copy of the user's metric (theirs is left untouched); a dict or list becomes a :class:`Metrics`."""
    if metric is None:
        return None
    if isinstance(metric, (Mapping, list, tuple)):
        metric = Metrics(metric)
    if not is_metric(metric):
        raise TypeError(
            "metric must be a distlearn metric (Accuracy(), F1(...), MSE(), AUROC(), ...), a dict or list of them, "
            f"or a distlearn.metrics.Metrics collection; got {type(metric).__name__}"
        )
    fresh = copy.deepcopy(metric)
    fresh.reset()
    return fresh


def _split_loaders(data_loader: Any) -> tuple[Any, Any]:
    if isinstance(data_loader, Mapping):
        if "train_loader" not in data_loader:
            raise ValueError(
                "data_loader must be a loader or a dict with 'train_loader' (and 'test_loader'), "
                f"got keys {sorted(data_loader)}"
            )
        return data_loader["train_loader"], data_loader.get("test_loader")
    return data_loader, None


def _scores_of(metric: Any, value: Any, part: str) -> dict[str, Any]:
    """``{part}_score`` (the primary metric's value) and ``{part}_scores`` (every metric's, by name)."""
    if metric is None:
        return {f"{part}_score": None, f"{part}_scores": {}}
    scores = dict(value) if isinstance(metric, Metrics) else {metric.name: value}
    return {f"{part}_score": scores[metric.name], f"{part}_scores": scores}


def _describe(epoch: int, n_epochs: int, summary: EpochRecord) -> str:
    text = f"epoch {epoch + 1}/{n_epochs}: train_loss {summary['train_loss']:.6g}"
    for name, value in scores(summary, "train").items():
        text += f", train_{name} {_number(value)}"
    test = summary["test_result"]
    if test is not None:
        if test["test_loss"] is not None:
            text += f", test_loss {test['test_loss']:.6g}"
        for name, value in scores(test, "test").items():
            text += f", test_{name} {_number(value)}"
    return text + f", lr {summary['lr']:.4g}, {summary['samples_per_second'] or 0:.0f} samples/s"


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else "[...]"  # e.g. a ConfusionMatrix


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def _check_int(key: str, value: Any, minimum: int) -> None:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}, got {value!r}")


def _check_matches(accelerator: Accelerator, key: str, value: Any) -> None:
    have = getattr(accelerator, key)
    if value is not None and value != have:
        raise ValueError(f"{key}={value!r} conflicts with the given accelerator's {key}={have!r}; set it on one only")


# ---------------------------------------------------------------------- #
# The reference's {X_class, X_parameters} configs
# ---------------------------------------------------------------------- #

_KINDS: dict[str, tuple[tuple[type, ...], str]] = {  # kind -> (accepted bases, an example class path)
    "loss": ((object,), "torch.nn.CrossEntropyLoss"),
    "optimizer": ((torch.optim.Optimizer,), "torch.optim.AdamW"),
    "lr_scheduler": ((LRScheduler, ReduceLROnPlateau), "torch.optim.lr_scheduler.StepLR"),
}


def _config_spec(kind: str, configs: Mapping[str, Any] | None) -> tuple[type, dict[str, Any]] | None:
    """``({kind}_class, a copy of {kind}_parameters)``, checked against the class's signature.

    Raises:
        ValueError, TypeError: a malformed config, an unknown class (ConfigError, with the
            nearest name) or parameters that do not fit, naming the key.
    """
    if configs is None:
        return None
    from omegaconf import OmegaConf

    from ..experiment.config import resolve_class  # lazily: the config layer sits above the learner

    key, class_key, params_key = f"{kind}_configs", f"{kind}_class", f"{kind}_parameters"
    bases, example = _KINDS[kind]
    if OmegaConf.is_config(configs):  # the config layer may hand OmegaConf nodes over as they are
        configs = OmegaConf.to_container(configs, resolve=True)
    if not isinstance(configs, Mapping):
        raise TypeError(f"{key} must be a dict like {{'{class_key}': ..., '{params_key}': {{...}}}}, got {configs!r}")
    unknown = sorted(set(configs) - {class_key, params_key})
    if unknown:
        raise ValueError(f"{key}: unknown keys {unknown}; expected '{class_key}' and optionally '{params_key}'")
    if class_key not in configs:
        raise ValueError(f"{key}.{class_key} is missing: give a class path such as {example!r}")
    path = configs[class_key]
    cls = path if isinstance(path, type) else resolve_class(path, f"{key}.{class_key}")
    if not issubclass(cls, bases):
        expected = " or ".join(b.__module__ + "." + b.__qualname__ for b in bases)
        raise TypeError(f"{key}.{class_key}={path!r} is not a {expected} class")
    params = copy.deepcopy(dict(configs.get(params_key) or {}))
    leading = 0 if kind == "loss" else 1  # the optimizer is built on the parameters, the scheduler on the optimizer
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # some builtins have no signature: let the constructor judge
        return cls, params
    try:
        signature.bind(*([None] * leading), **params)
    except TypeError as error:
        accepted = [p for p in list(signature.parameters)[leading:] if p not in ("args", "kwargs")]
        raise ValueError(f"{key}.{params_key} does not fit {cls.__name__}: {error}; it accepts {accepted}") from None
    return cls, params

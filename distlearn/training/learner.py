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

The loop is :meth:`BackwardLearner.train`; what it calls lives beside it: the epoch's
accounting (:mod:`.epoch`), the checkpointed progress (:mod:`.progress`), evaluation
(:mod:`.evaluation`), the steps (:mod:`.steps`), the preparation (:mod:`.preparation`),
the measurements (:mod:`.throughput`), the validation's choice (:mod:`.selection`).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader

from ..metrics import Metric, Metrics
from ..runtime.accelerator import build_accelerator, check_accelerator
from .batches import BatchRunner, agree_on_batch
from .checkpoint import Checkpoints, Interrupted
from .configs import check_learner_options, check_scheduler, config_spec
from .epoch import EpochAccounting, EpochTotals, NonFiniteLossError, reduce_epoch
from .evaluation import eval_module, evaluate
from .model_options import ModelOptions
from .preparation import (
    build_optimizer, check_device, check_loader, check_optimizer, check_train_options, prepare_once, prepare_run,
    resume_loader, split_loaders,
)
from .progress import resume_progress, save_progress, set_rng_states
from .records import EpochRecord, Record, TestResult
from .scoring import fresh_metric
from .selection import Chooser, Selection, new_chooser, resume_choice, val_fields
from .throughput import Monitor, add_seconds, epoch_block, peak_tflops, session_flops
from .steps import (
    TrainRun, account_batch, backward, begin_epoch, describe_epoch, display, epoch_batches, finite_loss, last_batch,
    optimizer_step, step_scheduler_per_epoch,
)

__all__ = ["BackwardLearner", "NonFiniteLossError"]

logger = logging.getLogger(__name__)


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
        model_options: what :meth:`train` does to the model first, a
            :class:`~distlearn.training.model_options.ModelOptions` or a dict of its fields:
            ``{"compile": True | {"mode", "dynamic", "backend"}, "gradient_checkpointing": True}``.

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
        model_options: ModelOptions | Mapping[str, Any] | None = None,
    ) -> None:
        check_learner_options(
            n_epochs=n_epochs, display_every_n_steps=display_every_n_steps, seed=seed,
            gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm,
            mixed_precision=mixed_precision, scheduler_interval=scheduler_interval, accelerator=accelerator,
            accelerator_kwargs=accelerator_kwargs,
        )
        self.name = name
        self.n_epochs = n_epochs
        if loss is None and loss_configs is not None:
            loss_class, loss_parameters = config_spec("loss", loss_configs)
            loss = loss_class(**loss_parameters)
        self.loss = loss
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self._optimizer_spec = config_spec("optimizer", optimizer_configs)  # (class, parameters), built in train()
        self._lr_scheduler_spec = config_spec("lr_scheduler", lr_scheduler_configs)
        check_scheduler(lr_scheduler, optimizer, self._lr_scheduler_spec, scheduler_interval)
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.mixed_precision = mixed_precision
        self.scheduler_interval = scheduler_interval
        self.seed = seed
        self.display_every_n_steps = display_every_n_steps
        self.accelerator_kwargs = dict(accelerator_kwargs or {})
        self.loss_fn = loss_fn
        self.model_options = ModelOptions.of(model_options)
        self._batch_options = {"label_key": label_key, "ignore_index": ignore_index, "label_shift": label_shift}
        BatchRunner(loss, loss_fn, **self._batch_options)  # checks the options now
        self._accelerator = accelerator
        self._prepared_loaders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # user's loader -> prepared
        self._prepared: dict[str, Any] = {}  # kind ("model", ...) -> what the last train() prepared
        self.epoch = 0  # epochs completed (train() starts at 0, or where load_state_dict() left it)
        self.step = 0  # optimizer steps taken, counted like epoch
        self._resume = False  # set by load_state_dict(): the next train() continues from epoch/step
        self._chooser: Chooser | None = None  # the validation's choice in the running train()

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
            check_device(self._accelerator, device)
        return self._accelerator

    @property
    def prepared_model(self) -> nn.Module | None:
        """The model as the last :meth:`train` prepared it (wrapped for DDP/FSDP), or None before.

        Save through it (``accelerator.get_state_dict(learner.prepared_model)``): under FSDP the
        module you passed in holds only this rank's shard.
        """
        return self._prepared.get("model")

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
        selection: Selection | None = None,
        monitor: Monitor | None = None,
    ) -> Record:
        """Train ``model`` for ``n_epochs``; returns the training record (identical on every rank).

        Training runs epochs ``0 .. n_epochs - 1``, or, after :meth:`load_state_dict`, continues
        from the loaded epoch and step count (``range(epoch, n_epochs)``; the record holds those
        epochs). The model, optimizer and scheduler states come from ``accelerator.load_state``.

        Args:
            model: an ``nn.Module`` called as ``model(features)``, ``model(*inputs)`` or
                ``model(**batch)`` (see :mod:`distlearn.batches`).
            data_loader: ``{"train_loader": ..., "test_loader": ..., "val_loader": ...}`` (test and
                validation optional) or one training loader; the validation loader is evaluated with
                the test's schedule, and the record names its best epoch; batches are
                ``(features, labels)``, ``(input_1, ..., input_k, labels)`` or dicts.
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
            selection: keep the best validation epoch's weights and stop early
                (:class:`~distlearn.training.selection.Selection`); needs a ``val_loader``. The
                patience and the best score are saved in checkpoints.
            monitor: throughput options (:class:`~distlearn.training.throughput.Monitor`: the device's
                peak TFLOP/s for MFU, whether to count FLOPs, a hook for the running loss); each epoch's
                record gets a ``throughput`` block (see the README).

        Returns:
            ``{"preparation": {...}, "training": {epoch: {...}}}``, see the README.

        Raises:
            ValueError: no loss or optimizer, an empty loader, batches of no known form;
                on every rank.
            NonFiniteLossError: the loss became NaN/inf, naming epoch and step; on every rank.
        """
        begin = time.time()
        train_loader, test_loader = split_loaders(data_loader)
        metric = fresh_metric(metric)
        self._chooser = new_chooser(selection, metric, data_loader)  # with a "val_loader"; else None
        check_train_options(display_step, nonfinite)
        if checkpoints is not None and checkpoints.resume_from is not None and isinstance(train_loader, DataLoader):
            # on another number of processes: a loader that keeps the global batch
            train_loader = resume_loader(train_loader, checkpoints, self.accelerator(device).num_processes)
        run = self._prepare(model, train_loader, device, metric, train_idx, checkpoints, nonfinite)
        preparation = time.time() - begin
        record: Record = {"preparation": {"preparation_time_cost": preparation}, "training": {}}
        resumed = self._resume_point(run, record, test_loader, train_loader)  # this rank's saved progress, or None
        first_epoch = self.epoch
        monitor = monitor or Monitor()
        peak = peak_tflops(run.accelerator.device, run.accelerator.mixed_precision, monitor.peak_tflops)
        flops = None  # the model's FLOPs per sample, counted on this session's first batch
        stop = None  # the signal every rank agreed to stop on (see Checkpoints.catch_signals)
        saved = None

        for epoch in self._epochs():
            accounting, done = begin_epoch(run, epoch, resumed if epoch == first_epoch else None)
            batches, run.bar = epoch_batches(run.loader, epoch, self.n_epochs, done,
                                             not disable_tqdm and run.accelerator.is_main_process,
                                             (resumed or {}).get("data"))  # an iterable set's saved position
            timer = accounting.timer
            for step, batch in enumerate(timer.batches(batches), start=done):
                if step == done:
                    self._before_first_batch(run, batch, resumed if done else None, epoch == first_epoch)
                    if epoch == first_epoch and monitor.measure_flops:
                        flops = session_flops(run.accelerator, run.model, run.batches, batch, run.train_idx, accounting)
                with timer.timing("steps"):
                    stepped = self._train_batch(run, batch, accounting)
                if self.display_every_n_steps and (step + 1) % self.display_every_n_steps == 0:
                    signalled = display(run, accounting, step + 1, epoch, self.step, monitor)  # a collective: every rank
                    stop = stop or signalled
                if stepped and checkpoints is not None:  # every n steps, or now when stopping on a signal
                    with timer.timing("checkpoints"):
                        self._checkpoint_mid_epoch(run, stop, epoch, step + 1, accounting, record)

            totals, memory_names = reduce_epoch(accounting, run.metric, epoch, preparation, run.stop_flags(), nonfinite,
                                                run.accelerator.process_index, run.accelerator.num_processes)
            stop = stop or totals.stop
            summary = self._epoch_record(run, totals, accounting, epoch, test_check and test_loader is not None,
                                         display_step, test_loader, test_idx)
            block = epoch_block(summary, totals.extra, memory_names, flops, peak, run.accelerator.num_processes)
            record["preparation"]["preparation_time_cost"] = totals.preparation_time_cost
            record["training"][epoch] = summary
            self.epoch = epoch + 1
            if checkpoints is not None:  # before the tracker hears of the epoch: a resumed run never logs it twice
                saved = self._epoch_end_save(run, epoch, record, block, stop)
            if epoch % display_step == 0 or epoch == self.n_epochs - 1:
                if run.accelerator.is_main_process:
                    logger.info(describe_epoch(epoch, self.n_epochs, summary))
            if on_epoch_end is not None:
                on_epoch_end(epoch, summary)
            if stop and self._more_epochs():
                raise Interrupted(stop, self._with_choice(record), saved)
        return self._with_choice(record)

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
        metric = fresh_metric(metric)
        accelerator = self.accelerator(device)
        loader = prepare_once(self._prepared_loaders, accelerator, test_loader, evaluation=True)
        check_loader("test_loader", test_loader, loader)
        module = eval_module(accelerator, model)
        idx = None if test_idx is None else torch.as_tensor(test_idx, device=accelerator.device)
        return evaluate(accelerator, module, loader, self._batches(), self.loss, metric, idx, return_full_result,
                        return_scores, begin)

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

    def _prepare(self, model: nn.Module, train_loader: Any, device: Any, metric: Metric | Metrics | None,
                 train_idx: Any, checkpoints: Checkpoints | None, nonfinite: str) -> TrainRun:
        """Check the learner can train, build the optimizer and scheduler, prepare everything with Accelerate."""
        check_optimizer(self.optimizer, self._optimizer_spec)
        accelerator = self.accelerator(device)
        # seed + rank: ranks draw different dropout masks for their different rows. The
        # weights start equal anyway (DDP broadcasts rank 0's), and the data order has its
        # own seed (the seedable sampler), so it stays the same for any number of ranks.
        set_seed(self.seed, device_specific=True)
        optimizer, scheduler = build_optimizer(model, self.optimizer, self.lr_scheduler, self._optimizer_spec,
                                               self._lr_scheduler_spec)
        return prepare_run(accelerator, model, optimizer, scheduler, train_loader, self._prepared_loaders,
                           self._prepared, self.model_options, self._batches, metric, train_idx, checkpoints, nonfinite)

    def _epochs(self) -> Iterator[int]:
        """The epochs to train, from ``self.epoch`` on (each epoch's end moves it)."""
        while self._more_epochs():
            yield self.epoch

    def _more_epochs(self) -> bool:
        """Whether an epoch is left: ``n_epochs`` not reached, and early stopping has not ended the run
        (decided from the reduced validation score: the same epoch on every rank; after a resume too)."""
        return self.epoch < self.n_epochs and not (self._chooser is not None and self._chooser.stopped)

    def _with_choice(self, record: Record) -> Record:
        """``record`` with the validation's choice (``best_epoch``, ..., ``stopped_early``), if any."""
        if self._chooser is not None:
            record.update(self._chooser.record_fields(self.n_epochs))
        return record

    def _resume_point(self, run: TrainRun, record: Record, test_loader: Any, train_loader: Any) -> dict[str, Any] | None:
        """Where training starts: a checkpoint's position, the counters of :meth:`load_state_dict`, or 0.

        A checkpoint of another number of processes is merged into this one's (see
        :func:`~distlearn.training.progress.reshard`; the metric tells how its states reduce).

        Returns:
            This rank's saved progress when resuming from a checkpoint (its partial epoch is
            restored by :func:`~distlearn.training.steps.begin_epoch`), else None.
        """
        resuming = run.checkpoints is not None and run.checkpoints.resume_from is not None
        if not resuming and not self._resume:
            self.epoch = self.step = 0
        self._resume = False
        progress = None
        if resuming:
            val_loader = None if self._chooser is None else self._chooser.loader
            progress = resume_progress(run, record, train_loader, (val_loader, test_loader), self._prepared_loaders)
            self.epoch, self.step = int(progress["epoch"]), int(progress["step"])
        resume_choice(self._chooser, progress, run.accelerator, run.model)
        return progress

    @staticmethod
    def _before_first_batch(run: TrainRun, batch: Any, resumed: Mapping[str, Any] | None, first_epoch: bool) -> None:
        """Before an epoch's first batch: after a mid-epoch resume the saved RNG goes on; in the session's
        first epoch the batch form is checked, decided on every rank together."""
        if resumed is not None:
            set_rng_states(resumed["rng"])
        if first_epoch:
            agree_on_batch(run.batches.problem(batch, "data_loader['train_loader']", run.model))

    def _train_batch(self, run: TrainRun, batch: Any, accounting: EpochAccounting) -> bool:
        """Forward, backward and (at an accumulation boundary) the optimizer step; returns whether it stepped."""
        accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
        with accelerator.accumulate(model):
            # prepare() already runs model.forward under Accelerate's autocast
            out = run.batches.step(model, batch, run.train_idx)
            backward(accelerator, out.loss, run.direct)  # accelerator.backward, minus its idle work
            if self.max_grad_norm and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), self.max_grad_norm)
            run.lr = optimizer.param_groups[0]["lr"]
            skip = optimizer_step(accelerator, model, run.stepper, run.nonfinite)  # True: skipped on a NaN
        accounting.skipped_steps += skip
        # step_was_skipped is a Python flag; under fp16 the GradScaler in optimizer.step() syncs per step.
        stepped = accelerator.sync_gradients and not skip and not optimizer.step_was_skipped
        if stepped:
            self.step += 1
            if run.scheduler is not None and self.scheduler_interval == "step":
                run.scheduler.step()
        if skip or run.nonfinite == "skip" and not finite_loss(out.loss):
            accounting.add_skipped(out.loss)  # weight 0; every rank logs every batch, so the vectors stay aligned
        else:
            result = run.batches.real(accelerator, out, model, run.train_idx, run.metric is not None, run.keep_ignored)
            account_batch(result, accounting, run.metric, self.loss)
        return stepped

    def _checkpoint_mid_epoch(self, run: TrainRun, stop: int | None, epoch: int, done: int,
                              accounting: EpochAccounting, record: Record) -> None:
        """After an optimizer step: save when due or stopping (not on the epoch's last batch: its end saves).

        Raises:
            Interrupted: when stopping on a signal, once the checkpoint is saved.
            NonFiniteLossError: the loss so far is NaN/inf: the broken state is never saved.
        """
        if not (stop or run.checkpoints.due(self.step)) or last_batch(run.accelerator):
            return
        accounting.running_loss(done, epoch)  # a collective; raises on every rank on a NaN
        saved = self._save(run, epoch, done, accounting, record, wait=bool(stop))
        if stop:
            raise Interrupted(stop, self._with_choice(record), saved)

    def _epoch_end_save(self, run: TrainRun, epoch: int, record: Record, block: dict[str, Any],
                        stop: int | None) -> Any:
        """The epoch's-end checkpoint, committed on return when the run stops or ends here; its time goes
        into ``block`` (this rank's: no collective of its own)."""
        began = time.perf_counter()
        saved = self._save(run, epoch + 1, 0, None, record, wait=bool(stop) or not self._more_epochs())
        add_seconds(block, "checkpoints", time.perf_counter() - began)
        return saved

    def _epoch_record(self, run: TrainRun, totals: EpochTotals, accounting: EpochAccounting, epoch: int,
                      can_test: bool, display_step: int, test_loader: Any, test_idx: Any) -> EpochRecord:
        """The epoch's record: its reduced numbers, lr and steps, its validation and test when due (the
        validation chooses, see :mod:`.selection`); steps a per-epoch scheduler."""
        summary = totals.record
        summary.update(lr=float(run.lr), optimizer_steps=self.step)
        if run.nonfinite == "skip":
            summary["skipped_steps"] = accounting.skipped_steps
        plateau = isinstance(getattr(run.scheduler, "scheduler", None), ReduceLROnPlateau)
        due = epoch % display_step == 0 or epoch == self.n_epochs - 1 or plateau  # plateau needs it every epoch
        if self._chooser is not None and due:  # before the test: the loaders' preparation order is fixed
            result = self.test(run.model, self._chooser.loader, None, run.metric, False, test_idx)
            summary["val_result"] = val_fields(result)
            self._chooser.take(epoch, summary["val_result"], run.accelerator, run.model)
        if can_test and due:
            summary["test_result"] = self.test(run.model, test_loader, None, run.metric, False, test_idx)
        if run.scheduler is not None and self.scheduler_interval == "epoch":
            step_scheduler_per_epoch(run.scheduler, summary)
        return summary

    def _save(self, run: TrainRun, epoch: int, batches_done: int, accounting: EpochAccounting | None,
              record: Record, wait: bool = False) -> Any:
        """Save a checkpoint of this rank's progress (see :func:`~distlearn.training.progress.save_progress`)."""
        return save_progress(run, epoch, self.step, batches_done, accounting, record, self.seed,
                             None if self._chooser is None else self._chooser.state_dict(), wait)

    def _batches(self) -> BatchRunner:
        """How batches are called and weighed, for this train()/test() (the loss may have been set since)."""
        return BatchRunner(self.loss, self.loss_fn, **self._batch_options)

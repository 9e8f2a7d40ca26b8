"""What one batch is, how the model is called on it, its loss and its weight.

The learner's loop calls :meth:`BatchRunner.step` once per batch and
:meth:`BatchRunner.real` once per batch for what it reports. Three batch forms
are accepted, decided on the first batch (:meth:`BatchRunner.problem`, which the
learner agrees on across ranks):

- ``(features, labels)``: ``model(features)``;
- ``(input_1, ..., input_k, labels)``: ``model(input_1, ..., input_k)``;
- a dict (Hugging Face style): ``model(**batch)``, labels under ``label_key``
  (``"labels"``). With a learner loss the labels are left out of the call and
  the loss is ``loss(logits, labels)``; without one they are passed, and the
  model computes its own loss (``output.loss`` or ``output["loss"]``).

The loss comes from, in this order: ``loss_fn(model, batch)`` (returning the
loss, or ``(loss, output)``), the learner's ``loss(output, labels)``, or the
model's output. A batch weighs its number of rows, or, for token losses
(integer labels with a time axis, shape ``(batch, T, ...)``), its number of
target tokens: labels not equal to ``ignore_index``. Weighted by that, losses
averaged over batches and ranks are exact per-token means however the ranks'
batches are padded. For causal language models that shift the labels inside
(Hugging Face ``*ForCausalLM``), set ``label_shift=1`` so the first label of
each row is not counted; a learner loss then shifts too (the output at
position t against label t+1), so either loss is the same per-token mean.

A model may take part in the first-batch check: ``model.batch_problem(batch)``
returns what it cannot take (or None), and an int ``model.label_shift`` is the
shift its outputs have (``HFModel``: 1 for causal LMs), which the learner's
``label_shift`` must equal when the model computes the loss or the labels are
its ``input_ids``. A refusal raises :class:`BatchError` on every rank
(:func:`agree_on_batch`), which the command reports as an input error.

Sequence outputs ``(batch, T, V)`` against token labels ``(batch, T)`` are
flattened to ``(batch * T, V)`` and ``(batch * T,)`` for the learner's
``CrossEntropyLoss``/``NLLLoss`` (which honour their ``ignore_index``), and
for metrics and predictions only the target tokens are kept. Keeping them
takes boolean indexing, a host sync; in training, a metric that leaves out
``ignore_index`` itself (:func:`leaves_out_ignored`) gets every token instead,
and nothing syncs.

With Accelerate's ``even_batches``, the last global batch of an epoch is
completed with samples repeated from the start: rank r of P holds
``min(rows, max(0, remainder - r * rows))`` real rows of its last batch.
:meth:`BatchRunner.real` reports only those: it slices the outputs (learner loss)
or, when the model or ``loss_fn`` computes the loss, runs the real rows again
without gradients and in eval mode (every rank does, so sharded models stay in
step; dropout is off and batch norm's statistics are left alone).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..metrics import Accuracy, Metrics, Perplexity
from ..options import is_int
from ..runtime.ranks import agree
from .outputs import (
    batch_rows,
    describe,
    flat_tokens,
    has_loss,
    logits_of,
    model_loss,
    slice_output,
    slice_rows,
    token_labels,
)
from .padding import real_rows

__all__ = ["BatchError", "BatchResult", "BatchRunner", "Step", "agree_on_batch", "give_ignore_index",
           "leaves_out_ignored"]


class BatchError(ValueError):
    """A batch the model or the learner cannot take, found before training on it; raised on every rank."""


def agree_on_batch(problem: str | None) -> None:
    """Raise :class:`BatchError` on every rank when any rank found a problem with its batches (a collective).

    Every first-batch check goes through here (the batch form, an empty loader), so the ranks
    raise the same error type whichever check found it.
    """
    try:
        agree(problem)
    except ValueError as error:
        raise BatchError(str(error)) from None


@dataclass
class Step:
    """One batch's forward pass: what backward gets and what reporting needs.

    Attributes:
        batch: the batch as the loader gave it.
        output: the model's output (``None`` when ``loss_fn`` returned only a loss).
        loss: the loss to backpropagate (a scalar mean over the batch's rows or tokens).
        rows: the batch's number of rows.
    """

    batch: Any
    output: Any
    loss: torch.Tensor | None
    rows: int


@dataclass
class BatchResult:
    """What the learner reports of one batch (its real rows only).

    Attributes:
        loss: the detached mean loss over the real rows or tokens (None: no loss to report).
        weight: the loss's weight: real rows, or target tokens as a 0-d tensor (no host sync).
        rows: the number of real rows.
        scores: the model's predictions of the real rows (target tokens only, flattened, for
            sequence outputs), or None.
        target: the matching labels, or None.
        ignored: for token targets asked for with ``keep_ignored``, the label value (``ignore_index``)
            of the tokens left in ``target`` that are not targets; None when ``target`` holds only
            targets (or is not tokens).
    """

    loss: torch.Tensor | None
    weight: Any
    rows: int
    scores: torch.Tensor | None
    target: torch.Tensor | None
    ignored: int | None = None


class BatchRunner:
    """Calls the model on a batch and computes its loss and weight; see the module doc.

    Args:
        loss: the learner's loss module/function ``loss(output, target)``, or None.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, output)``; wins over ``loss``.
        label_key: the labels' key in dict batches.
        ignore_index: labels equal to this are not target tokens (-100, as Hugging Face and
            ``CrossEntropyLoss``); a loss with its own ``ignore_index`` uses that one.
        label_shift: leading labels per row that the model does not predict (1 for causal LMs
            that shift the labels themselves, 0 otherwise).
    """

    def __init__(
        self,
        loss: Callable[..., torch.Tensor] | None = None,
        loss_fn: Callable[[nn.Module, Any], Any] | None = None,
        label_key: str = "labels",
        ignore_index: int = -100,
        label_shift: int = 0,
    ) -> None:
        if isinstance(loss_fn, str):  # a dotted path, from a YAML config
            module, _, name = loss_fn.rpartition(".")
            try:
                loss_fn = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError) as error:
                raise ValueError(f"loss_fn: cannot import {loss_fn!r} ({error}); give 'package.module.function'") \
                    from None
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be a function loss_fn(model, batch) -> loss, got {type(loss_fn).__name__}")
        if not isinstance(label_key, str):
            raise TypeError(f"label_key must be a str, got {label_key!r}")
        if not is_int(label_shift) or label_shift < 0:
            raise ValueError(f"label_shift must be an int >= 0, got {label_shift!r}")
        self.loss = loss
        self.loss_fn = loss_fn
        self.label_key = label_key
        self.ignore_index = getattr(loss, "ignore_index", ignore_index)
        self.label_shift = label_shift
        self.form: str | None = None

    def problem(self, batch: Any, name: str, model: nn.Module | None = None) -> str | None:
        """Decide the batch form from the first batch; the problem with it, or None.

        The learner agrees on the answer across ranks (every rank calls this on its
        first batch, see :func:`agree_on_batch`), so a bad batch on one rank raises on all of them.
        """
        inner = None if model is None else _unwrapped(model)
        own = getattr(inner, "batch_problem", None)
        if callable(own) and self.loss_fn is None and (found := own(batch)) is not None:
            return f"{name}: {found}"
        form = _form(batch, self.label_key)
        if form is None and self.loss_fn is not None:
            form = "other"  # loss_fn(model, batch) takes any batch
        if form is None or (form == "dict" and self.loss is not None and self.label_key not in batch):
            return (
                f"{name} must yield (features, labels), (input_1, ..., input_k, labels) with labels a tensor, "
                f"or a dict of tensors with the labels under {self.label_key!r} (label_key); got {describe(batch)}. "
                "Make the dataset return (x, y) pairs (e.g. TensorDataset(x, y)), give the DataLoader a collate_fn "
                "that does, or set label_key / loss_fn."
            )
        found = self._call_problem(batch, form, name, inner) or self._shift_problem(batch, form, name, inner)
        if found is None:
            self.form = form
        return found

    def _call_problem(self, batch: Any, form: str, name: str, inner: nn.Module | None) -> str | None:
        """Whether the model's forward takes the batch as it will be called (a signature check, no call)."""
        if form not in ("pair", "inputs", "dict") or self.loss_fn is not None or inner is None:
            return None
        try:
            signature = inspect.signature(inner.forward)
        except ValueError:  # no signature to check: the call itself will tell
            return None
        model = type(inner).__name__
        try:
            if form == "dict":
                signature.bind(**{k: v for k, v in batch.items() if self.loss is None or k != self.label_key})
            else:
                signature.bind(*batch[:-1])
        except TypeError as error:
            if form == "dict":
                return (f"{name} yields {describe(batch)}, called as model(**batch), but {model}.forward does not "
                        f"take it ({error}). Yield (features, labels) tuples for a model called as model(x) "
                        "(distlearn.data.TextDataset: batch_format: tuple), or dicts of its forward's arguments.")
            return (
                f"{name} yields {describe(batch)}: the model is called with the first {len(batch) - 1} item(s) "
                f"as inputs and the last as labels, but {model}.forward does not take them ({error}). Yield "
                "(features, labels), or (input_1, ..., input_k, labels) for a model with k inputs."
            )
        return None

    def _shift_problem(self, batch: Any, form: str, name: str, inner: nn.Module | None) -> str | None:
        """A model whose outputs are shifted (``label_shift``) against unshifted labels needs the same shift here:
        when it computes the loss itself, or when the labels are its ``input_ids`` (a learner loss)."""
        shift = getattr(inner, "label_shift", None)
        if form != "dict" or self.loss_fn is not None or not is_int(shift) or shift == self.label_shift:
            return None
        labels, ids = batch.get(self.label_key), batch.get("input_ids")
        same = isinstance(labels, torch.Tensor) and isinstance(ids, torch.Tensor) and labels.shape == ids.shape \
            and bool(torch.equal(labels, ids))  # once, on the first batch
        if self.loss is not None and not same:
            return None
        why = "computes its loss on labels it shifts itself" if self.loss is None else "gets its input_ids as labels"
        return (f"{name}: {type(inner).__name__} predicts label t+{shift} at position t and {why}, but the learner's "
                f"label_shift is {self.label_shift}: set label_shift={shift} (learner_parameters.label_shift: {shift} "
                "in a config), so that the first label of each row is not counted as a target")

    def _check(self, batch: Any) -> None:
        form = _form(batch, self.label_key) or "other"
        if self.form is None:
            self.form = form
        elif form != self.form:  # a cheap local check: the forms were agreed on the first batch
            raise ValueError(
                f"the batch form changed: the first batch was {self.form!r}, this one is {describe(batch)}; "
                "every batch must have the same form"
            )

    def step(self, model: nn.Module, batch: Any, idx: torch.Tensor | None = None, require_loss: bool = True) -> Step:
        """Run the model on ``batch`` and compute the loss to backpropagate.

        Args:
            model: the (prepared) model.
            batch: one batch of the agreed form.
            idx: the output rows that count (full-batch training); learner loss only.
            require_loss: raise when no loss can be had (training); else the loss is None (testing).

        Raises:
            ValueError: idx without a learner loss; no loss anywhere (with ``require_loss``).
        """
        self._check(batch)
        rows = batch_rows(batch, self.form, self.label_key)
        if idx is not None and (self.loss is None or self.loss_fn is not None):
            raise ValueError("train_idx/test_idx need the learner's loss (loss=... or loss_configs)")
        if self.loss_fn is not None:
            output = self.loss_fn(model, batch)
            loss, output = output if isinstance(output, tuple) else (output, None)
            return Step(batch, output, loss, rows)
        output = self._forward(model, batch)
        if self.loss is not None:
            labels = self.labels(batch)
            if labels is None:  # a dict batch of the test set without labels
                return Step(batch, output, None, rows)
            logits, target = _pick(logits_of(output), labels, idx)
            return Step(batch, output, self._loss(logits, target), rows)
        if not require_loss and not has_loss(output):
            return Step(batch, output, None, rows)
        return Step(batch, output, model_loss(output), rows)

    def _forward(self, model: nn.Module, batch: Any) -> Any:
        if self.form == "dict":
            if self.loss is not None:  # the learner computes the loss: the model gets its inputs only
                return model(**{k: v for k, v in batch.items() if k != self.label_key})
            return model(**batch)
        return model(*batch[:-1])

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.label_shift and token_labels(target) and logits.dim() == target.dim() + 1:
            logits, target = self._shifted(logits, target)
        logits, target = flat_tokens(self.loss, logits, target)
        if logits.is_floating_point() and logits.dtype != torch.float64:
            logits = logits.float()  # the loss of half-precision logits, computed in fp32 (as Accelerate does for DDP)
        if not torch.is_autocast_enabled(logits.device.type):  # entering even a disabled autocast costs per step
            return self.loss(logits, target)
        with torch.autocast(logits.device.type, enabled=False):  # ... and not cast back down by autocast
            return self.loss(logits, target)

    def labels(self, batch: Any) -> torch.Tensor | None:
        """The batch's labels (None for a dict batch without them, or a batch only loss_fn understands)."""
        if self.form == "dict":
            return batch.get(self.label_key)
        if self.form == "other":
            return None
        return batch[-1]

    def real(
        self,
        accelerator: Any,
        step: Step,
        model: nn.Module,
        idx: torch.Tensor | None = None,
        scores: bool = True,
        keep_ignored: bool = False,
    ) -> BatchResult:
        """What is reported of a batch: its real rows' loss and weight, scores and targets.

        Args:
            accelerator: gives ``gradient_state`` (end of data, remainder) and ``process_index``.
            step: what :meth:`step` returned.
            model: the model :meth:`step` ran (run again, without gradients and in eval mode, on the real rows
                of the last batch when the model or ``loss_fn`` computes the loss).
            idx: the output rows used (full-batch training), or None.
            scores: also return scores and targets (False: both None, nothing is computed).
            keep_ignored: token scores and targets are flattened but the tokens equal to ``ignore_index``
                are left in (``BatchResult.ignored`` says so): no host sync, for a metric that leaves them out
                itself (:func:`leaves_out_ignored`). False: only the target tokens, by boolean indexing,
                which syncs with the host once per call.
        """
        real = real_rows(accelerator, step.rows)
        batch, output, loss = step.batch, step.output, step.loss
        if real < step.rows and idx is None:
            if self.loss is not None and self.loss_fn is None:  # the learner's loss: slice the outputs
                batch, output = slice_rows(batch, real), slice_output(output, real)
                if real and loss is not None:
                    with torch.no_grad():
                        loss = self._loss(logits_of(output), self.labels(batch))
            else:  # the model or loss_fn computed the loss: run the real rows again, in eval mode (every
                # rank on this last batch does, one without a real row on all its rows, which then weigh 0)
                part = slice_rows(batch, real) if real else batch
                with torch.no_grad(), accelerator.autocast(), _eval_mode(model):
                    again = self.step(model, part, require_loss=loss is not None)
                batch, output, loss = part, again.output, again.loss
        labels = self.labels(batch)
        if idx is not None:  # full-batch training on the rows idx (learner loss only, see step())
            output = logits_of(output)
            keep = idx if real == step.rows else idx[idx < real]  # a sync, at most once per epoch
            output, labels = output[keep], labels[keep]
            if real < step.rows and keep.numel() and loss is not None:
                with torch.no_grad():
                    loss = self._loss(output, labels)
            weight = self.weight(labels, labels.shape[0]) if keep.numel() else 0
            real = labels.shape[0]  # the rows that count are the selected ones
        else:
            weight = self.weight(labels, real) if real else 0
        loss = None if loss is None else loss.detach()
        if not scores or labels is None or output is None or not real:
            return BatchResult(loss, weight, real, None, None)
        logits, target = logits_of(output).detach(), labels
        if token_labels(target) and logits.dim() == target.dim() + 1:
            logits, target = self._target_tokens(logits, target, keep_ignored)
            if keep_ignored:
                return BatchResult(loss, weight, real, logits, target, self.ignore_index)
        return BatchResult(loss, weight, real, logits, target)

    def weight(self, labels: torch.Tensor | None, rows: int | None) -> Any:
        """Rows, or for token labels the number of target tokens (a 0-d tensor: no host sync)."""
        if labels is None or not token_labels(labels):
            return rows if rows is not None else (labels.shape[0] if labels is not None else 0)
        if self.label_shift:
            labels = labels[:, self.label_shift:]
        return (labels != self.ignore_index).sum()

    def _shifted(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model predicts label t+shift from position t: the outputs and labels that meet."""
        return logits[:, : -self.label_shift], target[:, self.label_shift:]

    def _target_tokens(
        self, logits: torch.Tensor, target: torch.Tensor, keep_ignored: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.label_shift:
            logits, target = self._shifted(logits, target)
        logits = logits.reshape(-1, logits.shape[-1])
        target = target.reshape(-1)
        if keep_ignored:  # the metric leaves them out itself, with a mask: no host sync
            return logits, target
        # Boolean indexing: its size depends on the data, a host sync per call. Only the test's full
        # results (y_pred/y_true of target tokens) and metrics that keep every label come here.
        keep = target != self.ignore_index
        return logits[keep], target[keep]


def _members(metric: Any) -> list[Any]:
    return list(metric.metrics.values()) if isinstance(metric, Metrics) else [metric]


def _can_take(member: Any) -> bool:
    """Accuracy (not multilabel) and Perplexity without an ``ignore_index``: given one, they count
    exactly what they would count of the target tokens alone."""
    if isinstance(member, Accuracy):
        return member.ignore_index is None and member.num_labels is None
    return isinstance(member, Perplexity) and member.ignore_index is None


def leaves_out_ignored(metric: Any, ignore_index: int) -> bool:
    """Whether ``metric`` may be given token targets with the ignored tokens left in.

    True when every member (of a :class:`~distlearn.metrics.Metrics`, or the metric itself) has
    ``ignore_index`` equal to ``ignore_index``, or is an ``Accuracy`` (not multilabel) or
    ``Perplexity`` without one, which :func:`give_ignore_index` sets before the first such batch.
    Any other member (one that would count the ignored tokens) keeps the exact masking path.
    """
    return metric is not None and all(
        _can_take(m) or getattr(m, "ignore_index", None) == ignore_index for m in _members(metric)
    )


def give_ignore_index(metric: Any, ignore_index: int) -> None:
    """Set ``ignore_index`` on the members :func:`leaves_out_ignored` counted on to take it (idempotent).

    Call on the learner's own copy of the metric only: the user's object is left as it was.
    """
    for member in _members(metric):
        if _can_take(member):
            member.ignore_index = ignore_index


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Evaluation mode for a forward pass that only reports: no dropout, and batch norm neither
    updates its running statistics nor fails on a single row. Each module's mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _unwrapped(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/compile wrappers (for its forward signature)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _form(batch: Any, label_key: str) -> str | None:
    if isinstance(batch, Mapping):
        return "dict" if batch and all(isinstance(k, str) for k in batch) else None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[-1], torch.Tensor):
        return "pair" if len(batch) == 2 else "inputs"
    return None



def _pick(output: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None) -> tuple:
    return (output, labels) if idx is None else (output[idx], labels[idx])

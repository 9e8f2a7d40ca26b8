"""Evaluation: the learner's ``test()`` pass.

Every test sample counts once (Accelerate's repeats are left out); the loss, the
metric and the full results are reduced in one collective, so the result is the
same on every rank.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from ..accumulators import Cat, Mean, calculate
from ..metrics import Metric, Metrics
from .batches import BatchRunner, agree_on_batch
from .preparation import registered_models
from .epoch import EpochAccounting
from .records import TestResult
from .scoring import default_predict, model_scores, score_fields

__all__ = ["eval_module", "evaluate"]


def evaluate(accelerator: Accelerator, module: nn.Module, loader: Any, batches: BatchRunner, loss: Any,
             metric: Metric | Metrics | None, idx: torch.Tensor | None, return_full_result: bool,
             return_scores: bool, begin: float) -> TestResult:
    """One pass of ``module`` over the prepared ``loader``, reduced over every rank (see ``BackwardLearner.test``).

    Args:
        loss: The learner's loss (it decides how outputs become scores, see :func:`model_scores`).
        metric: A fresh metric, or None.
        begin: When the test began (its time cost is measured from there).
    """
    accounting = EpochAccounting()
    scores, preds, trues = Cat(), Cat(), Cat()
    has_loss = False
    module.eval()
    with torch.no_grad():
        for step, batch in enumerate(loader):
            if step == 0:  # the batch form, decided on every rank together
                agree_on_batch(batches.problem(batch, "test_loader", module))
            with accelerator.autocast():  # the model may not have been prepared (no train() before)
                out = batches.step(module, batch, idx, require_loss=False)
            # The target tokens only (y_pred/y_true list them): for token labels, boolean indexing syncs
            # with the host once per test batch, which evaluation can afford (training does not).
            batch_result = batches.real(accelerator, out, module, idx, metric is not None or return_full_result)
            has_loss = has_loss or out.loss is not None  # the same on every rank: each has a first batch
            if batch_result.loss is not None and batch_result.rows:
                accounting.add(batch_result.loss, batch_result.weight, batch_result.rows)
            if batch_result.scores is None:
                continue
            score = model_scores(loss, batch_result.scores)
            if metric is not None:
                metric.update(y_score=score, y_true=batch_result.target)
            if return_full_result:
                preds.update(metric.predict(score) if metric is not None else default_predict(loss, score, batch_result.target))
                trues.update(batch_result.target)
                if return_scores:
                    scores.update(score.float())
    if accelerator.distributed_type == DistributedType.FSDP:  # (importing FSDP costs ~0.5 s elsewhere)
        _reshard(module)

    accumulators: dict[str, Any] = {"seconds": Mean()}
    accumulators["seconds"](time.time() - begin)  # the mean over ranks, so all ranks report the same
    if has_loss:
        accumulators["loss"] = accounting.loss_mean()
    if metric is not None:
        accumulators["score"] = metric
    if return_full_result:
        accumulators.update(y_pred=preds, y_true=trues)
        if return_scores:
            accumulators["y_score"] = scores
    values = calculate(accumulators)
    result: TestResult = {
        "test_loss": float(values["loss"]) if "loss" in values else None,
        **score_fields(metric, values.get("score"), "test"),
        "time_cost": float(values["seconds"]),
        "metric_name": metric.name if metric is not None else None,
    }
    if return_full_result:
        y_score = values["y_score"].tolist() if return_scores else None
        result.update(y_pred=values["y_pred"].tolist(), y_true=values["y_true"].tolist(), y_score=y_score)
    return result


def eval_module(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The module to evaluate: unwrapped from DDP, so evaluation needs no collective per batch.

    Under FSDP a model train() sharded runs forward through its wrapper (only it can gather the
    weights). A model train() never prepared (test() first) holds its full weights and is evaluated
    as without FSDP, on this rank's device, under test()'s autocast. It is not prepared here:
    ``prepare_model`` would register it with the Accelerator for good (``save_state`` would save it
    next to the trained model), patch its ``forward``, and leave it on the host (Accelerate places
    no model under FSDP), with the batches on the GPU.
    """
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        models = registered_models(accelerator)
        wrapped = next((m for m in models if m is model or accelerator.unwrap_model(m) is model), None)
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

"""Throughput, time and memory, measured: the ``throughput`` block of each epoch's record.

Checked here on real runs: the time split is fractions summing to at most 1; the rates are the
counts over the epoch's seconds; FLOPs per sample are the hand count of an MLP, and counting them
leaves the run bitwise what it is without; MFU stays at or below 1 against a matmul peak measured
here; target tokens leave ``ignore_index`` out and 1 and 2 processes count the same samples and
tokens; the running loss reaches an offline W&B run against an increasing ``global_step``; the
peak table's names match the devices' names; ``run.peak_tflops`` is refused with its key.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import reset_accelerate
from test_batches import Sequences, TinyLM, pad_collate
from test_cli import distlearn, run_env
from test_tracking import read_wandb_run, wandb_records
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distlearn import BackwardLearner
from distlearn.checkpoint import Checkpoints
from distlearn.runtime.peaks import PEAKS, find_peak
from distlearn.training.steps import describe_epoch
from distlearn.training.throughput import Monitor, count_flops

IN, HIDDEN, OUT = 8, 16, 3


def _loaders(n: int = 90, batch: int = 12) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, IN, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    data = TensorDataset(x, y)
    return {"train_loader": DataLoader(data, batch_size=batch, shuffle=True), "test_loader": DataLoader(data, 30)}


class Noise(nn.Module):
    """Draws from the RNG in train and eval mode alike (as a sampling layer does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.randn_like(x)


def _mlp(noisy: bool = False) -> nn.Module:
    torch.manual_seed(1)
    if noisy:  # dropout and Noise draw from the RNG; batch norm updates its running statistics in train mode
        return nn.Sequential(nn.Linear(IN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(), nn.Dropout(0.3), Noise(),
                             nn.Linear(HIDDEN, OUT))
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def _train(model: nn.Module, monitor: Monitor | None = None, checkpoints: Checkpoints | None = None,
           epochs: int = 2) -> dict:
    reset_accelerate()
    learner = BackwardLearner(
        n_epochs=epochs, loss=nn.CrossEntropyLoss(), display_every_n_steps=2,
        optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1}},
    )
    return learner.train(model, _loaders(), disable_tqdm=True, monitor=monitor, checkpoints=checkpoints)


def _hand_count() -> int:
    """2*in*out per Linear forward; backward twice that, less the first layer's input gradient (the data
    needs none, and autograd computes none)."""
    forward = 2 * (IN * HIDDEN + HIDDEN * OUT)
    return forward + 2 * forward - 2 * IN * HIDDEN


def test_flops_per_sample_is_the_hand_count_of_an_mlp(fresh_accelerate):
    record = _train(_mlp(), epochs=1)
    assert record["training"][0]["throughput"]["flops_per_sample"] == _hand_count()
    # on any batch: per row, the gradients of the parameters only (as loss.backward() computes them)
    x = torch.randn(5, IN, requires_grad=True)
    assert count_flops(_mlp(), lambda m: m(x).sum()) == 5 * _hand_count()


def test_counting_flops_leaves_the_run_bitwise_unchanged(fresh_accelerate):
    """Dropout, noise and batch norm: a count that drew from the RNG or updated the norm's statistics
    would change every later number."""
    runs = []
    for measure in (True, False):
        model = _mlp(noisy=True)
        record = _train(model, Monitor(measure_flops=measure))
        losses = [(e["train_loss"], e["test_result"]["test_loss"]) for e in record["training"].values()]
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items()}, record))
    (measured, weights, record), (plain, plain_weights, plain_record) = runs
    assert measured == plain
    assert all(torch.equal(weights[k], plain_weights[k]) for k in weights)
    assert "flops_per_sample" in record["training"][0]["throughput"]
    assert "flops_per_sample" not in plain_record["training"][0]["throughput"]


def test_the_time_split_is_fractions_of_the_epoch_and_the_rates_are_its_counts(fresh_accelerate, tmp_path):
    record = _train(_mlp(), checkpoints=Checkpoints(tmp_path, every_n_steps=3))
    for epoch in record["training"].values():
        block = epoch["throughput"]
        split, seconds = block["time_split"], block["seconds"]
        assert set(split) == {"data_wait", "steps", "evaluation", "checkpoints"}
        assert all(0 < v <= 1 for v in split.values()), split  # every part took some time here
        assert sum(split.values()) <= 1 + 1e-12, split
        evaluation = epoch["test_result"]["time_cost"]
        assert seconds["evaluation"] == evaluation
        end_checkpoint = block["epoch_seconds"] - epoch["time_cost"] - evaluation  # the pass, eval, then its save
        assert 0 < end_checkpoint <= seconds["checkpoints"] + 1e-9
        for key, value in seconds.items():
            assert split[key] == pytest.approx(value / block["epoch_seconds"])
        assert epoch["samples"] == 90 and epoch["samples_per_second"] == pytest.approx(90 / epoch["time_cost"])
        assert block["achieved_tflops"] == pytest.approx(_hand_count() * 90 / epoch["time_cost"] / 1e12)
        assert "tokens" not in block and "mfu" not in block  # no token labels; no known peak on a CPU
        assert 10 * 2**20 < block["peak_memory"]["cpu_peak_rss"] < 2**40  # bytes, not KiB


def _matmul_peak_tflops(n: int = 512, repeats: int = 5) -> float:
    """The best float32 matmul rate of this process (its threads), in TFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(8):
            a @ b
        best = max(best, 8 * 2 * n**3 / (time.perf_counter() - began) / 1e12)
    return best


def test_mfu_stays_at_or_below_one_against_a_measured_matmul_peak(fresh_accelerate):
    """A model of wide matmuls (its MFU measured here 0.01-0.9, as the shared machine's load comes and
    goes); the FLOP count and the rate are held exactly by the tests above."""
    width, rows = 256, 1024
    peak = _matmul_peak_tflops()
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(rows, width), torch.randint(0, 4, (rows,)))
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
    reset_accelerate()
    learner = BackwardLearner(
        n_epochs=2, loss=nn.CrossEntropyLoss(), display_every_n_steps=0,
        optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.01}},
    )
    record = learner.train(model, DataLoader(data, batch_size=64), disable_tqdm=True,
                           monitor=Monitor(peak_tflops=peak))
    peak = max(peak, _matmul_peak_tflops())  # the machine's best either side of the run (it is shared)
    for epoch in record["training"].values():
        block = epoch["throughput"]
        assert block["peak_source"] == "run.peak_tflops"
        assert block["mfu"] == pytest.approx(block["achieved_tflops"] / block["peak_tflops"])
        assert 0 < block["achieved_tflops"] / peak <= 1, (block, peak)


def token_counts(rank: int, world: int, label_shift: int) -> list:
    """Samples and target tokens per epoch of TinyLM on padded batches (23 sequences: a padded last batch)."""
    reset_accelerate()
    learner = BackwardLearner(
        n_epochs=2, loss=nn.CrossEntropyLoss(), label_shift=label_shift, display_every_n_steps=0,
        optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.5}},
    )
    loader = DataLoader(Sequences(), batch_size=max(1, 6 // world), shuffle=True, collate_fn=pad_collate)
    record = learner.train(TinyLM(), loader, disable_tqdm=True)
    return [(e["samples"], e["throughput"]["tokens"], e["throughput"]["tokens_per_second"] * e["time_cost"])
            for e in record["training"].values()]


@pytest.mark.parametrize("label_shift", [0, 1])
def test_tokens_leave_ignore_index_out_and_two_processes_count_what_one_counts(dist_pool, label_shift):
    rows = Sequences().rows
    want = sum(len(r) - 1 - label_shift for r in rows)  # each row's labels, less the shifted-off ones
    for world in (1, 2):
        results = dist_pool.run(token_counts, world, label_shift)
        assert results[0] == results[-1]  # every rank holds the same record
        for samples, tokens, rate_times_seconds in results[0]:
            assert (samples, tokens) == (len(rows), want), (world, samples, tokens)
            assert rate_times_seconds == pytest.approx(tokens)


def test_running_loss_reaches_offline_wandb_against_an_increasing_global_step(tmp_path):
    out = tmp_path / "run"
    env = run_env(WANDB_MODE="offline")
    env.pop("WANDB_DIR", None)
    result = distlearn("learner_configs.learner_parameters.n_epochs=2",
                       "learner_configs.learner_parameters.display_every_n_steps=4",
                       f"run.output_dir={out}", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\n  throughput " in result.stdout and "cpu_peak_rss" in result.stdout  # the summary
    (file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    run = read_wandb_run(file)
    steps = [row["global_step"] for row in run["steps"]]
    record = json.loads((out / "record.json").read_text())["training"]
    assert steps == sorted(set(steps)) and len(steps) >= 2, steps  # strictly increasing
    assert steps[-1] <= record["1"]["optimizer_steps"]
    assert all(isinstance(row["running/loss"], float) for row in run["steps"])
    assert sorted(run["history"]) == [0, 1]
    assert "samples/s, data wait " in describe_epoch(1, 2, record["1"])  # the epoch's console line
    for epoch, row in run["history"].items():
        block = record[str(epoch)]["throughput"]
        assert row["throughput/time/data_wait"] == block["time_split"]["data_wait"]
        assert row["throughput/memory/cpu_peak_rss"] == block["peak_memory"]["cpu_peak_rss"]
    axes = {r.metric.name or r.metric.glob_name: r.metric.step_metric
            for r in wandb_records(file) if r.WhichOneof("record_type") == "metric"}
    assert axes["running/*"] == "global_step" and axes["train/*"] == "epoch"


def test_peak_table_matches_device_names_word_by_word():
    assert find_peak("NVIDIA H100 80GB HBM3")[0] == "H100"
    assert find_peak("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert find_peak("NVIDIA A100-SXM4-80GB")[0] == "A100"
    assert find_peak("NVIDIA H200")[0] == "H200"
    assert find_peak("Tesla V100-SXM2-16GB")[0] == "V100"
    assert find_peak("AMD Instinct MI300X")[0] == "MI300X"
    assert find_peak("NVIDIA A10G") is None  # not an A10: no datasheet figure, no MFU
    assert find_peak("NVIDIA GeForce RTX 4090") is None
    for name, peak in PEAKS.items():
        assert "datasheet" in peak.source, name
        assert peak.fp32 <= (peak.tf32 or peak.fp32) <= (peak.bf16 or peak.fp16), name


def test_peak_tflops_is_refused_with_its_key(tmp_path):
    with pytest.raises(ValueError, match="peak_tflops must be None or a finite number > 0"):
        Monitor(peak_tflops=0)
    result = distlearn("run.peak_tflops=-3", f"run.output_dir={tmp_path / 'run'}", cwd=tmp_path, env=run_env())
    assert result.returncode == 2
    assert "run.peak_tflops: expected null (the known peak of the device, if any) or a finite number > 0" in (
        result.stderr) and "got -3" in result.stderr
    assert not (tmp_path / "run").exists()

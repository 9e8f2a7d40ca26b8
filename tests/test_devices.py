"""Device rules checked on the CPU: what a GPU run depends on, shown with CPU stand-ins.

Each test fails if the rule it names is undone; `benchmarks/gpu_check.py` checks the
rest on a real GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from distlearn import Accuracy, BackwardLearner
from distlearn.runtime.accelerator import build_accelerator


def _data(n: int = 30) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=7)


def _learner(**kwargs) -> BackwardLearner:
    return BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), **kwargs,
                           optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1}})


def test_a_bare_device_and_its_indexed_form_are_the_same_device(fresh_accelerate):
    """train(device="cpu") then test(device="cpu:0"): the same device (as "cuda" and "cuda:0" on a GPU)."""
    learner, net, loader = _learner(), nn.Linear(6, 2), _data()
    learner.train(net, loader, device="cpu", disable_tqdm=True)
    assert learner.test(net, loader, device="cpu:0", metric=Accuracy())["test_score"] is not None
    with pytest.raises(ValueError, match="device='meta'"):
        learner.test(net, loader, device="meta")


class _HalfModel(nn.Module):
    """Parameters in bf16 (as under FSDP2's mixed-precision policy): bf16 logits without any autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 2).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.to(torch.bfloat16))


def test_the_loss_of_half_precision_logits_is_computed_in_fp32(fresh_accelerate):
    """The reported loss is the fp32 loss of the model's bf16 logits, not a bf16 loss."""
    torch.manual_seed(0)
    net, loader = _HalfModel(), _data()
    result = _learner().test(net, loader, metric=Accuracy(), return_full_result=False)
    with torch.no_grad():
        logits = torch.cat([net(x) for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    # One batch mean per batch, weighted by rows: the per-sample mean of the fp32 losses.
    exact = F.cross_entropy(logits.float(), labels).item()
    assert result["test_loss"] == pytest.approx(exact, rel=1e-6, abs=0)
    assert F.cross_entropy(logits, labels).dtype == torch.bfloat16  # without the upcast the loss would be bf16


def test_deepspeed_is_refused_before_anything_starts(fresh_accelerate, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="DeepSpeed is not supported.*FSDP"):
        build_accelerator()


def test_fsdp_asked_for_where_accelerate_cannot_give_it_is_said(fresh_accelerate, monkeypatch, caplog):
    """Accelerate drops ACCELERATE_USE_FSDP on a CPU without a word; distlearn says so."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level("WARNING", logger="distlearn"):
        accelerator = build_accelerator()
    assert accelerator.distributed_type.value != "FSDP"
    assert any("FSDP was asked for" in r.getMessage() and "FSDP needs GPUs" in r.getMessage() for r in caplog.records)


def test_batches_are_copied_without_blocking_where_there_is_a_gpu(fresh_accelerate):
    """non_blocking copies need pinned loaders: both are on exactly when CUDA is there (off on this CPU)."""
    from distlearn.data import SklearnDataset

    accelerator = build_accelerator()
    assert accelerator.dataloader_config.non_blocking is torch.cuda.is_available()
    loaders = SklearnDataset("iris", batch_size=8).load()
    assert all(loader.pin_memory is torch.cuda.is_available() for loader in loaders.values())


_TWO_BUILDS = """
from distlearn import BackwardLearner
from distlearn.runtime.accelerator import build_accelerator

BackwardLearner(n_epochs=1).accelerator()  # the Python API builds its Accelerator through build_accelerator
build_accelerator()                        # and a user's own loop may build one more
print("done")
"""


def test_an_accelerate_cpu_launch_of_two_warns_once_from_python_and_from_the_cli(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process: the Python API says so as the CLI does,
    once per run however many Accelerators it builds (the CLI warns before reading its config, then builds one)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from launching import launch_env

    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    launch = [accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = launch_env()
    del env["ACCELERATE_USE_CPU"]  # as a user types it
    script = tmp_path / "two_builds.py"
    script.write_text(_TWO_BUILDS)
    runs = {
        "python": subprocess.Popen([*launch, str(script)], env=env, cwd=tmp_path, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        "cli": subprocess.Popen([*launch, "-m", "distlearn", "train", "wine",
                                 "learner_configs.learner_parameters.n_epochs=1", f"run.output_dir={tmp_path / 'run'}",
                                 "-q"],
                                env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
    }
    outputs = {name: proc.communicate(timeout=240) for name, proc in runs.items()}
    warning = "accelerate launch was asked for 2 processes but started only this one"
    for name, (out, err) in outputs.items():
        assert runs[name].returncode == 0, (name, out, err)
        assert err.count(warning) == 1, (name, err)
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 " + str(script) in outputs["python"][1]
    assert outputs["python"][0].count("done") == 1  # one process started, as the warning says

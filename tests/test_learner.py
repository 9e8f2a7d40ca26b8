"""BackwardLearner: 1 vs 2 vs 3 real processes (accelerate launch, ranks launched by hand), schedulers, accumulation,
the CPU trap, bad input on every rank, configs, and host syncs in the training step.

The multi-process runs are four launches of tests/scripts/learner_run.py started together once per
module (they overlap their start-up costs); each writes one JSON per scenario and rank.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import warm
from host_syncs import HostSyncs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distlearn.training.learner import BackwardLearner
from distlearn.metrics import MSE, Accuracy

SCRIPT = Path(__file__).parent / "scripts" / "learner_run.py"
ALL = "even,uneven,accum,bigbatch,plateau,transductive,nan,errors"
LAUNCH_TIMEOUT = 240


def _env(cpu: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]) + os.pathsep + env.get("PYTHONPATH", ""))
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    return env


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start the four launches at once; {launch name: output dir}."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    # The 3- and 2-process runs without a launcher binary: ranks forked warm with the variables torchrun sets
    # (tests/warm.py); accelerate2 is the real `accelerate launch`, and torchrun itself is launched by
    # test_padding (the README loop), test_elastic (restarts) and test_launch (launch/torchrun.sh).
    launches = {
        "python1": ([sys.executable], 1, ALL, True),
        "accelerate2": (
            accelerate + ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                          "--dynamo_backend", "no", "--main_process_port", _free_port()],
            1, ALL, True,
        ),
        "torchrun3": ([sys.executable], 3, "even,uneven,accum,nan", True),
        # No ACCELERATE_USE_CPU on a machine without CUDA: the trap. The learner must still use 2 processes.
        "torchrun2_trap": ([sys.executable], 2, "even,user_trap", False),
    }
    procs, dirs = {}, {}
    for name, (command, ranks, scenarios, cpu) in launches.items():
        dirs[name] = tmp_path_factory.mktemp(name)
        log = open(dirs[name] / "launch.log", "w")
        command = command + [str(SCRIPT), str(dirs[name]), scenarios]
        launch = warm.popen_for(command) if ranks == 1 else functools.partial(warm.Ranks, ranks)
        procs[name] = launch(command, env=_env(cpu), stdout=log, stderr=subprocess.STDOUT)
    for name, proc in procs.items():
        try:
            code = proc.wait(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            pytest.fail(f"{name} did not finish in {LAUNCH_TIMEOUT} s:\n{(dirs[name] / 'launch.log').read_text()[-3000:]}")
        assert code == 0, f"{name} exited {code}:\n{(dirs[name] / 'launch.log').read_text()[-3000:]}"
    return dirs


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("learner_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(runs, launch: str, scenario: str, rank: int = 0) -> dict:
    """One rank's output; every other rank's must exist, not have crashed, and hold the same record,
    test result and weights (the README promises records identical on every rank)."""
    outs = [json.loads((runs[launch] / f"{scenario}.rank{r}.json").read_text()) for r in range(_ranks(launch))]
    for r, other in enumerate(outs):
        assert "crashed" not in other, (r, other.get("crashed"))
        for key in ("record", "test", "weights"):
            assert other.get(key) == outs[0].get(key), (scenario, launch, r, key)
    return outs[rank]


def _ranks(launch: str) -> int:
    return {"python1": 1, "accelerate2": 2, "torchrun3": 3, "torchrun2_trap": 2}[launch]


def _epochs(out: dict) -> list[dict]:
    return [out["record"]["training"][str(e)] for e in range(len(out["record"]["training"]))]


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)


def _same_numbers(one: dict, other: dict, rel: float = 1e-6) -> None:
    """Same losses, scores, lr history, test results, weights and full predictions."""
    for e1, e2 in zip(_epochs(one), _epochs(other), strict=True):
        assert _close(e1["train_loss"], e2["train_loss"], rel), (e1["train_loss"], e2["train_loss"])
        assert e1["train_score"] == e2["train_score"]
        assert e1["lr"] == e2["lr"] and e1["samples"] == e2["samples"]
        assert e1["optimizer_steps"] == e2["optimizer_steps"]
        losses1 = [b["loss"] for b in e1["batch_records"].values()]
        losses2 = [b["loss"] for b in e2["batch_records"].values()]
        assert all(_close(a, b, 1e-5) for a, b in zip(losses1, losses2, strict=True))
        if e1["test_result"] is not None:
            assert _close(e1["test_result"]["test_loss"], e2["test_result"]["test_loss"], rel)
            assert e1["test_result"]["test_score"] == e2["test_result"]["test_score"]
    assert max(abs(a - b) for a, b in zip(one["weights"], other["weights"], strict=True)) < 1e-5
    assert one["test"]["y_true"] == other["test"]["y_true"] and one["test"]["y_pred"] == other["test"]["y_pred"]
    assert all(abs(a - b) < 1e-5 for r1, r2 in zip(one["test"]["y_score"], other["test"]["y_score"]) for a, b in zip(r1, r2))


# --------------------------------------------------------------------------- #
# Several processes
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("launch", ["accelerate2", "torchrun3", "torchrun2_trap"])
def test_same_numbers_and_weights_on_1_2_3_processes(runs, launch):
    one = _load(runs, "python1", "even")
    for rank in range(_ranks(launch)):
        many = _load(runs, launch, "even", rank)
        assert many["num_processes"] == _ranks(launch)  # the CPU trap is handled: the ranks really see each other
        _same_numbers(one, many)
        assert many["record"] == _load(runs, launch, "even", 0)["record"]  # identical records on every rank
    assert [e["lr"] for e in _epochs(one)] == [0.1, 0.05, 0.025]  # per-epoch StepLR, once per epoch
    assert one["state"] == {"epoch": 3, "step": 24, "seed": 0}


def test_test_results_are_every_sample_once_in_dataset_order(runs):
    """37 test samples, 5 per batch per rank: padded on 2 and 3 processes, yet each sample once, in order."""
    labels = _script().data(37, seed=9).tensors[1].tolist()
    for launch in ("python1", "accelerate2", "torchrun3"):
        for rank in range(_ranks(launch)):
            test = _load(runs, launch, "even", rank)["test"]
            assert test["y_true"] == labels
            assert len(test["y_pred"]) == len(test["y_score"]) == 37
            assert test["y_pred"] == torch.tensor(test["y_score"]).argmax(-1).tolist()
            assert set(test) == {"test_loss", "test_score", "test_scores", "time_cost", "metric_name", "y_pred", "y_true",
                                 "y_score"}


def test_uneven_data_report_exact_numbers(runs):
    """50 samples, global batch 6: Accelerate repeats samples in the last step; no reported number counts them."""
    one = _load(runs, "python1", "uneven")
    for launch in ("accelerate2", "torchrun3"):
        many = _load(runs, launch, "uneven")
        first1, first_many = _epochs(one)[0], _epochs(many)[0]
        # Epoch 0 runs on the same weights up to its last step: its numbers agree exactly.
        assert _close(first1["train_loss"], first_many["train_loss"])
        assert first1["train_score"] == first_many["train_score"]
        for e in _epochs(many):
            assert e["samples"] == 50 and len(e["batch_records"]) == 9
        # The last step trained on repeated samples (see the README): later weights differ, a little.
        assert abs(_epochs(one)[1]["train_loss"] - _epochs(many)[1]["train_loss"]) < 0.1
        assert len(many["test"]["y_true"]) == 37 and many["test"]["y_true"] == one["test"]["y_true"]


def test_gradient_accumulation_and_per_step_scheduler(runs):
    """2 micro-batches of 6 == one batch of 12; StepLR per optimizer step: 4 steps an epoch on any world size."""
    for launch in ("python1", "accelerate2", "torchrun3"):
        accum = _load(runs, launch, "accum")
        assert [e["optimizer_steps"] for e in _epochs(accum)] == [4, 8]
        assert [e["lr"] for e in _epochs(accum)] == pytest.approx([0.1 * 0.9**3, 0.1 * 0.9**7])
        _same_numbers(_load(runs, "python1", "accum"), accum)
    for launch in ("python1", "accelerate2"):
        big = _load(runs, launch, "bigbatch")
        accum = _load(runs, launch, "accum")
        assert max(abs(a - b) for a, b in zip(accum["weights"], big["weights"])) < 1e-5
        assert [e["lr"] for e in _epochs(big)] == [e["lr"] for e in _epochs(accum)]


def test_plateau_scheduler_gets_the_global_test_loss(runs):
    for launch in ("python1", "accelerate2"):
        out = _load(runs, launch, "plateau")
        test_losses = [e["test_result"]["test_loss"] for e in _epochs(out)]  # tested every epoch despite display_step=5
        assert out["best"] == max(test_losses)  # mode="max": best is exactly the largest loss it was given
        assert [e["lr"] for e in _epochs(out)] == [0.1, 0.1, 0.05] and out["final_lr"] == 0.025
    _same_numbers(_load(runs, "python1", "plateau"), _load(runs, "accelerate2", "plateau"))


def test_transductive_full_batch(runs):
    one, two = _load(runs, "python1", "transductive"), _load(runs, "accelerate2", "transductive", 1)
    assert [e["samples"] for e in _epochs(two)] == [15, 15, 15]  # rank 1's repeat of the batch is not counted
    _same_numbers(one, two)
    assert len(two["test"]["y_pred"]) == 15


def test_non_finite_loss_names_epoch_and_step_on_every_rank(runs):
    for launch in ("python1", "accelerate2", "torchrun3"):
        for rank in range(_ranks(launch)):
            out = _load(runs, launch, "nan", rank)
            for every in ("every_0", "every_2"):  # found at the epoch end, or at the step-4 check
                assert out[every]["type"] == "NonFiniteLossError"
                assert "epoch 0, step 3" in out[every]["message"]


def test_non_finite_skip_skips_the_step_on_every_rank_and_counts_it(runs):
    one = _load(runs, "python1", "nan")["skip"]
    for launch in ("python1", "accelerate2", "torchrun3"):
        for rank in range(_ranks(launch)):
            out = _load(runs, launch, "nan", rank)["skip"]
            epochs = _epochs(out)
            assert [e["skipped_steps"] for e in epochs] == [1, 1]
            assert [e["optimizer_steps"] for e in epochs] == [7, 14]  # 8 batches per epoch, one skipped
            assert all(math.isfinite(w) for w in out["weights"])
            for e1, e2 in zip(_epochs(one), epochs, strict=True):  # the same numbers on any number of ranks
                assert _close(e1["train_loss"], e2["train_loss"], 1e-5) and e1["samples"] == e2["samples"]
                assert math.isnan(e2["batch_records"]["3"]["loss"])  # the skipped batch: no loss (weight 0)
            assert max(abs(a - b) for a, b in zip(one["weights"], out["weights"], strict=True)) < 1e-5
    # the skipped step's whole global batch (6 samples) is left out of the epoch's numbers
    assert [e["samples"] for e in _epochs(one)] == [42, 42]


def test_bad_input_errors_on_every_rank(runs):
    for rank in range(2):
        out = _load(runs, "accelerate2", "errors", rank)
        for case in ("empty", "one_rank_empty", "triples", "one_rank_triples"):  # agreed on every rank as one type
            assert out[case]["type"] == "BatchError" and out[case]["value_error"], (case, out[case])
        for case in ("no_optimizer", "no_loss"):
            assert out[case]["type"] == "ValueError", (case, out[case])
        assert "empty (0 batches)" in out["one_rank_empty"]["message"]
        assert "(features, labels)" in out["one_rank_triples"]["message"]
        assert "no optimizer" in out["no_optimizer"]["message"] and "no loss" in out["no_loss"]["message"]
        # the process group survived every error: a full training still runs and agrees
        assert _close(out["after"], _load(runs, "python1", "even")["record"]["training"]["2"]["train_loss"])


def test_cpu_trap_with_a_user_accelerator_is_refused(runs):
    for rank in range(2):
        out = _load(runs, "torchrun2_trap", "user_trap", rank)
        assert out["trapped_num_processes"] == 1
        assert out["error"]["type"] == "RuntimeError"
        assert "2 processes were launched" in out["error"]["message"] and "ACCELERATE_USE_CPU=1" in out["error"]["message"]


# --------------------------------------------------------------------------- #
# One process, in this process
# --------------------------------------------------------------------------- #


def _tiny(n: int = 24, batch: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return {"train_loader": DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True),
            "test_loader": DataLoader(TensorDataset(x, y), batch_size=batch)}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


REFERENCE_CONFIGS = {
    "loss_configs": {"loss_class": "torch.nn.CrossEntropyLoss", "loss_parameters": {"label_smoothing": 0.1}},
    "optimizer_configs": {
        "optimizer_class": "torch.optim.AdamW",
        "optimizer_parameters": {"lr": 0.01, "betas": [0.9, 0.99], "weight_decay": 0.05},
    },
    "lr_scheduler_configs": {
        "lr_scheduler_class": "torch.optim.lr_scheduler.StepLR",
        "lr_scheduler_parameters": {"step_size": 1, "gamma": 0.5},
    },
}


def test_reference_configs_build_the_right_objects_and_stay_unmodified(fresh_accelerate):
    configs = copy.deepcopy(REFERENCE_CONFIGS)
    learner = BackwardLearner(name="ref", n_epochs=2, **configs)
    assert isinstance(learner.loss, nn.CrossEntropyLoss) and learner.loss.label_smoothing == 0.1
    assert learner._optimizer_spec == (torch.optim.AdamW, {"lr": 0.01, "betas": [0.9, 0.99], "weight_decay": 0.05})
    assert learner._lr_scheduler_spec == (torch.optim.lr_scheduler.StepLR, {"step_size": 1, "gamma": 0.5})
    seen = []
    record = learner.train(_net(), _tiny(), metric=Accuracy(), disable_tqdm=True,
                           on_epoch_end=lambda epoch, summary: seen.append((epoch, summary["train_loss"])))
    assert [e["lr"] for e in record["training"].values()] == [0.01, 0.005]
    assert seen == [(e, record["training"][e]["train_loss"]) for e in (0, 1)]
    assert configs == REFERENCE_CONFIGS  # never written to, not even after training
    json.dumps(record)  # JSON-serialisable


def test_objects_win_over_configs_and_omegaconf_configs_work(fresh_accelerate):
    from omegaconf import OmegaConf

    loss = nn.MSELoss()
    learner = BackwardLearner(loss=loss, **{k: OmegaConf.create(v) for k, v in REFERENCE_CONFIGS.items()})
    assert learner.loss is loss
    assert learner._optimizer_spec[1]["betas"] == [0.9, 0.99]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer_configs": {"optimizer_class": "torch.optim.AdamWW"}}, "did you mean 'torch.optim.AdamW'"),
        ({"optimizer_configs": {"optimizer_class": "torch.optimz.AdamW"}}, "module 'torch.optimz' not found — did you mean 'torch.optim.AdamW'"),
        ({"optimizer_configs": {"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lrr": 1}}},
         "optimizer_configs.optimizer_parameters does not fit SGD"),
        ({"optimizer_configs": {"optimizer_parameters": {"lr": 1}}}, "optimizer_configs.optimizer_class is missing"),
        ({"optimizer_configs": {"optimizer_class": "torch.optim.SGD", "optimizer_params": {}}}, "unknown keys ['optimizer_params']"),
        ({"optimizer_configs": {"optimizer_class": "torch.nn.Linear"}}, "is not a torch.optim.optimizer.Optimizer class"),
        ({"lr_scheduler_configs": {"lr_scheduler_class": "torch.optim.lr_scheduler.StepLR"}},
         "lr_scheduler_configs.lr_scheduler_parameters does not fit StepLR"),
        ({"loss_configs": {"loss_class": "torch.nn.CrossEntropyLoss", "loss_parameters": {"smoothing": 0.1}}},
         "loss_configs.loss_parameters does not fit CrossEntropyLoss"),
        ({"lr_scheduler_configs": {"lr_scheduler_class": "torch.optim.lr_scheduler.ReduceLROnPlateau"},
          "scheduler_interval": "step"}, "use scheduler_interval='epoch'"),
        ({"n_epochs": 0}, "n_epochs must be an int >= 1, got 0"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"scheduler_interval": "batch"}, "scheduler_interval must be one of"),
        ({"max_grad_norm": -1}, "max_grad_norm must be a number > 0"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be an int >= 1"),
    ],
)
def test_invalid_options_and_configs_name_the_key(kwargs, message):
    with pytest.raises((ValueError, TypeError)) as error:
        BackwardLearner(**kwargs)
    assert message in str(error.value)


def test_fp16_on_cpu_and_foreign_metrics_are_refused(fresh_accelerate):
    learner = BackwardLearner(loss=nn.CrossEntropyLoss(), optimizer_configs=REFERENCE_CONFIGS["optimizer_configs"],
                              mixed_precision="fp16")
    with pytest.raises(ValueError, match="fp16.*needs a GPU"):
        learner.train(_net(), _tiny(), disable_tqdm=True)
    learner = BackwardLearner(loss=nn.CrossEntropyLoss(), optimizer_configs=REFERENCE_CONFIGS["optimizer_configs"])
    with pytest.raises(TypeError, match="metric must be a distlearn metric"):
        learner.train(_net(), _tiny(), metric=lambda y_true, y_pred: 0.0, disable_tqdm=True)


def test_bf16_trains_and_reports_float_numbers(fresh_accelerate):
    learner = BackwardLearner(n_epochs=1, loss=nn.MSELoss(), mixed_precision="bf16",
                              optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.01}})
    x = torch.randn(20, 8)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=6)
    record = learner.train(nn.Linear(8, 1), {"train_loader": loader, "test_loader": loader}, metric=MSE(), disable_tqdm=True)
    epoch = record["training"][0]
    assert math.isfinite(epoch["train_loss"]) and epoch["samples"] == 20
    assert isinstance(epoch["test_result"]["test_score"], float)


def test_no_host_sync_per_training_step(fresh_accelerate):
    """Count what would sync on a GPU (tests/host_syncs.py) over an epoch: the count must not grow with steps.

    SGD, because Adam calls .item() on its step counter every step (a host tensor, no device sync on a GPU).
    """

    def syncs(n_batches: int) -> int:
        learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), max_grad_norm=1.0, display_every_n_steps=0,
                                  optimizer_configs={"optimizer_class": "torch.optim.SGD",
                                                     "optimizer_parameters": {"lr": 0.1, "momentum": 0.9}},
                                  lr_scheduler_configs=REFERENCE_CONFIGS["lr_scheduler_configs"], scheduler_interval="step")
        loaders = _tiny(n=4 * n_batches)
        with HostSyncs() as counted:
            learner.train(_net(), loaders, metric=Accuracy(), test_check=False, disable_tqdm=True)
        return counted.n

    syncs(4)  # warm-up: first-call caches
    few, many = syncs(5), syncs(25)
    assert few == many, f"{few} host syncs for 5 steps, {many} for 25: something syncs every step"
    assert few < 40



def test_bce_with_logits_scores_are_probabilities_everywhere(fresh_accelerate):
    """Logits in (-0.3, 0.3): thresholding them at 0.5 (as for probabilities) would call every positive 0."""
    x = torch.tensor([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]).reshape(-1, 1)
    y = (x > 0).float()
    net = nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(0.1)
        net.bias.zero_()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    learner = BackwardLearner(n_epochs=1, loss=nn.BCEWithLogitsLoss(),  # lr 0: the weights stay as set
                              optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.0}})
    record = learner.train(net, {"train_loader": loader, "test_loader": loader}, metric=Accuracy(), disable_tqdm=True)
    assert record["training"][0]["train_score"] == 1.0 and record["training"][0]["test_result"]["test_score"] == 1.0
    for metric in (Accuracy(), None):  # the metric's rule and the learner's default rule agree
        full = learner.test(net, loader, metric=metric)
        assert torch.tensor(full["y_score"]) == pytest.approx(torch.sigmoid(0.1 * x))
        assert torch.tensor(full["y_pred"]).reshape(-1).tolist() == y.reshape(-1).long().tolist()
    assert full["test_score"] is None and full["metric_name"] is None


def test_train_twice_leaves_one_of_each_in_the_accelerator(fresh_accelerate):
    """A second train() replaces the learner's own prepared objects, and keeps the user's."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    other = accelerator.prepare(nn.Linear(2, 2))
    learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), accelerator=accelerator, **{
        k: REFERENCE_CONFIGS[k] for k in ("optimizer_configs", "lr_scheduler_configs")})
    net, loaders = _net(), _tiny()
    for _ in range(2):
        learner.train(net, loaders, disable_tqdm=True)
    assert len(accelerator._models) == 2 and accelerator._models[0] is other and accelerator._models[1] is net
    assert len(accelerator._optimizers) == 1 and len(accelerator._schedulers) == 1
    optimizer = accelerator._optimizers[0].optimizer  # the current pair, not a stale one
    assert accelerator._schedulers[0].scheduler.optimizer is optimizer
    assert optimizer.param_groups[0]["params"][0] is next(net.parameters())


def test_load_state_dict_resumes_from_the_loaded_epoch_and_step(fresh_accelerate):
    learner = BackwardLearner(n_epochs=3, loss=nn.CrossEntropyLoss(), optimizer_configs=REFERENCE_CONFIGS["optimizer_configs"])
    net, loaders = _net(), _tiny()  # 6 batches: 6 optimizer steps an epoch
    learner.load_state_dict({"epoch": 2, "step": 12, "seed": 0})
    record = learner.train(net, loaders, disable_tqdm=True)
    assert list(record["training"]) == [2] and record["training"][2]["optimizer_steps"] == 18
    assert learner.state_dict() == {"epoch": 3, "step": 18, "seed": 0}
    record = learner.train(net, loaders, disable_tqdm=True)  # no load before it: from 0 again
    assert list(record["training"]) == [0, 1, 2] and learner.state_dict()["step"] == 18


def test_several_metrics_ride_in_one_record_and_match_single_runs(fresh_accelerate):
    """metric={...} reports every metric (train and test); the first is the primary score, and each value
    equals what a run with that metric alone reports (same seed, same data order)."""
    from distlearn.metrics import F1

    def run(metric):
        fresh_accelerate()  # the fixture's reset: a new Accelerator for each run
        torch.manual_seed(0)
        learner = BackwardLearner(n_epochs=2, loss=nn.CrossEntropyLoss(),
                                  optimizer_configs={"optimizer_class": "torch.optim.SGD",
                                                     "optimizer_parameters": {"lr": 0.1}})
        return learner.train(_net(), _tiny(), metric=metric, disable_tqdm=True)["training"][1]

    both = run({"acc": Accuracy(), "f1": F1(average="macro")})
    acc, f1 = run(Accuracy()), run(F1(average="macro"))
    assert both["metric_name"] == "acc" and set(both["train_scores"]) == {"acc", "f1"}
    assert both["train_score"] == both["train_scores"]["acc"] == acc["train_score"]
    assert both["train_scores"]["f1"] == f1["train_score"]
    assert both["test_result"]["test_scores"] == {"acc": acc["test_result"]["test_score"],
                                                  "f1": f1["test_result"]["test_score"]}
    assert acc["train_scores"] == {"accuracy": acc["train_score"]}  # one metric: the same shape
    with pytest.raises(TypeError, match="distlearn metric"):
        run(object())


def test_the_sample_count_an_elastic_resume_judges_padding_by():
    """The training samples per epoch: the sampler's (a subset sampler's own length), None when unknowable."""
    from torch.utils.data import BatchSampler, SequentialSampler, SubsetRandomSampler

    from distlearn.training.preparation import n_samples as _n_samples

    data = TensorDataset(torch.zeros(50, 2))
    assert _n_samples(DataLoader(data, batch_size=6, shuffle=True)) == 50
    assert _n_samples(DataLoader(data, batch_size=6, sampler=SubsetRandomSampler(range(30)))) == 30
    batches = BatchSampler(SequentialSampler(data), batch_size=6, drop_last=False)
    assert _n_samples(DataLoader(data, batch_sampler=batches)) is None
    assert _n_samples(None) is None

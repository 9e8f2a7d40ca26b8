"""Every promise of README.md fails a test here when it is broken.

Through the public API only (``distlearn.BackwardLearner``, ``distlearn.accumulators``,
``python -m distlearn train``, the launch scripts), so these tests survive refactors
of the modules behind it. Each test names the promise it guards; each was seen to
fail with the promise broken by hand (benchmarks/mutate.py keeps such mutations).
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import reset_accelerate
from host_syncs import HostSyncs
import warm
from launching import launch_env
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from distlearn import BackwardLearner
from distlearn.accumulators import Cat, List, Max, Mean, Min, Sum, calculate
from distlearn.metrics import F1, Accuracy

ROOT = Path(__file__).parents[1]
SCRIPTS = Path(__file__).parent / "scripts"
SCRIPT = SCRIPTS / "promises_run.py"
LAUNCH_TIMEOUT = 180


# --------------------------------------------------------------------------- #
# Launches: 1 process and 2 processes (a hand launch, forked warm), started together once
# --------------------------------------------------------------------------- #

SCENARIOS = "dropout,drop_last,clip"
WORLDS = {"python1": 1, "accelerate2": 2}


def _start_and_wait(starts: dict, dirs: dict) -> dict:
    """Start every (command, env, cwd) at once (their start-up costs overlap); wait for all; their exit codes."""
    procs = {}
    for name, (command, env, cwd) in starts.items():
        command = [str(dirs[name]) if part is None else part for part in command]
        log = open(dirs[name] / "launch.log", "w")
        ranks = WORLDS.get(name, 1)
        # python1, accelerate2 and the W&B run fork warm (2 ranks: a hand launch); the launch scripts start cold
        popen = warm.popen_for(command) if ranks == 1 else functools.partial(warm.Ranks, ranks)
        procs[name] = popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
    codes = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            pytest.fail(f"{name} did not finish in {LAUNCH_TIMEOUT} s")
    return codes


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """promises_run.py on 1 process and 2 (forked warm with the launcher's variables: these promises are the
    library's; `accelerate launch` itself is test_learner's and test_devices')."""
    starts = {name: ([sys.executable, str(SCRIPT), None, SCENARIOS], launch_env(), None) for name in WORLDS}
    dirs = {name: tmp_path_factory.mktemp(name) for name in starts}
    return {"dirs": dirs, "codes": _start_and_wait(starts, dirs)}


def _out(launches, launch: str, scenario: str, rank: int = 0) -> dict:
    out = json.loads((launches["dirs"][launch] / f"{scenario}.rank{rank}.json").read_text())
    assert "crashed" not in out, f"{launch} rank {rank}: {out['crashed']}"
    return out


@pytest.mark.parametrize("launch", list(WORLDS))
def test_every_rank_exits_cleanly_with_its_output(launches, launch):
    """A crash on rank 1 after the last collective: rank 0's files look fine, so check every rank."""
    log = (launches["dirs"][launch] / "launch.log").read_text()
    assert launches["codes"][launch] == 0, f"{launch} exited {launches['codes'][launch]}:\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]
    for rank in range(WORLDS[launch]):
        for scenario in SCENARIOS.split(","):
            _out(launches, launch, scenario, rank)
        done = launches["dirs"][launch] / f"done.rank{rank}.json"
        assert done.exists(), f"rank {rank} of {launch} never reached the end of its script:\n{log[-3000:]}"


def test_ranks_draw_different_dropout_masks_on_the_same_data_order(launches):
    """README: seed + rank for dropout; epoch e's data order depends only on (seed, e), not on the world size."""
    one = _out(launches, "python1", "dropout")
    ranks = [_out(launches, "accelerate2", "dropout", r) for r in range(2)]
    # Step k of 2 processes: rank 0's rows then rank 1's rows == step k of 1 process at the same global batch.
    joined = [a + b for a, b in zip(ranks[0]["indices"], ranks[1]["indices"], strict=True)]
    assert joined == one["indices"]
    assert sorted(i for step in one["indices"][:8] for i in step) == list(range(48))  # one epoch: each sample once
    assert one["indices"][:8] != one["indices"][8:]  # epochs shuffle differently
    # The same step, the same shapes, yet different masks: the ranks' dropout RNGs differ.
    differ = [m0 != m1 for m0, m1 in zip(ranks[0]["masks"], ranks[1]["masks"], strict=True)]
    assert all(differ), f"ranks drew the same dropout mask at steps {[i for i, d in enumerate(differ) if not d]}"


def test_drop_last_weights_agree_on_1_and_2_processes(launches):
    """README: the weights are the same (within 1e-5) with drop_last=True, 50 samples, global batch 6."""
    one = _out(launches, "python1", "drop_last")
    for rank in range(2):
        two = _out(launches, "accelerate2", "drop_last", rank)
        assert two["samples"] == one["samples"] == [48, 48, 48]
        assert max(abs(a - b) for a, b in zip(one["weights"], two["weights"], strict=True)) < 1e-5
        assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(one["loss"], two["loss"], strict=True))


def test_clipping_uses_the_global_gradient_norm_on_2_processes(launches):
    """max_grad_norm=0.01, SGD lr 1: each of 16 steps moves the weights by at most 0.01; 1 and 2 processes agree."""
    one = _out(launches, "python1", "clip")
    moved = math.dist(one["initial"], one["weights"])
    assert 0.05 < moved <= 16 * 0.01 + 1e-4
    for rank in range(2):
        two = _out(launches, "accelerate2", "clip", rank)
        assert max(abs(a - b) for a, b in zip(one["weights"], two["weights"], strict=True)) < 1e-5


# --------------------------------------------------------------------------- #
# One process, in this process
# --------------------------------------------------------------------------- #


def _sgd(lr: float, **extra) -> dict:
    return {"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": lr, **extra}}


def _data(n: int = 24, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


@pytest.mark.parametrize("max_grad_norm", [1e-3, None])
def test_max_grad_norm_clips_the_gradient_as_clip_grad_norm_does(fresh_accelerate, max_grad_norm):
    """Two full-batch SGD steps (lr 1) == a hand loop of backward, clip_grad_norm_, step, zero_grad."""
    data = _data()
    net, reference = _net(), _net()
    hand = torch.optim.SGD(reference.parameters(), lr=1.0)
    for _ in range(2):
        nn.functional.cross_entropy(reference(data.tensors[0]), data.tensors[1]).backward()
        if max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_grad_norm)
            assert norm > 100 * max_grad_norm  # the clip really changes the step
        hand.step()
        hand.zero_grad()
    learner = BackwardLearner(n_epochs=2, loss=nn.CrossEntropyLoss(), optimizer_configs=_sgd(1.0), max_grad_norm=max_grad_norm)
    learner.train(net, DataLoader(data, batch_size=len(data)), disable_tqdm=True)
    for got, want in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)


class _DtypeProbe(nn.Module):
    """Linear layers that record the dtype they computed in, in training and in evaluation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
        self.seen: dict[str, set] = {"train": set(), "eval": set()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        self.seen["train" if self.training else "eval"].add(out.dtype)
        return out


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_mixed_precision_bf16_runs_the_forward_in_bf16(fresh_accelerate, precision, dtype):
    """README: mixed_precision "bf16" on CPU; a learner that ignored it would compute in float32."""
    net = _DtypeProbe()
    loader = DataLoader(_data(), batch_size=6)
    learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer_configs=_sgd(0.1), mixed_precision=precision)
    record = learner.train(net, {"train_loader": loader, "test_loader": loader}, metric=Accuracy(), disable_tqdm=True)
    assert net.seen == {"train": {dtype}, "eval": {dtype}}
    assert all(p.dtype == torch.float32 for p in net.parameters())  # autocast, not a cast of the weights
    assert isinstance(record["training"][0]["train_loss"], float)
    reset_accelerate()  # test() on a model that train() never prepared runs under the same precision
    fresh, learner = _DtypeProbe(), BackwardLearner(loss=nn.CrossEntropyLoss(), mixed_precision=precision)
    learner.test(fresh, loader)
    assert fresh.seen == {"train": set(), "eval": {dtype}}


class _Indexed(Dataset):
    def __init__(self, n: int) -> None:
        self.x, self.y = _data(n).tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return torch.cat([torch.tensor([float(i)]), self.x[i, 1:]]), self.y[i]


class _OrderProbe(nn.Module):
    """Records the sample indices (feature 0) of every training batch, per call of train()."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(7, 2)
        self.order: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.order.extend(x[:, 0].long().tolist())
        return self.linear(x[:, 1:])


def _order(epochs: int, seed: int, state: dict | None = None, burn: int = 0) -> list[int]:
    reset_accelerate()
    torch.manual_seed(1000 + burn)  # whatever the global RNG says, the order must not follow it
    torch.rand(burn)
    probe = _OrderProbe()
    learner = BackwardLearner(n_epochs=epochs, loss=nn.CrossEntropyLoss(), optimizer_configs=_sgd(0.1), seed=seed)
    if state is not None:
        learner.load_state_dict(state)
    learner.train(probe, DataLoader(_Indexed(20), batch_size=4, shuffle=True), disable_tqdm=True)
    return probe.order


def test_data_order_after_load_state_dict_depends_only_on_seed_and_epoch(fresh_accelerate):
    """README: epoch e's order depends only on (seed, e): a resumed epoch 2 sees epoch 2's order."""
    fresh = _order(3, seed=0)
    epochs = [fresh[i * 20 : (i + 1) * 20] for i in range(3)]
    assert all(sorted(e) == list(range(20)) for e in epochs) and epochs[1] != epochs[2]
    assert _order(3, seed=0, state={"epoch": 2, "step": 10, "seed": 0}, burn=7) == epochs[2]
    assert _order(2, seed=5, state={"epoch": 1, "step": 5, "seed": 0}, burn=3) == epochs[1]  # the loaded seed wins
    other = _order(3, seed=1, state={"epoch": 2, "step": 10, "seed": 1})
    assert sorted(other) == list(range(20)) and other != epochs[2]  # and the seed matters


class _CountingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.calls = _net(), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        return self.body(x)


def test_a_nan_loss_stops_training_at_the_next_display_step_not_the_epoch_end(fresh_accelerate):
    """README: every display_every_n_steps steps the ranks check for a NaN/inf loss mid-epoch."""
    x, y = _data(32).tensors
    x[13] = float("nan")  # batch 3 of 8 (batch size 4)
    net = _CountingNet()
    learner = BackwardLearner(n_epochs=2, loss=nn.CrossEntropyLoss(), optimizer_configs=_sgd(0.1), display_every_n_steps=2)
    with pytest.raises(FloatingPointError, match="epoch 0, step 3"):
        learner.train(net, DataLoader(TensorDataset(x, y), batch_size=4), disable_tqdm=True)
    assert net.calls == 4  # stopped at the check after step 3, not after all 8 steps of the epoch


class _CountingLoss(nn.CrossEntropyLoss):
    calls = 0

    def forward(self, input, target):
        _CountingLoss.calls += 1
        return super().forward(input, target)


def test_optimizer_scheduler_and_loss_objects_win_over_configs(fresh_accelerate):
    """README: loss, optimizer, lr_scheduler objects: each wins over its config."""
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    loss = _CountingLoss()
    learner = BackwardLearner(
        n_epochs=2, loss=loss, optimizer=optimizer, lr_scheduler=scheduler,
        loss_configs={"loss_class": "torch.nn.MSELoss", "loss_parameters": {}},
        optimizer_configs={"optimizer_class": "torch.optim.AdamW", "optimizer_parameters": {"lr": 0.3}},
        lr_scheduler_configs={"lr_scheduler_class": "torch.optim.lr_scheduler.StepLR",
                              "lr_scheduler_parameters": {"step_size": 1, "gamma": 0.1}},
    )
    calls = _CountingLoss.calls
    record = learner.train(net, DataLoader(_data(), batch_size=6), disable_tqdm=True)
    assert [e["lr"] for e in record["training"].values()] == [0.05, 0.025]
    assert optimizer.param_groups[0]["lr"] == 0.0125 and scheduler.last_epoch == 2
    # the object was stepped: SGD keeps momentum buffers for the model's own parameters
    assert all("momentum_buffer" in optimizer.state[p] for p in net.parameters())
    assert _CountingLoss.calls - calls >= 8  # 4 batches x 2 epochs went through the loss object


def test_no_host_sync_per_step_with_accumulation_bf16_clipping_and_f1(fresh_accelerate):
    """README: no host sync per step. The count of syncs (tests/host_syncs.py) for n and 2n batches must be
    equal with the options the plain test leaves out: accumulation, bf16, F1, clipping, per-step scheduler."""

    def syncs(n_batches: int) -> int:
        reset_accelerate()
        learner = BackwardLearner(
            n_epochs=1, loss=nn.CrossEntropyLoss(), max_grad_norm=1.0, display_every_n_steps=0,
            gradient_accumulation_steps=2, mixed_precision="bf16", optimizer_configs=_sgd(0.1, momentum=0.9),
            lr_scheduler_configs={"lr_scheduler_class": "torch.optim.lr_scheduler.StepLR",
                                  "lr_scheduler_parameters": {"step_size": 1, "gamma": 0.9}},
            scheduler_interval="step",
        )
        loader = DataLoader(_data(4 * n_batches), batch_size=4, shuffle=True)
        with HostSyncs() as counted:
            learner.train(_net(), loader, metric=F1(num_classes=2, average="macro"), test_check=False,
                          disable_tqdm=True)
        return counted.n

    syncs(4)  # warm-up
    few, many = syncs(6), syncs(12)
    assert few == many, f"{few} host syncs for 6 steps, {many} for 12: something syncs every step"


# --------------------------------------------------------------------------- #
# The command: W&B failing after it started; the launch scripts' MIXED_PRECISION
# --------------------------------------------------------------------------- #

TINY_CONFIG = """
data_configs:
  data_class: distlearn.data.SklearnDataset
  data_parameters: {name: iris, batch_size: 16, test_size: 0.2, seed: 0}
model_configs:
  model_class: promises_run.%s
  model_parameters: {hidden_sizes: [8]}
learner_configs:
  learner_class: distlearn.learner.BackwardLearner
  learner_parameters:
    n_epochs: 3
    optimizer_configs: {optimizer_class: torch.optim.SGD, optimizer_parameters: {lr: 0.1}}
    loss_configs: {loss_class: torch.nn.CrossEntropyLoss, loss_parameters: {}}
metric_configs:
  metric_class: distlearn.metrics.Accuracy
  metric_parameters: {}
run:
  seed: 0
  tracking: {backend: %s, project: promises}
"""


def _config(folder: Path, model: str, backend: str) -> Path:
    path = folder / f"{model}.yaml"
    path.write_text(TINY_CONFIG % (model, backend))
    return path


def _wandb_command(folder: Path):
    command = [sys.executable, "-m", "distlearn", "train", str(_config(folder, "FinishesWandbMLP", "wandb")),
               f"run.output_dir={folder / 'run'}"]
    return command, launch_env(WANDB_MODE="offline", WANDB_DIR=str(folder), PROMISES_WANDB_MARK=str(folder / "finished")), folder


def _dtype_command(script: str):
    def make(folder: Path):
        command = ["bash", str(ROOT / "launch" / script), str(_config(folder, "DtypeMLP", "none")),
                   f"run.output_dir={folder / 'run'}", "learner_configs.learner_parameters.n_epochs=1"]
        env = launch_env(MIXED_PRECISION="bf16", DISTLEARN_CPU_PROCS="1", DISTLEARN_GPUS="0",
                         PROMISES_DTYPE_FILE=str(folder / "dtype"))
        return command, env, folder
    return make


COMMANDS = {"wandb": _wandb_command, "train.sh": _dtype_command("train.sh"), "torchrun.sh": _dtype_command("torchrun.sh")}


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """The command runs (a W&B run, the two launch scripts), started at once."""
    dirs = {name: tmp_path_factory.mktemp(name.replace(".", "_")) for name in COMMANDS}
    starts = {name: make(dirs[name]) for name, make in COMMANDS.items()}
    return {"dirs": dirs, "codes": _start_and_wait(starts, dirs)}


def _finished(commands, name: str) -> tuple[Path, str]:
    folder = commands["dirs"][name]
    log = (folder / "launch.log").read_text()
    assert commands["codes"][name] == 0, f"{name} exited {commands['codes'][name]}:\n{log[-3000:]}"
    return folder, log


def test_wandb_failing_after_start_stops_tracking_not_training(commands):
    """README: if W&B fails after it has started, distlearn logs a warning and stops tracking; training goes on.

    The W&B run is really finished under distlearn's feet (in the model's 5th forward), so its next log fails
    inside W&B itself.
    """
    folder, log = _finished(commands, "wandb")
    assert (folder / "finished").read_text() == "finished"  # the run was live, and then finished underneath
    assert "W&B logging failed at epoch 0, tracking stops" in log
    record = json.loads((folder / "run" / "record.json").read_text())
    assert len(record["training"]) == 3  # every epoch trained after the failure
    assert (folder / "run" / "model.safetensors").exists()


def test_launch_train_sh_honours_mixed_precision_bf16(commands):
    folder, _ = _finished(commands, "train.sh")
    assert (folder / "dtype.rank0").read_text() == "torch.bfloat16"


def test_launch_torchrun_sh_honours_mixed_precision_bf16(commands):
    folder, _ = _finished(commands, "torchrun.sh")
    assert (folder / "dtype.rank0").read_text() == "torch.bfloat16"


# --------------------------------------------------------------------------- #
# Accumulators: what the property tests do not draw (real gloo groups, 2 ranks)
# --------------------------------------------------------------------------- #

NAN, INF = float("nan"), float("inf")


def _special(rank, world, kind, per_rank):
    acc = {"Sum": Sum, "Mean": Mean, "Max": Max, "Min": Min}[kind]()
    for value in per_rank[rank]:
        acc(torch.tensor(value, dtype=torch.float64))
    return acc.calculate()


def _expected(kind: str, values: list[float]) -> float:
    t = torch.tensor(values, dtype=torch.float64)
    return {"Sum": t.sum(), "Mean": t.mean(), "Max": t.max(), "Min": t.min()}[kind].item()


NON_FINITE = [
    ("nan on rank 0", [[NAN, 1.0], [2.0]]),
    ("nan on rank 1", [[1.0], [2.0, NAN]]),
    ("inf", [[1.0], [INF]]),
    ("-inf", [[-INF], [3.0]]),
    ("inf and -inf", [[INF], [-INF]]),
    ("-inf everywhere", [[-INF], [-INF, -INF]]),
]


@pytest.mark.parametrize("kind", ["Sum", "Mean", "Max", "Min"])
@pytest.mark.parametrize(("case", "per_rank"), NON_FINITE, ids=[c for c, _ in NON_FINITE])
def test_nan_and_inf_propagate_as_in_torch(dist_pool, kind, case, per_rank):
    got = dist_pool.run(_special, 2, kind, per_rank)
    want = _expected(kind, per_rank[0] + per_rank[1])
    for value in got:
        value = float(value)
        assert (math.isnan(value) and math.isnan(want)) or value == want, (kind, case, value, want)


def _big_ints(rank, world, per_rank):
    total, mean = Sum(), Mean()
    for value in per_rank[rank]:
        total(torch.tensor(value, dtype=torch.int64))
        mean(torch.tensor(value, dtype=torch.int64))
    return calculate([total, mean])


@pytest.mark.parametrize(
    ("per_rank", "exact"),
    [([[2**52, 3], [2**51, -7]], True),  # partial sums < 2**53: exact
     ([[2**53 + 1], [2**53 + 2]], False)],  # 2**53 + 1 is not a float64: rounded
)
def test_large_integer_sums(dist_pool, per_rank, exact):
    """README: sums are float64 whatever the input dtype: integer sums are exact while partial sums stay
    within 2**53 (float64's exact integers) and carry float64 rounding beyond (a relative 2**-52 per addition)."""
    results = dist_pool.run(_big_ints, 2, per_rank)
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1], strict=True))
    total, mean = results[0]
    true = sum(per_rank[0] + per_rank[1])
    assert total.dtype == torch.int64
    if exact:
        assert int(total) == true
        assert float(mean) == true / 4
    else:
        assert abs(int(total) - true) <= 4 * true * 2**-52
        assert math.isclose(float(mean), true / 2, rel_tol=4 * 2**-52)


def _weighted(rank, world, per_rank):
    mean, vector, rows = Mean(), Mean(), Mean()
    values = torch.tensor([[v, -v] for v, _ in per_rank[rank]], dtype=torch.float64)
    rows.extend(values, weights=torch.tensor([w for _, w in per_rank[rank]], dtype=torch.float64))  # a weight per row
    for value, weight in per_rank[rank]:
        mean(value, weight=weight)
        # float64 tensors: a float32 weight of 1e-3 would be rounded before distlearn sees it
        vector(torch.tensor([value, -value], dtype=torch.float64), weight=torch.tensor([weight, 2 * weight], dtype=torch.float64))
    return calculate([mean, vector, rows])


def test_weights_other_than_one(dist_pool):
    """Mean(value, weight=w) and Mean.extend(rows, weights=w): sum(w * v) / sum(w) over all ranks, with
    fractional, zero and per-element weights."""
    per_rank = [[(1.0, 0.5), (4.0, 2.5), (100.0, 0.0)], [(-2.0, 3.0), (7.0, 1e-3), (5.0, 10.0)]]
    values = [v for rank in per_rank for v, _ in rank]
    weights = [w for rank in per_rank for _, w in rank]
    want = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    for mean, vector, rows in dist_pool.run(_weighted, 2, per_rank):
        assert math.isclose(float(mean), want, rel_tol=1e-12)
        torch.testing.assert_close(vector, torch.tensor([want, -want], dtype=torch.float64), rtol=1e-12, atol=0)
        torch.testing.assert_close(rows, torch.tensor([want, -want], dtype=torch.float64), rtol=1e-12, atol=0)


def _mixed(rank, world, n_sum, n_mean):
    total, mean, top, items, chunks = Sum(), Mean(), Max(), List(), Cat()
    total(torch.arange(n_sum, dtype=torch.float64) * (rank + 1))
    mean(torch.full((n_mean,), float(rank)), weight=rank + 1)
    top(torch.tensor([float(rank), -float(rank)]))
    for step in range(rank + 2):  # uneven: rank r holds r + 2 items
        items({"rank": rank, "step": step})
        chunks(torch.tensor([[rank, step]]))
    return calculate({"sum": total, "mean": mean, "max": top, "list": items, "cat": chunks})


@pytest.mark.parametrize(("n_sum", "n_mean"), [(10, 3), (5000, 3000)])  # 5000 + 6000 sum-like numbers > 4096
def test_more_than_4096_sums_mixed_with_list_cat_and_max_in_one_calculate(dist_pool, n_sum, n_mean):
    results = dist_pool.run(_mixed, 2, n_sum, n_mean)
    base = torch.arange(n_sum, dtype=torch.float64)
    for got in results:
        torch.testing.assert_close(got["sum"], base * 3, rtol=0, atol=0)  # ranks 0 and 1 add 1x and 2x
        want_mean = (0 * 1 + 1 * 2) / 3
        torch.testing.assert_close(got["mean"], torch.full((n_mean,), want_mean, dtype=torch.float64), rtol=1e-12, atol=0)
        assert got["max"].tolist() == [1.0, 0.0]
        steps = [(r, s) for s in range(3) for r in range(2) if s < r + 2]  # step-major
        assert got["list"] == [{"rank": r, "step": s} for r, s in steps]
        assert got["cat"].tolist() == [[r, s] for r, s in steps]


def _empty_rows(rank, world):
    import warnings

    accs = [Max(), Min(), Mean()]
    for acc in accs:
        if rank == 0:
            acc.extend(torch.empty(0, 2, dtype=torch.float64))  # a shape, and no value
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = calculate(accs)
    return values, len(caught)


def test_nothing_accumulated_anywhere_is_nan_with_a_warning(dist_pool):
    """README: a global count of zero gives NaN with a warning (here after extend() with zero rows)."""
    for values, warned in dist_pool.run(_empty_rows, 2):
        for value in values:
            assert torch.isnan(torch.as_tensor(value)).all(), values
        assert warned >= 3


def test_a_score_equal_to_the_threshold_is_positive():
    """Metrics: for 1-D scores the prediction is 1 for probabilities at or above the threshold (``>=``, as in
    torchmetrics and the learner's own rule); a logit of exactly 0 (probability 0.5) is class 1."""
    scores = torch.tensor([0.5, 0.5000001, 0.4999999, 0.7])
    for metric in (Accuracy(), F1()):
        assert metric.predict(scores).tolist() == [1, 1, 0, 1]
    assert Accuracy(threshold=0.7).predict(scores).tolist() == [0, 0, 0, 1]
    assert Accuracy().evaluate(y_true=torch.tensor([1, 0]), y_score=torch.tensor([0.5, 0.4999999])) == 1.0

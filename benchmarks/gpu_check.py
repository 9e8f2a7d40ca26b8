#!/usr/bin/env python
"""distlearn on one GPU: the checks a CPU cannot make, in one run of a few minutes.

    python benchmarks/gpu_check.py             # needs CUDA; about 1-3 minutes on one GPU
    python benchmarks/gpu_check.py --dry-cpu   # no CUDA: the same plumbing on tiny sizes, on the CPU (about 10 s)
    python benchmarks/gpu_check.py --skip speed fsdp   # leave checks out

One line per check, ``[id] what: VERDICT (details)``, VERDICT one of PASS, FAIL, SKIP (cannot
run here, with the reason) or INFO (a measurement). The exit code is 1 when any check FAILs.

Checks:
  acc-sync     calling accumulators and metrics per step never waits for the GPU
               (torch.cuda.set_sync_debug_mode("error") around the loop)
  step-sync    the learner's training steps never wait for the GPU, for mixed precision
               no/bf16/fp16, with and without a metric ("error" mode from the second
               step's loss to the last step's; fp16 allows only the GradScaler's own check).
               On a failure the epoch is run again in "warn" mode and every sync site listed.
  device       train(device="cuda:0") then test(device="cuda:0") and test(device="cuda") on
               the learner's own Accelerator (whose device has no index) work, the weights
               are on cuda:0, another device is refused (--dry-cpu: "cpu", "cpu:0", "meta")
  test-upcast  test() of a model train() never prepared runs under autocast; its loss is
               the float32 loss of those bf16/fp16 logits (fp16 on CUDA only)
  one-proc     without a process group, Cat/List results stay on the inputs' device and
               Cat.calculate() costs about a torch.cat (no host round trip)
  fp16-skip    steps the GradScaler skips (inf gradients) neither count as optimizer
               steps nor step the scheduler
  group-1      a 1-rank NCCL group (gloo with --dry-cpu): the primitives calculate() uses
               (float64 SUM and MAX all_reduce, uint8 all_gather, all_gather_object) and
               calculate() itself, also through its multi-rank path
  gloo-2       two ranks sharing the device over gloo, one rank without data: the
               results are right and come back on the device of the inputs
  max-nan      a NaN on rank 1 survives Max across ranks, as on one process
  speed        the learner against a hand-written Accelerate loop doing the same work
               (interleaved repeats; a time ratio)
  fsdp         1-process FSDP2 (configs/accelerate/fsdp.yaml's settings, bf16) through the
               learner, in a sub-process: Accelerate's state and calculate()'s device
               (CUDA, although the backend is "cuda:nccl,cpu:gloo"); test() before train();
               the loss sees float32 logits while the model outputs bf16; get_state_dict()
               gives plain full tensors of the model's shapes

FSDP on the CPU: Accelerate 1.15 chooses FSDP only for accelerator devices (its distributed
types MULTI_GPU, MULTI_XPU, ...). On the CPU, ACCELERATE_USE_FSDP=true and a
FullyShardedDataParallelPlugin are ignored without an error or a warning: one process started
with RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 gets DistributedType.NO (MULTI_CPU with
ACCELERATE_USE_CPU, the model then wrapped in DDP). torch's fully_shard itself runs on the CPU
over gloo, so with --dry-cpu the fsdp check sets Accelerate's state to what it builds on a GPU
(its plugin from the same FSDP_* variables, bf16 policy) and runs the same checks; its first
line says so. What only the GPU run shows: that Accelerate itself picks FSDP2 from those
variables, the NCCL/gloo backend pair, and the placement of a model on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's distlearn, also without an install

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

warnings.filterwarnings("ignore", message=".*nothing was accumulated.*")


class Checks:
    """Runs checks, prints one line each, remembers failures."""

    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.device = torch.device("cpu") if dry else torch.device("cuda", 0)
        self.failed: list[str] = []

    def line(self, cid: str, what: str, verdict: str, detail: str = "") -> None:
        if verdict == "FAIL":
            self.failed.append(cid)
        print(f"[{cid}] {what}: {verdict}" + (f" ({detail})" if detail else ""), flush=True)

    def run(self, cid: str, what: str, check: Callable[[], tuple[str, str]]) -> None:
        """``check()`` returns (verdict, detail); an unexpected exception is a FAIL line, not the end."""
        try:
            verdict, detail = check()
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            verdict, detail = "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''} at {_site(exc)}"
        finally:
            sync_mode(self, 0)
            reset_accelerate()
        self.line(cid, what, verdict, detail)

    def synchronize(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()


# --------------------------------------------------------------------------- helpers


def sync_mode(checks: Checks, mode: int | str) -> None:
    """torch.cuda.set_sync_debug_mode where CUDA exists; nothing with --dry-cpu."""
    if not checks.dry:
        torch.cuda.set_sync_debug_mode(mode)


@contextlib.contextmanager
def error_on_sync(checks: Checks) -> Iterator[None]:
    checks.synchronize()
    sync_mode(checks, "error")
    try:
        yield
    finally:
        sync_mode(checks, 0)


def reset_accelerate() -> None:
    """Forget Accelerate's process-wide state, so that the next learner may choose another precision."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _site(exc: BaseException) -> str:
    """The frame that raised, and the last distlearn frame on the way (where a sync came from)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    ours = [f for f in frames if "/distlearn/" in f.filename.replace(os.sep, "/")]
    where = f"{Path(last.filename).name}:{last.lineno}"
    if ours and ours[-1] is not last:
        where += f" via distlearn/{Path(ours[-1].filename).name}:{ours[-1].lineno}"
    return where


def data(n: int, features: int, classes: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x @ torch.randn(features, classes, generator=g)).argmax(1)
    return TensorDataset(x, y)


def model(features: int, classes: int, hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


ADAMW = {"optimizer_class": "torch.optim.AdamW", "optimizer_parameters": {"lr": 1e-3}}


class Sizes:
    def __init__(self, dry: bool) -> None:
        self.features, self.classes = 32, 10
        self.hidden = 64 if dry else 1024
        self.n, self.batch = (256, 32) if dry else (16384, 256)
        self.repeats = 2 if dry else 5


# --------------------------------------------------------------------------- accumulators


def check_accumulator_loop(checks: Checks) -> tuple[str, str]:
    from distlearn import Accuracy, Cat, Max, Mean, Sum

    out = torch.randn(64, 10, device=checks.device)
    y = torch.randint(0, 10, (64,), device=checks.device)
    loss = torch.nn.functional.cross_entropy(out, y)
    total, mean, weighted, peak, preds, acc = Sum(), Mean(), Mean(), Max(), Cat(), Accuracy()

    def step() -> None:
        total(loss)
        mean(loss)  # the default weight
        weighted(loss, weight=len(y))  # a Python int weight: the README's idiom
        peak(loss)
        preds(out.argmax(-1))
        acc.update(y_score=out, y_true=y)

    step()  # the first call may create the states
    acc.reset()  # what the learner does at each epoch start: the next update must not sync either
    with error_on_sync(checks):
        for _ in range(20):
            step()
    values = [float(v.calculate()) for v in (total, mean, weighted, peak)]
    expected = float(loss)
    ok = abs(values[0] - 21 * expected) < 1e-6 * max(1.0, abs(21 * expected)) and all(
        abs(v - expected) < 1e-6 for v in values[1:]
    )
    armed = "set_sync_debug_mode('error')" if not checks.dry else "no CUDA: sync mode not armed"
    return ("PASS" if ok else "FAIL"), f"20 steps of Sum/Mean/Mean(weight=int)/Max/Cat/Accuracy, {armed}; values {values}"


# --------------------------------------------------------------------------- learner


class GuardedLoss(nn.CrossEntropyLoss):
    """A CrossEntropyLoss that arms "error" sync mode in each epoch's training steps and disarms it at
    each epoch's last one. Armed from the 2nd step of the first epoch (the 1st creates the states)
    and from the 1st step of the next (its metric update is the first after the epoch's reset): the
    window covers the steps' forward, backward, optimizer and metric work but not the epoch's
    closing collective (which syncs by design)."""

    def __init__(self, checks: Checks, steps: int, mode: str = "error") -> None:
        super().__init__()
        self.checks, self.steps, self.calls, self.mode = checks, steps, 0, mode
        self.dtypes: set[str] = set()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # training steps only (test batches run under no_grad)
            self.calls += 1
            self.dtypes.add(str(input.dtype).removeprefix("torch."))
            if self.calls % self.steps == 0:  # an epoch's last step
                sync_mode(self.checks, 0)
            elif self.calls == 2 or (self.calls > self.steps and self.calls % self.steps == 1):
                self.checks.synchronize()
                sync_mode(self.checks, self.mode)
        return super().forward(input, target)


def check_step_loop(checks: Checks, sizes: Sizes, precision: str, with_metric: bool, mode: str = "error") -> tuple[str, str]:
    """Two epochs of the learner with "error" sync mode over their steps (see GuardedLoss).

    fp16, and ``mode="warn"``: the same run in "warn" mode, every sync recorded by the line that asked
    (fp16 passes when all are the GradScaler's own inf checks, which it makes every step by design).
    """
    from distlearn import Accuracy, BackwardLearner

    if precision == "fp16" and checks.dry:
        try:
            BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer_configs=ADAMW,
                            mixed_precision="fp16").accelerator()
        except ValueError as exc:
            return "PASS", f"fp16 refused on CPU, as it must be: {str(exc)[:70]}..."
        return "FAIL", "fp16 accepted on CPU, where Accelerate would silently train in float32"
    if precision == "fp16":
        mode = "warn"
    steps, epochs = sizes.n // sizes.batch, 2
    loss = GuardedLoss(checks, steps, mode)
    learner = BackwardLearner(n_epochs=epochs, loss=loss, optimizer_configs=ADAMW, mixed_precision=precision,
                              max_grad_norm=1.0, display_every_n_steps=0, scheduler_interval="step",
                              lr_scheduler_configs={"lr_scheduler_class": "torch.optim.lr_scheduler.StepLR",
                                                    "lr_scheduler_parameters": {"step_size": 10, "gamma": 0.5}})
    loader = DataLoader(data(sizes.n, sizes.features, sizes.classes), batch_size=sizes.batch, shuffle=True,
                        pin_memory=not checks.dry)
    armed = epochs * (steps - 1) - 1

    def train() -> dict[str, Any]:
        return learner.train(model(sizes.features, sizes.classes, sizes.hidden), loader,
                             metric=Accuracy() if with_metric else None, test_check=False, disable_tqdm=True)

    sites: dict[str, int] = {}
    if mode == "warn":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record = train()
        for w in caught:
            if "synchroniz" in str(w.message):
                where = f"{Path(w.filename).name}:{w.lineno}"
                sites[where] = sites.get(where, 0) + 1
        if precision != "fp16":
            return "INFO", f"every sync in {armed} armed steps, by the line that asked: {sites or 'none'}"
    else:
        try:
            record = train()
        except RuntimeError as exc:
            if "synchroniz" not in str(exc):
                raise
            site = _site(exc)
            sync_mode(checks, 0)
            _, every = check_step_loop(checks, sizes, precision, with_metric, mode="warn")  # all the sites, not the first
            return "FAIL", f"a training step waited for the GPU at {site}; rerun in warn mode: {every}"
    last = record["training"][epochs - 1]
    flop_count = 1  # the learner counts the model's FLOPs once, on the first batch (training/throughput.py)
    counted = last["optimizer_steps"] == epochs * steps and loss.calls == epochs * steps + flop_count
    foreign = {site: n for site, n in sites.items() if not site.startswith("grad_scaler.py:")}
    detail = (f"{epochs} epochs of {steps} steps, {last['optimizer_steps']} optimizer steps, train loss "
              f"{last['train_loss']:.4f}, loss saw {sorted(loss.dtypes)} logits")
    if checks.dry:
        detail += "; no CUDA: sync mode not armed"
    if precision == "fp16":
        # Skipped steps (a scale too high at the start) are fine: they are what the GradScaler's check is for.
        counted = loss.calls == epochs * steps + flop_count
        detail += (f"; syncs in {armed} armed steps: {sites or 'none'}"
                   + (f", NOT the GradScaler's: {foreign}" if foreign else ", all the GradScaler's own"))
    return ("PASS" if counted and not foreign else "FAIL"), detail


def check_fp16_skipped_steps(checks: Checks, sizes: Sizes) -> tuple[str, str]:
    if checks.dry:
        return "SKIP", "fp16 needs CUDA (the GradScaler's skipped steps exist only there)"
    from accelerate.utils import GradScalerKwargs

    from distlearn import BackwardLearner

    net = model(sizes.features, sizes.classes, sizes.hidden)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer=optimizer, lr_scheduler=scheduler,
                              mixed_precision="fp16", scheduler_interval="step", display_every_n_steps=0,
                              accelerator_kwargs={"kwargs_handlers": [GradScalerKwargs(init_scale=2.0**40)]})
    steps = 40
    loader = DataLoader(data(steps * 32, sizes.features, sizes.classes), batch_size=32, shuffle=True)
    record = learner.train(net, loader, test_check=False, disable_tqdm=True)
    done = record["training"][0]["optimizer_steps"]
    lr = optimizer.param_groups[0]["lr"]
    expected = 1e-3 * 0.9**done
    if done == steps:
        return "FAIL", "no step was skipped: the scale 2^40 should overflow the first steps"
    ok = abs(lr - expected) <= 1e-9 * expected
    return ("PASS" if ok else "FAIL"), (
        f"{steps - done} of {steps} steps skipped; lr {lr:.6g}, expected 1e-3*0.9^{done} = {expected:.6g}"
    )


def check_speed(checks: Checks, sizes: Sizes) -> tuple[str, str]:
    import torch.nn.functional as F

    from distlearn import Accuracy, BackwardLearner

    precision = "no" if checks.dry else "bf16"
    learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer_configs=ADAMW,
                              mixed_precision=precision, display_every_n_steps=0)
    accelerator = learner.accelerator()
    dataset = data(sizes.n, sizes.features, sizes.classes)

    def loader() -> DataLoader:
        return DataLoader(dataset, batch_size=sizes.batch, shuffle=True, pin_memory=not checks.dry)

    def run_learner() -> None:
        learner.train(model(sizes.features, sizes.classes, sizes.hidden), loader(), metric=Accuracy(),
                      test_check=False, disable_tqdm=True)

    def run_hand() -> None:  # the same work: forward, loss, backward, step, running loss and accuracy
        net = model(sizes.features, sizes.classes, sizes.hidden)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        net, optimizer, batches = accelerator.prepare(net, optimizer, loader())
        batches.set_epoch(0)
        net.train()
        totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
        for x, y in batches:
            with accelerator.autocast():
                out = net(x)
            loss = F.cross_entropy(out.float(), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            totals += torch.stack([loss.detach().double() * len(y), (out.argmax(-1) == y).sum().double(),
                                   torch.tensor(float(len(y)), dtype=torch.float64, device=accelerator.device)])
        totals = accelerator.reduce(totals, "sum")
        float(totals[0] / totals[2])

    run_learner(), run_hand()  # warm-up
    times: dict[str, list[float]] = {"learner": [], "hand": []}
    for _ in range(sizes.repeats):
        for name, fn in (("learner", run_learner), ("hand", run_hand)):
            checks.synchronize()
            began = time.perf_counter()
            fn()
            checks.synchronize()
            times[name].append(time.perf_counter() - began)
    steps = sizes.n // sizes.batch
    ratio = statistics.median(times["learner"]) / statistics.median(times["hand"])
    return "INFO", (
        f"{precision}, {steps} steps per run, {sizes.repeats} interleaved repeats: learner "
        f"{1e3 * statistics.median(times['learner']) / steps:.3f} ms/step, hand-written "
        f"{1e3 * statistics.median(times['hand']) / steps:.3f} ms/step, time ratio {ratio:.3f} (of medians)"
    )


def check_device_index(checks: Checks, sizes: Sizes) -> tuple[str, str]:
    """train(device=D) then test(device=D) on the learner's own single-device Accelerator, whose
    device may carry no index ("cuda" for "cuda:0"); another device is refused with a ValueError."""
    from distlearn import Accuracy, BackwardLearner

    wanted, bare, other = ("cpu", "cpu:0", "meta") if checks.dry else ("cuda:0", "cuda", f"cuda:{torch.cuda.device_count()}")
    learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer_configs=ADAMW, display_every_n_steps=0)
    loader = DataLoader(data(sizes.batch * 4, sizes.features, sizes.classes), batch_size=sizes.batch)
    net = model(sizes.features, sizes.classes, sizes.hidden)
    learner.train(net, loader, device=wanted, test_check=False, disable_tqdm=True)
    have = learner.accelerator().device
    result = learner.test(net, loader, device=wanted, metric=Accuracy())
    learner.test(net, loader, device=bare, return_full_result=False)
    placed = sorted({str(p.device) for p in learner.prepared_model.parameters()})
    expected = "cpu" if checks.dry else "cuda:0"
    try:
        learner.test(net, loader, device=other, return_full_result=False)
        refused = f"device={other!r} ACCEPTED on an Accelerator on {have}"
    except ValueError as exc:
        refused = ""
        why = str(exc)
    ok = placed == [expected] and len(result["y_pred"]) == len(loader.dataset) and not refused
    return ("PASS" if ok else "FAIL"), (
        refused or f"Accelerator device {str(have)!r}; test(device={wanted!r}) and test(device={bare!r}) accepted, "
        f"weights on {placed}, accuracy {result['test_score']:.3f}; device={other!r} refused: {why[:60]}"
    )


def check_unprepared_test(checks: Checks, precision: str) -> tuple[str, str]:
    """test() of a model train() never prepared runs it under autocast: its loss must still be the
    float32 loss of those half-precision logits, as after train() (Accelerate upcasts prepared outputs)."""
    import copy

    import torch.nn.functional as F

    from distlearn import BackwardLearner

    learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer_configs=ADAMW, mixed_precision=precision)
    accelerator = learner.accelerator()
    loader = DataLoader(data(2048, 32, 10), batch_size=256)
    net = model(32, 10, 256)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(8)  # large logits, where a half-precision cross entropy drifts (2e-3 measured in bf16)
    seen: set[str] = set()
    raw = copy.deepcopy(net)
    raw.register_forward_hook(lambda m, i, o: seen.add(str(o.dtype).removeprefix("torch.")))
    result = learner.test(raw, loader, return_full_result=False)
    net.to(accelerator.device)
    total, half = 0.0, 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            with accelerator.autocast():  # the same batches, the same half-precision logits
                logits = net(x)
            total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            half += float(F.cross_entropy(logits, y, reduction="sum").float())  # what the check rules out
    exact, low = total / len(loader.dataset), half / len(loader.dataset)
    rel = abs(result["test_loss"] - exact) / abs(exact)
    ok = rel <= 1e-6 and seen == {"bfloat16" if precision == "bf16" else "float16"}
    return ("PASS" if ok else "FAIL"), (
        f"model output {sorted(seen)}; test_loss {result['test_loss']:.7g} vs float32 loss of those logits {exact:.7g} "
        f"(rel. err. {rel:.1e}, limit 1e-6; the loss in {precision} itself would be off by {abs(low - exact) / exact:.1e})"
    )


def check_one_process_results(checks: Checks) -> tuple[str, str]:
    """With no process group, Cat and List results stay on the inputs' device and calculate() is a plain
    concatenation (no detour through host bytes: its time is close to torch.cat's)."""
    from distlearn import Cat, List, calculate

    rows = 256 if checks.dry else 4096  # --dry-cpu: 12 MB; GPU: 200 MB
    chunks = [torch.randn(rows, 256, device=checks.device) for _ in range(50)]
    cat, listed = Cat(), List()
    for c in chunks:
        cat(c)
    listed(chunks[0][:2])
    listed(chunks[1][:2])
    calculate([cat, listed])  # warm-up
    checks.synchronize()
    began = time.perf_counter()
    whole, items = calculate([cat, listed])
    checks.synchronize()
    ours = time.perf_counter() - began
    began = time.perf_counter()
    reference = torch.cat(chunks)
    checks.synchronize()
    plain = time.perf_counter() - began
    devices = sorted({str(whole.device)} | {str(t.device) for t in items} | {str(t.device) for t in listed.value()})
    want = str(chunks[0].device)
    ok = devices == [want] and torch.equal(whole, reference) and len(items) == 2 and torch.equal(items[1], chunks[1][:2])
    return ("PASS" if ok else "FAIL"), (
        f"Cat of {whole.numel() * 4 / 2**20:.0f} MB and List: results on {devices}, expected [{want!r}]; "
        f"calculate() {1e3 * ours:.1f} ms vs torch.cat {1e3 * plain:.1f} ms"
    )


# --------------------------------------------------------------------------- process groups


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_one_rank_group(checks: Checks) -> tuple[str, str]:
    import datetime

    import torch.distributed as dist

    from distlearn import F1, Cat, List, Max, Mean, Min, Sum, calculate

    backend = "gloo" if checks.dry else "nccl"
    kwargs: dict[str, Any] = {}
    if not checks.dry:
        torch.cuda.set_device(0)
        kwargs["device_id"] = torch.device("cuda", 0)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60), **kwargs)
    try:
        dev = checks.device
        x = torch.tensor([1.0, float("nan"), -float("inf"), 2.5], dtype=torch.float64, device=dev)
        summed = torch.tensor([1.5, 2.5], dtype=torch.float64, device=dev)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        peak = x.clone()
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        blob = torch.arange(7, dtype=torch.uint8, device=dev)
        gathered = [torch.empty_like(blob)]
        dist.all_gather(gathered, blob)
        primitives = (summed.tolist() == [1.5, 2.5] and peak[0].item() == 1.0 and bool(peak[1].isnan())
                      and torch.equal(gathered[0], blob))
        mean, total, top, cat, low, listed, wide = Mean(), Sum(), Max(), Cat(), Min(), List(), Mean()
        f1 = F1("macro", num_classes=5)
        for v in (1.0, 2.0, 3.0):
            mean(torch.tensor(v, device=dev))
        total(torch.tensor(4.0, device=dev))
        top(torch.tensor(0.5, device=dev))
        top(torch.tensor(7.0, device=dev))
        cat(torch.arange(3.0, device=dev))
        low(torch.tensor([3.0, -2.0], device=dev))
        low(torch.tensor([1.0, 5.0], device=dev))
        listed(torch.ones(2, device=dev))
        wide(torch.arange(5000.0, device=dev))  # more sums than the first buffer carries: its own all_reduce
        y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2], device=dev)
        f1.update(y_score=torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 4, 1, 1, 2], device=dev), 5).float(),
                  y_true=y)
        accs = [mean, total, top, cat, low, listed, wide, f1]
        values = calculate(accs)
        results = (abs(float(values[0]) - 2.0) < 1e-12 and float(values[1]) == 4.0 and float(values[2]) == 7.0
                   and values[3].tolist() == [0.0, 1.0, 2.0] and values[4].tolist() == [1.0, -2.0]
                   and len(values[5]) == 1 and values[5][0].tolist() == [1.0, 1.0]
                   and values[6].shape == (5000,) and float(values[6][4999]) == 4999.0
                   and abs(float(values[7]) - _macro_f1(y.tolist(), [0, 1, 2, 3, 4, 1, 1, 2], 5)) < 1e-9)
        devices = sorted({str(v.device) for v in values if isinstance(v, torch.Tensor)}
                         | {str(t.device) for t in values[5]})
        forced, how = _through_collectives(accs)
        same = forced is None or all(_equal(a, b) for a, b in zip(values, forced))
        objects: list[Any] = [None]
        dist.all_gather_object(objects, {"rank": 0})  # what the divergence report uses
        ok = primitives and results and same and objects == [{"rank": 0}]
        return ("PASS" if ok else "FAIL"), (
            f"{backend}: float64 SUM/MAX all_reduce and uint8 all_gather {'right' if primitives else 'WRONG'}; "
            f"calculate() of Mean/Sum/Max/Cat/Min/List/5000-wide Mean/F1 {'right' if results else f'WRONG: {values}'}, "
            f"results on {devices}; all_gather_object {'right' if objects == [{'rank': 0}] else objects}; {how}"
            + ("" if same else f": {forced} vs {values}")
        )
    finally:
        dist.destroy_process_group()


def _through_collectives(accs: list[Any]) -> tuple[list[Any] | None, str]:
    """calculate()'s multi-rank path on a 1-rank group: on one rank calculate() skips the collectives,
    so drive the internals it uses for several ranks (the signature all_reduce, the MAX all_reduce,
    the byte all_gather and the split) directly. Returns (results, what was done)."""
    import torch.distributed as dist

    try:
        from distlearn.accumulators.devices import comm_device
        from distlearn.accumulators.split import runs_of, split_results
        from distlearn.accumulators.wire import first_collective, gather_bytes, one_vector
    except ImportError:
        return None, "collective internals not driven (renamed: update gpu_check)"
    try:
        specs = [a._spec() for a in accs]
        device = comm_device(None)
        (sums, sizes), contributions, blob = first_collective(accs, None, specs, None, 1, device)
        max_flat = one_vector([t for c in contributions for t in c.maxes], device)
        if max_flat.numel():
            dist.all_reduce(max_flat, op=dist.ReduceOp.MAX)
        blobs = gather_bytes(blob, sizes, None, device) if blob is not None else None
        runs = runs_of(accs, specs, contributions)
        results = split_results(accs, specs, contributions, runs, sums, max_flat, blobs)
    except TypeError as exc:  # a changed signature
        return None, f"collective internals not driven (changed: {exc}; update gpu_check)"
    return results, f"the multi-rank path (over {device}) gives the same results"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a.cpu().double(), b.cpu().double()))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, z) for x, z in zip(a, b))
    return a == b


def _macro_f1(true: list[int], pred: list[int], classes: int) -> float:
    scores = []
    for c in range(classes):
        tp = sum(t == c and p == c for t, p in zip(true, pred))
        fp = sum(t != c and p == c for t, p in zip(true, pred))
        fn = sum(t == c and p != c for t, p in zip(true, pred))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / classes


def _two_ranks(rank: int, port: int, dry: bool, queue: Any) -> None:
    import datetime

    import torch.distributed as dist

    from distlearn import Cat, List, Max, Mean, calculate

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    dev = torch.device("cpu") if dry else torch.device("cuda", 0)
    mean, cat, top, listed = Mean(), Cat(), Max(), List()
    if rank == 0:  # rank 1 saw no data at all
        mean(torch.tensor(1.0, device=dev))
        mean(torch.tensor(2.0, device=dev))
        cat(torch.arange(6.0, device=dev).reshape(3, 2))
        listed(torch.ones(2, device=dev))
    top(torch.tensor([1.0, 2.0], device=dev) if rank == 0 else torch.tensor([float("nan"), 0.0], device=dev))
    values = calculate([mean, cat, top, listed])
    queue.put((rank, float(values[0]), values[1].cpu().tolist(), values[2].cpu().tolist(),
               [str(v.device) for v in values[:3]] + [str(t.device) for t in values[3]]))
    dist.destroy_process_group()


def run_two_ranks(checks: Checks) -> dict[int, Any]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_two_ranks, args=(r, port, checks.dry, queue))
             for port in [free_port()] for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in procs:
            rank, *rest = queue.get(timeout=90)
            results[rank] = rest
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return results


def check_two_ranks(checks: Checks, results: dict[int, Any]) -> tuple[str, str]:
    expected_dev = str(checks.device if checks.dry else torch.device("cuda", 0))
    problems = [f"only ranks {sorted(results)} answered"] if len(results) != 2 else []
    for rank, (mean, cat, _, devices) in sorted(results.items()):
        if mean != 1.5 or cat != [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]:
            problems.append(f"rank {rank}: mean {mean}, cat {cat}")
        if len(devices) != 4 or any(d != expected_dev for d in devices):  # Mean, Cat, Max, the List's one item
            problems.append(f"rank {rank}: results on {devices}, expected {expected_dev}")
    return ("PASS" if not problems else "FAIL"), ("; ".join(problems) or f"both ranks agree, results on {expected_dev}")


def check_max_nan(results: dict[int, Any]) -> tuple[str, str]:
    """One process gives NaN for max([1, nan]); so must two ranks when the NaN is on rank 1 (gloo's MAX
    alone drops it)."""
    tops = {rank: r[2] for rank, r in results.items()}
    ok = len(tops) == 2 and all(t[0] != t[0] and t[1] == 2.0 for t in tops.values())
    return ("PASS" if ok else "FAIL"), f"max of [1, 2] (rank 0) and [nan, 0] (rank 1): {tops}, expected [nan, 2.0]"


# --------------------------------------------------------------------------- FSDP2 (a sub-process)

FSDP_ENV = {  # what `accelerate launch --config_file configs/accelerate/fsdp.yaml` sets, for one process
    "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
    "FSDP_AUTO_WRAP_POLICY": "NO_WRAP", "FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_OFFLOAD_PARAMS": "false",
    "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
}


def run_fsdp(checks: Checks) -> None:
    """The FSDP2 checks in a fresh process (they start a process group from the launcher's variables);
    its lines are printed here, a missing line or a crash is a FAIL."""
    import subprocess

    env = {**os.environ, **FSDP_ENV, "MASTER_PORT": str(free_port())}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if checks.dry:
        env["ACCELERATE_USE_CPU"] = "true"
    argv = [sys.executable, str(Path(__file__).resolve()), "--part", "fsdp"] + (["--dry-cpu"] if checks.dry else [])
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, cwd=REPO, check=False)
    except subprocess.TimeoutExpired:
        checks.line("fsdp", "1-process FSDP2 sub-process", "FAIL", "no answer in 180 s (a hang?)")
        return
    seen = 0
    for text in done.stdout.splitlines():
        if text.startswith("[fsdp] ") and ": " in text:
            what, _, rest = text[len("[fsdp] "):].partition(": ")
            verdict, _, detail = rest.partition(" (")
            checks.line("fsdp", what, verdict, detail.removesuffix(")"))
            seen += 1
    if done.returncode != 0 or seen < FSDP_LINES:
        tail = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1][:200]
        checks.line("fsdp", "1-process FSDP2 sub-process", "FAIL", f"exit {done.returncode}, {seen} of {FSDP_LINES} lines: {tail}")


FSDP_LINES = 4


def _force_fsdp2(precision: str) -> str:
    """--dry-cpu only: put Accelerate's state into FSDP2, as it would be on a GPU.

    Accelerate 1.15 chooses FSDP only for accelerator devices (its distributed types MULTI_GPU,
    MULTI_XPU, ...): on the CPU, ACCELERATE_USE_FSDP=true and a FullyShardedDataParallelPlugin are
    ignored without a word (distributed type MULTI_CPU, the model wrapped in DDP). torch's fully_shard
    itself runs on the CPU over gloo, so the state is set to what Accelerate builds on a GPU: the
    plugin from the same FSDP_* variables, with the mixed-precision policy of ``precision``.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    before = str(AcceleratorState().distributed_type)
    plugin = FullyShardedDataParallelPlugin()
    if precision != "no":
        plugin.set_mixed_precision(precision)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):  # later AcceleratorState() copy the first
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    return before


def fsdp_part(dry: bool) -> int:
    """1-process FSDP2 through BackwardLearner, bf16 policy; prints FSDP_LINES lines ``[fsdp] what: VERDICT (..)``."""
    import copy

    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.fsdp import FSDPModule

    from distlearn import Accuracy, BackwardLearner, Mean
    from distlearn.accumulators.devices import comm_device

    def say(what: str, ok: bool | None, detail: str) -> None:
        verdict = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        print(f"[fsdp] {what}: {verdict} ({detail})", flush=True)

    class RecordingCE(nn.CrossEntropyLoss):  # still a CrossEntropyLoss for the learner's own isinstance checks
        def __init__(self) -> None:
            super().__init__()
            self.dtypes: dict[bool, set[str]] = {True: set(), False: set()}  # training?: dtypes of the logits

        def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            self.dtypes[torch.is_grad_enabled()].add(str(input.dtype).removeprefix("torch."))
            return super().forward(input, target)

    loss = RecordingCE()
    learner = BackwardLearner(n_epochs=2, loss=loss, optimizer_configs=ADAMW, mixed_precision="bf16",
                              display_every_n_steps=0)
    accelerator = learner.accelerator()
    chosen = _force_fsdp2("bf16") if dry else str(accelerator.distributed_type)
    probe = Mean()
    probe(torch.ones((), device=accelerator.device))
    comm = comm_device(None, [probe])
    policy = getattr(accelerator.state.fsdp_plugin, "mixed_precision_policy", None) if accelerator.is_fsdp2 else None
    ok = accelerator.is_fsdp2 and comm.type == accelerator.device.type
    say("Accelerate's state", ok if not dry else (None if accelerator.is_fsdp2 else False),
        (f"forced: Accelerate chose {chosen} on the CPU; " if dry else "")
        + f"{accelerator.distributed_type}, is_fsdp2 {accelerator.is_fsdp2}, backend {dist.get_backend()!r}, "
        f"calculate() reduces on {comm}, param dtype {getattr(policy, 'param_dtype', None)}")

    n, features, classes = 1024, 32, 10
    dataset = data(n, features, classes)
    loaders = {"train_loader": DataLoader(dataset, batch_size=64, shuffle=True), "test_loader": DataLoader(dataset, batch_size=128)}
    net = model(features, classes, 64)
    reference = copy.deepcopy(net).to(accelerator.device)
    registered = len(accelerator._models)
    # test() before train(): the model was never prepared (its full weights, on the host).
    before = learner.test(net, loaders["test_loader"], return_full_result=False)
    total = 0.0
    with torch.no_grad(), accelerator.autocast():
        for x, y in loaders["test_loader"]:
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            total += float(F.cross_entropy(reference(x).float(), y, reduction="sum"))
    exact = total / n
    rel = abs(before["test_loss"] - exact) / exact
    extra = len(accelerator._models) - registered
    say("test() before train()", rel <= 1e-5 and extra == 0 and loss.dtypes[False] == {"float32"},
        f"test_loss {before['test_loss']:.6g} vs {exact:.6g} by hand (rel. err. {rel:.1e}); loss saw "
        f"{sorted(loss.dtypes[False])} logits; {extra} model(s) left registered with the Accelerator (0 expected)")

    loss.dtypes = {True: set(), False: set()}
    outputs: set[str] = set()
    hook = net.register_forward_hook(lambda m, i, o: outputs.add(str(o.dtype).removeprefix("torch.")))
    record = learner.train(net, loaders, metric=Accuracy(), disable_tqdm=True)
    hook.remove()
    last = record["training"][1]
    prepared = learner.prepared_model
    # FSDP2 leaves the root unsharded after a forward without backward (the last test()): test()
    # reshards it, so every GPU holds its shard only between epochs and after training.
    kinds = sorted({type(p).__name__ for p in prepared.parameters()})
    ok = (isinstance(prepared, FSDPModule) and prepared is net and kinds == ["DTensor"] and outputs == {"bfloat16"}
          and loss.dtypes[True] == {"float32"} == loss.dtypes[False])
    say("train() under the bf16 policy", ok,
        f"{type(prepared).__name__}, parameters {kinds}; model output {sorted(outputs)} (bfloat16 expected: FSDP2's "
        f"policy), loss saw {sorted(loss.dtypes[True])} (train) and {sorted(loss.dtypes[False])} (test) logits; "
        f"train loss {last['train_loss']:.4f}, test loss {last['test_result']['test_loss']:.4f}")

    want = {k: tuple(v.shape) for k, v in model(features, classes, 64).state_dict().items()}
    full = {k: v.full_tensor().cpu() for k, v in prepared.state_dict().items()}
    problems = []
    for when in ("resharded", "after a forward"):  # the CLI saves right after train(), whose last forward is test()'s
        if when == "after a forward":
            learner.test(net, loaders["test_loader"], return_full_result=False)
        state = accelerator.get_state_dict(prepared)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        kinds = sorted({type(v).__name__ for v in state.values()})
        same = shapes == want and all(torch.equal(state[k].cpu(), full[k]) for k in want)
        if shapes != want or kinds != ["Tensor"] or not same:
            problems.append(f"{when}: {kinds}, shapes {shapes}, values {'equal' if same else 'DIFFER'}")
    say("get_state_dict() of the prepared model", not problems,
        "; ".join(problems) or f"plain tensors of the model's shapes {sorted(want.values())}, "
        f"dtypes {sorted({str(v.dtype) for v in state.values()})}, equal to the gathered weights, resharded or not")
    accelerator.end_training()
    return 0


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-cpu", action="store_true", help="no CUDA: run the plumbing on the CPU, tiny sizes")
    parser.add_argument("--skip", nargs="*", default=[], help="check ids to leave out (e.g. speed gloo-2)")
    parser.add_argument("--part", choices=["fsdp"], help=argparse.SUPPRESS)  # the FSDP2 sub-process
    args = parser.parse_args(argv)
    if args.part == "fsdp":
        return fsdp_part(args.dry_cpu)
    if not args.dry_cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --dry-cpu for the plumbing only", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    checks, sizes = Checks(args.dry_cpu), Sizes(args.dry_cpu)
    began = time.time()
    import accelerate

    checks.line("env", "versions", "INFO", f"torch {torch.__version__}, accelerate {accelerate.__version__}, "
                f"{torch.cuda.get_device_name(0) if not args.dry_cpu else 'cpu (--dry-cpu)'}")
    plan: list[tuple[str, str, Callable[[], tuple[str, str]] | None]] = [
        ("acc-sync", "accumulator and metric calls per step", lambda: check_accumulator_loop(checks)),
    ]
    for precision in ("no", "bf16", "fp16"):
        for with_metric in (False, True):
            plan.append(("step-sync", f"learner steps, mixed_precision={precision}, metric={'Accuracy' if with_metric else 'none'}",
                         lambda p=precision, m=with_metric: check_step_loop(checks, sizes, p, m)))
    plan += [
        ("device", "train(device=D) then test(device=D) on the learner's own Accelerator", lambda: check_device_index(checks, sizes)),
    ]
    for precision in ("bf16",) if args.dry_cpu else ("bf16", "fp16"):
        plan.append(("test-upcast", f"test() of a never-prepared model, mixed_precision={precision}",
                     lambda p=precision: check_unprepared_test(checks, p)))
    plan += [
        ("one-proc", "Cat/List results without a process group", lambda: check_one_process_results(checks)),
        ("fp16-skip", "fp16 skipped steps vs optimizer steps and the scheduler", lambda: check_fp16_skipped_steps(checks, sizes)),
        ("group-1", "1-rank group: collective primitives and calculate()", lambda: check_one_rank_group(checks)),
        ("gloo-2", "2 ranks over gloo, rank 1 without data", lambda: check_two_ranks(checks, two_ranks())),
        ("max-nan", "Max across 2 ranks with a NaN on rank 1", lambda: check_max_nan(two_ranks())),
        ("speed", "learner vs hand-written Accelerate loop", lambda: check_speed(checks, sizes)),
        ("fsdp", "", None),  # several lines, from a sub-process
    ]
    cache: dict[int, Any] = {}

    def two_ranks() -> dict[int, Any]:  # one 2-rank run serves both checks
        if not cache:
            cache.update(run_two_ranks(checks))
        return cache

    for cid, what, check in plan:
        if cid in args.skip:
            checks.line(cid, what or "1-process FSDP2", "SKIP", "--skip")
        elif check is None:
            run_fsdp(checks)
        else:
            checks.run(cid, what, check)
    checks.line("env", "total wall time", "INFO", f"{time.time() - began:.1f} s")
    if checks.failed:
        print(f"gpu_check: {len(checks.failed)} check(s) failed: {', '.join(checks.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

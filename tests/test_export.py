"""Full weights from sharded models: gathered a tensor at a time from FSDP2 (`fully_shard` over gloo on CPU, the
pool's ranks), written as plain safetensors (one file, or HF-style shards with an index), read back from DCP
folders without a process group; `distlearn export`; evaluate / predict / init_from on a sharded checkpoint.

The sharded fixtures are made for real: models sharded with `fully_shard` on a CPU device mesh and saved as
Accelerate's `save_state` does under SHARDED_STATE_DICT (`dcp.save({"model": state}, <ckpt>/pytorch_model_fsdp_0)`).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import reset_accelerate
from safetensors.torch import load_file
from test_evaluate import command, digits_run, last_test, numbers, trained  # noqa: F401 - digits_run: a fixture

from distlearn.training.full_weights import INDEX_FILE, WEIGHTS_FILE, parse_size
from distlearn.training.weight_files import open_weights

SHARD_LIMIT = 700  # bytes: the toy model below splits into several files, one tensor bigger than the limit


class Toy(torch.nn.Module):
    """Uneven shapes (7 rows over 2 or 3 ranks: padded shards), a tensor over the limit, and buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(5, 7)
        self.norm = torch.nn.BatchNorm1d(7)
        self.big = torch.nn.Linear(7, 40)  # 1120 bytes of weight: a file of its own
        self.head = torch.nn.Linear(40, 3, bias=False)


def toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    model = Toy()
    model.norm.running_mean.uniform_()  # buffers that are not their defaults
    model.norm.running_var.uniform_(1, 2)
    return model


def _shard_and_save(rank: int, world: int, out: str) -> dict | None:
    """A toy model sharded with fully_shard: its DCP checkpoint, and its full weights gathered and written."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from distlearn.training.full_weights import ModelWeights, is_sharded, save_full_weights

    model = toy()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    assert is_sharded(model)
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=os.path.join(out, "ckpt", "pytorch_model_fsdp_0"))
    for name, limit in (("single", 10**9), ("split", SHARD_LIMIT)):
        os.makedirs(os.path.join(out, name), exist_ok=True)
        save_full_weights(os.path.join(out, name), ModelWeights(get_model_state_dict(model), rank == 0),
                          write=rank == 0, max_shard_size=limit)
    return reference if rank == 0 else None


@pytest.fixture(scope="module")
def sharded(dist_pool, tmp_path_factory) -> tuple[Path, dict]:
    """The toy model sharded over 3 ranks: (folder with ckpt/, single/, split/; its unsharded state dict)."""
    out = tmp_path_factory.mktemp("sharded")
    return out, dist_pool.run(_shard_and_save, 3, str(out))[0]


def equal(got: dict, want: dict) -> None:
    assert list(got) == list(want) or sorted(got) == sorted(want), (sorted(got), sorted(want))
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


# --------------------------------------------------------------------------- gathering and writing


def test_gathered_weights_are_the_unsharded_models_bitwise_in_one_file_or_hf_shards(sharded):
    out, reference = sharded
    assert sorted(p.name for p in (out / "single").iterdir()) == [WEIGHTS_FILE]
    equal(load_file(out / "single" / WEIGHTS_FILE), reference)
    files = sorted(p.name for p in (out / "split").iterdir())
    index = json.loads((out / "split" / INDEX_FILE).read_text())
    shards = [f for f in files if f != INDEX_FILE]
    assert len(shards) >= 3 and all(re.fullmatch(rf"model-\d{{5}}-of-{len(shards):05d}\.safetensors", f) for f in shards)
    assert set(index["weight_map"].values()) == set(shards) and sorted(index["weight_map"]) == sorted(reference)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in reference.values())
    for name in shards:  # at most the limit, unless one tensor alone is bigger
        tensors = load_file(out / "split" / name)
        assert len(tensors) == 1 or sum(t.numel() * t.element_size() for t in tensors.values()) <= SHARD_LIMIT
    loaded = {k: v for name in shards for k, v in load_file(out / "split" / name).items()}  # safetensors alone
    equal(loaded, reference)


def test_hf_shards_load_with_transformers_load_sharded_checkpoint(sharded):
    trainer_utils = pytest.importorskip("transformers.trainer_utils")
    out, reference = sharded
    model = toy(seed=1)
    result = trainer_utils.load_sharded_checkpoint(model, str(out / "split"))
    assert not result.missing_keys and not result.unexpected_keys
    equal(model.state_dict(), reference)


def test_a_dcp_folder_is_read_a_group_at_a_time_without_a_process_group(sharded):
    out, reference = sharded
    assert not torch.distributed.is_initialized()
    source = open_weights(out / "ckpt" / "pytorch_model_fsdp_0")
    assert {s.name: s.shape for s in source.specs} == {k: tuple(v.shape) for k, v in reference.items()}
    head = dict(source.tensors(["head.weight"]))  # one key alone
    assert list(head) == ["head.weight"] and torch.equal(head["head.weight"], reference["head.weight"])
    equal(dict(source.tensors([s.name for s in source.specs])), reference)


def test_shard_sizes_parse_as_transformers_and_are_refused_otherwise():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("500mb") == 5 * 10**8
    assert parse_size(1234) == 1234 and parse_size("1234") == 1234
    for bad in ("5XB", "GB", 0, -1, True, 1.5, "0KB"):
        with pytest.raises(ValueError, match="expected a size in bytes > 0"):
            parse_size(bad)


def _gather_peak(rank: int, world: int, out: str, limit: int) -> tuple[int, int] | None:
    """Rank 0's peak host memory (VmHWM, reset first) over its resident memory, gathering a ~40 MB model."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from distlearn.training.full_weights import ModelWeights, save_full_weights

    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024, bias=False) for _ in range(10)])  # 42 MB
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    size = sum(p.numel() * 4 for p in model.parameters())
    source = ModelWeights(get_model_state_dict(model), rank == 0)
    rss = int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
    save_full_weights(out, source, write=rank == 0, max_shard_size=limit)
    peak = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    return (peak - rss, size) if rank == 0 else None


def _gather_peaks(rank: int, world: int, out: str, limits: list[int]) -> list[tuple[int, int]] | None:
    """:func:`_gather_peak` for each limit, in a process whose freed large blocks go back to the system (glibc's
    mmap threshold fixed at 1 MiB: otherwise a freed tensor stays in the heap and the peak measures history)."""
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    peaks = []
    for limit in limits:
        os.makedirs(os.path.join(out, str(limit)), exist_ok=True)
        peaks.append(_gather_peak(rank, world, os.path.join(out, str(limit)), limit))
    return peaks if rank == 0 else None


def test_gathering_a_40mb_model_holds_about_one_file_in_host_memory(tmp_path):
    from dist_pool import Pool

    limit, whole = 8 * 2**20, 10**9  # two 4 MiB tensors a file: 5 files; or the whole model in one
    pool = Pool()  # fresh processes: the peak is this gather's alone
    try:
        (split, size), (single, _) = pool.run(_gather_peaks, 2, str(tmp_path), [limit, whole])[0]
    finally:
        pool.close()
    print(f"model {size / 2**20:.1f} MiB; rank 0's peak host memory over its resident memory: {split / 2**20:.1f} MiB "
          f"with {limit / 2**20:.0f} MiB files ({split / size:.2f} of the model), {single / 2**20:.1f} MiB in one "
          f"file ({single / size:.2f})")
    assert len(list((tmp_path / str(limit)).glob("model-*-of-00005.safetensors"))) == 5
    assert single > 0.9 * size  # the measure sees a whole model when one is held
    # One file's tensors (8 MiB), the tensor being gathered (4 MiB) and the gather's buffers: not the 40 MiB model.
    assert split < 0.5 * size


def _fail_while_writing(rank: int, world: int, out: str, before: bool) -> str:
    """The main process fails writing (``before`` gathering anything, or at the first file); every rank must
    still run every gather and return."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from distlearn.training.full_weights import ModelWeights, save_full_weights, written_by_main

    def write(folder: str, source: ModelWeights) -> list:
        if before:
            raise OSError("the disk is full (config.yaml)")
        return save_full_weights(folder, source, True, SHARD_LIMIT)

    model = toy()
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    source = ModelWeights(get_model_state_dict(model), rank == 0)
    if rank != 0:
        source.finish()
        return "gathered"
    try:  # a folder that does not exist: the first file cannot be written
        written_by_main(source, write, os.path.join(out, "missing"), source)
    except OSError as exc:
        return f"failed: {exc}"
    return "wrote"


@pytest.mark.parametrize("before", [False, True], ids=["at-the-first-file", "before-the-weights"])
def test_a_write_that_fails_on_the_main_process_leaves_no_rank_waiting(dist_pool, tmp_path, before):
    main, other = dist_pool.run(_fail_while_writing, 2, str(tmp_path), before, timeout=60)
    assert main.startswith("failed: " + ("the disk is full" if before else "cannot write")) and other == "gathered"


# --------------------------------------------------------------------------- a run whose checkpoint is sharded


def _shard_checkpoint(rank: int, world: int, run: str, step: str) -> None:
    """The checkpoint's model (its weights loaded by load_run) sharded with fully_shard and saved as Accelerate's
    save_state does under SHARDED_STATE_DICT."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from distlearn import load_run

    reset_accelerate()
    try:
        model = load_run(run, checkpoint=step, overrides=["run.tracking.backend=none"]).model
        fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
        dcp.save({"model": get_model_state_dict(model)},
                 checkpoint_id=os.path.join(run, "checkpoints", step, "pytorch_model_fsdp_0"))
    finally:
        reset_accelerate()


@pytest.fixture(scope="module")
def sharded_run(digits_run, dist_pool, tmp_path_factory) -> tuple[Path, str, dict]:
    """A copy of the digits run whose first checkpoint keeps its model as a DCP folder (sharded over 2 ranks)
    instead of model.safetensors: (the run, the checkpoint's name, the weights it held)."""
    run = tmp_path_factory.mktemp("sharded-run") / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("wandb", "eval-*", "export-*"))
    step = sorted((run / "checkpoints").glob("step-*"))[0]
    dist_pool.run(_shard_checkpoint, 2, str(run), step.name)
    weights = load_file(step / WEIGHTS_FILE)
    (step / WEIGHTS_FILE).unlink()
    marker = json.loads((step / "COMMITTED.json").read_text())  # its files, as a sharded save lists them
    del marker["files"][WEIGHTS_FILE]
    marker["files"].update({str(p.relative_to(step)): p.stat().st_size
                            for p in (step / "pytorch_model_fsdp_0").iterdir()})
    (step / "COMMITTED.json").write_text(json.dumps(marker))
    return run, step.name, weights


def test_evaluate_and_predict_read_a_sharded_checkpoint(sharded_run, digits_run, capsys, tmp_path):
    run, step, _ = sharded_run
    code, _, err = command(capsys, "evaluate", str(run), "--checkpoint", step, "-q")
    assert code == 0, err
    written = json.loads((run / f"eval-{step}.json").read_text())
    assert written["weights"] == str(run / "checkpoints" / step / "pytorch_model_fsdp_0")
    assert numbers(written) == numbers(last_test(digits_run, 0))  # the epoch's own test numbers, bitwise
    plain = tmp_path / "plain.csv"
    for folder, out in ((digits_run, plain), (run, tmp_path / "sharded.csv")):
        code, _, err = command(capsys, "predict", str(folder), "--checkpoint", step, "--output", str(out), "-q")
        assert code == 0, err
    assert (tmp_path / "sharded.csv").read_bytes() == plain.read_bytes()


def test_init_from_and_load_weights_read_sharded_checkpoints_and_hf_shards(sharded_run, tmp_path):
    from distlearn.experiment.weights import init_from, read_weights
    from distlearn.training.full_weights import StateDictWeights, save_full_weights

    run, step, weights = sharded_run
    equal(read_weights(run / "checkpoints" / step / "pytorch_model_fsdp_0"), weights)
    save_full_weights(tmp_path, StateDictWeights(weights), max_shard_size=2000)
    assert (tmp_path / INDEX_FILE).is_file()
    for source in (run / "checkpoints" / step, tmp_path):  # a checkpoint folder; a folder of HF shards
        model = torch.nn.Sequential(*[torch.nn.Linear(1, 1)])  # the wrong model: refused with the keys named
        with pytest.raises(Exception, match="missing key"):
            init_from(model, source)
    digits = _digits_model(run)
    init_from(digits, run / "checkpoints" / step)
    equal(digits.state_dict(), weights)
    init_from(digits.apply(_zero), tmp_path / INDEX_FILE)
    equal(digits.state_dict(), weights)


def _zero(module: torch.nn.Module) -> None:
    for p in module.parameters(recurse=False):
        torch.nn.init.zeros_(p)


def _digits_model(run: Path) -> torch.nn.Module:
    from distlearn.experiment.saved_run import read_run, rebuild

    reset_accelerate()
    try:
        return rebuild(*read_run(run, "last", ["run.tracking.backend=none"])).model
    finally:
        reset_accelerate()


def test_export_writes_full_weights_from_a_sharded_and_a_plain_checkpoint(sharded_run, digits_run, capsys, tmp_path):
    run, step, weights = sharded_run
    code, out, err = command(capsys, "export", str(run), "--checkpoint", step)
    assert code == 0, err
    assert sorted(p.name for p in (run / f"export-{step}").iterdir()) == [WEIGHTS_FILE]
    equal(load_file(run / f"export-{step}" / WEIGHTS_FILE), weights)
    assert f"to {run / f'export-{step}'}: 1 file(s)" in err
    # the plain final weights, split into HF shards
    code, _, err = command(capsys, "export", str(digits_run), "--output", str(tmp_path / "out"), "--max-shard-size",
                           "2KB", "-q")
    assert code == 0, err
    final = load_file(digits_run / WEIGHTS_FILE)
    index = json.loads((tmp_path / "out" / INDEX_FILE).read_text())
    equal({k: v for f in set(index["weight_map"].values()) for k, v in load_file(tmp_path / "out" / f).items()}, final)
    # again: refused without --overwrite, nothing changed; with it, one file replaces the shards
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    code, _, err = command(capsys, "export", str(digits_run), "--output", str(tmp_path / "out"))
    assert code == 2 and "holds weights already" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    code, _, err = command(capsys, "export", str(digits_run), "--output", str(tmp_path / "out"), "--overwrite", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [WEIGHTS_FILE]
    equal(load_file(tmp_path / "out" / WEIGHTS_FILE), final)


@pytest.mark.parametrize("argv, said", [
    (["--max-shard-size", "5XB"], "--max-shard-size: expected a size in bytes > 0"),
    (["--checkpoint", "step-9"], "--checkpoint 'step-9': expected best, last or a checkpoint folder"),
    (["--output", "{run}"], "is where the run keeps its own weights"),
    (["--output", "{run}/config.yaml"], "is a file; give a folder"),
])
def test_export_refuses_bad_input_with_one_line_and_exit_2(sharded_run, capsys, argv, said):
    run, _, _ = sharded_run
    code, _, err = command(capsys, "export", str(run), *[a.format(run=run) for a in argv])
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- the output set, best/, the end of training


def _write_set(folder: Path, weights: dict, limit: int, point: str | None) -> int | None:
    """The output set with ``weights`` split at ``limit``; with ``point``, in a forked process that SIGKILLs
    itself there (its exit code returned)."""
    from distlearn.command import run_folder
    from distlearn.runtime.launch import OUTPUTS_TEST_SIGNAL

    def write() -> None:
        if point is not None:
            os.environ[OUTPUTS_TEST_SIGNAL] = f"{point}:SIGKILL"
        run_folder.write_outputs(folder, {"run": {"seed": 1}}, {"training": {}}, weights, max_shard_size=limit)

    if point is None:
        return write()
    child = mp.get_context("fork").Process(target=write)
    child.start()
    child.join(60)
    return child.exitcode


def _weight_files(folder: Path) -> list[str]:
    from distlearn.training.full_weights import is_weights_file

    return sorted(p.name for p in folder.iterdir() if is_weights_file(p.name))


@pytest.mark.parametrize("old_limit, new_limit", [(10**9, 300), (300, 10**9)], ids=["file-to-shards", "shards-to-file"])
def test_the_output_set_swaps_one_file_and_shards_whole_even_when_killed(tmp_path, old_limit, new_limit):
    from distlearn.command import run_folder
    from distlearn.experiment.weights import read_weights, weights_file

    old, new = toy(0).state_dict(), toy(1).state_dict()
    first, clean = tmp_path / "first", tmp_path / "clean"
    for folder, weights, limit in ((first, old, old_limit), (clean, new, new_limit)):
        folder.mkdir()
        _write_set(folder, weights, limit, None)
    want = _weight_files(clean)
    assert want != _weight_files(first) and len({len(want), len(_weight_files(first))} - {1}) == 1  # file | shards
    # Killed at the commit, before the weights move, after the first shard, mid-shards, after the index.
    for k in (0, 3, 4, 6, 8):  # moves in sorted order: batches, config, curves, the weights..., record.json
        folder = tmp_path / f"swap-{k}"
        shutil.copytree(first, folder)
        code = _write_set(folder, new, new_limit, f"swap:{k}")
        if code == 0:  # the one-file set has fewer moves: it finished
            assert _weight_files(folder) == want
            continue
        assert code == -9, k
        assert "is now in place" in run_folder.recover_outputs(folder)  # what the next command does first
        assert _weight_files(folder) == want, k
        equal(read_weights(weights_file(folder)), dict(new))


def _best_and_final_of_a_sharded_model(rank: int, world: int, out: str) -> dict | None:
    """best/ (Chooser.take) and the run's output set (train_command's writer) from a model sharded with
    fully_shard, through a real Accelerator: every rank takes part, the main process writes."""
    from accelerate import Accelerator
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from distlearn.command.train_command import _write_outputs
    from distlearn.training.selection import Selection, new_chooser

    reset_accelerate()
    try:
        accelerator = Accelerator(cpu=True)
        model = toy()
        reference = {k: v.clone() for k, v in model.state_dict().items()}
        fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
        chooser = new_chooser(Selection(keep_best=out), None, {"val_loader": [0]})
        chooser.take(0, {"val_loss": 0.5}, accelerator, model)
        experiment = SimpleNamespace(learner=SimpleNamespace(prepared_model=model), model=model, metric=None)
        session = SimpleNamespace(accelerator=accelerator, experiment=experiment, resolved={"run": {"seed": 0}})
        files = _write_outputs(session, Path(out), {"training": {}, "status": "completed"})
        assert [p.name for p in files] == ["config.yaml", "record.json", "batches.jsonl", WEIGHTS_FILE, "curves.png"]
        return reference if rank == 0 else None
    finally:
        reset_accelerate()


def test_best_and_the_final_weights_of_a_sharded_model_are_its_full_weights(dist_pool, tmp_path):
    reference = dist_pool.run(_best_and_final_of_a_sharded_model, 2, str(tmp_path))[0]
    equal(load_file(tmp_path / "best" / WEIGHTS_FILE), reference)
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == {"epoch": 0, "score": 0.5, "metric": "loss"}
    equal(load_file(tmp_path / WEIGHTS_FILE), reference)


def test_a_run_whose_final_and_best_weights_are_hf_shards_evaluates_the_same(digits_run, capsys, tmp_path):
    from distlearn.experiment.saved_run import choose_weights
    from distlearn.experiment.weights import check_init_from
    from distlearn.training.full_weights import StateDictWeights, save_full_weights

    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("wandb", "eval-*", "export-*"))
    final = load_file(run / WEIGHTS_FILE)
    (run / WEIGHTS_FILE).unlink()
    (run / "best").mkdir()
    for folder in (run, run / "best"):
        assert len(save_full_weights(folder, StateDictWeights(final), max_shard_size=2000)) > 2
    (run / "best" / "best.json").write_text(json.dumps({"epoch": 1, "score": 0.9, "metric": "accuracy"}))
    assert choose_weights(run, "best").path == run / "best" / INDEX_FILE
    code, _, err = command(capsys, "evaluate", str(run), "run.tracking.backend=none", "-q")
    assert code == 0, err
    written = json.loads((run / "eval-last.json").read_text())
    assert written["weights"] == str(run / INDEX_FILE) and numbers(written) == numbers(last_test(digits_run))
    problems: list[str] = []  # the config check of init_from (no torch): the shards' folder is weights
    check_init_from(str(run), "model_configs.init_from", problems)
    (run / "checkpoints" / "half").mkdir()
    (run / "checkpoints" / "half" / "pytorch_model_fsdp_0").mkdir()  # a sharded save that never finished
    check_init_from(str(run / "checkpoints" / "half"), "model_configs.init_from", problems)
    assert len(problems) == 1 and "have no DCP metadata: the save did not finish" in problems[0], problems

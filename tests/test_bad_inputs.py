"""A corpus of bad inputs to `distlearn train`: each must end with exit code 2 (1 for a failed
training), a message naming the key or file and the fix, no hang, and nothing written or changed.

Every case points `run.output_dir` at an earlier run's folder with `run.overwrite=true`: a case
that slipped through validation would train and replace that folder, which the byte-identical
check catches. Cases the config layer answers run in-process through `distlearn.cli.main`
(milliseconds each); the few that need a built experiment, a launcher or dropped privileges run
as one subprocess each.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import warm

from distlearn.command.cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
L = "learner_configs.learner_parameters"
OPT = f"{L}.optimizer_configs.optimizer_parameters"
SCHED = f"{L}.lr_scheduler_configs"
HANG_LIMIT_S = 120  # a hang check, not a speed assertion: a stuck collective waits far longer


# --------------------------------------------------------------------------- the earlier run


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).digest() if p.is_file() else b"dir", p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A folder holding an earlier run's outputs (contents are stand-ins: only their bytes matter)."""
    folder = tmp_path_factory.mktemp("earlier") / "run"
    folder.mkdir()
    for name, content in {
        "config.yaml": b"run:\n  seed: 0\n",
        "record.json": b'{"training": {}}\n',
        "model.safetensors": os.urandom(256),
        "curves.png": b"\x89PNG\r\n\x1a\n" + os.urandom(64),
        "notes.txt": b"mine\n",
    }.items():
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture()
def workdir(tmp_path, monkeypatch, earlier):
    """An empty working folder (nothing may appear in it) and the earlier run, checked afterwards."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _snapshot(earlier)
    logger = logging.getLogger("distlearn")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield work
    logger.handlers[:], logger.propagate, logger.level = handlers, propagate, level  # a case that got far set them
    assert _snapshot(earlier) == before, "the earlier run's folder changed"
    assert not list(work.iterdir()), f"files appeared in the working folder: {list(work.iterdir())}"


def _in_process(capsys, argv: list[str]) -> tuple[int, str]:
    began = time.monotonic()
    code = main(argv)
    assert time.monotonic() - began < HANG_LIMIT_S
    return code, capsys.readouterr().err


def _check(code: int, err: str, expected_code: int, words: tuple[str, ...]) -> None:
    assert code == expected_code, err
    for word in words:
        assert word.lower() in err.lower(), f"{word!r} not in:\n{err}"
    assert "Traceback" not in err, err


# --------------------------------------------------------------------------- config-layer cases (in-process)

# (id, arguments after `train` (CONFIG first when given), key words of the message)
CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    # config files
    ("missing-file", ["nonexistent.yaml"], ("nonexistent.yaml", "not found", "shipped configs")),
    ("shipped-name-typo", ["wnie"], ("not found", "did you mean", "wine.yaml")),
    ("override-without-value-as-config", ["run.seed"], ("run.seed", "an override needs a value", "run.seed=VALUE")),
    # overrides
    ("override-no-equals", ["digits", "run.seed"], ("override 'run.seed'", "no '='", "key.path=value")),
    ("override-empty-key-part", ["digits", "run..seed=3"], ("run..seed=3", "empty part")),
    ("override-unclosed-list", ["digits", "run.seed=3", "model_configs.model_parameters.hidden_sizes=[1,2"],
     ("hidden_sizes=[1,2", "not valid", "close brackets")),
    ("override-unclosed-quote", ["digits", "run.tracking.name='x"], ("run.tracking.name='x", "not valid")),
    ("override-scalar-for-section", ["digits", "run=5"], ("run:", "expected a mapping")),
    ("unknown-run-key", ["digits", "run.sed=3"], ("run.sed", "did you mean 'run.seed'")),
    ("unknown-section", ["digits", "modle_configs.x=1"], ("modle_configs", "did you mean 'model_configs'")),
    # classes
    ("class-typo", ["digits", "model_configs.model_class=distlearn.models.MPL"],
     ("model_configs.model_class", "did you mean 'distlearn.models.MLP'")),
    ("module-typo", ["digits", f"{L}.optimizer_configs.optimizer_class=torhc.optim.AdamW"],
     ("optimizer_class", "module 'torhc' not found", "did you mean 'torch.optim.AdamW'")),
    ("class-not-dotted", ["digits", f"{L}.optimizer_configs.optimizer_class=AdamW"], ("optimizer_class", "dotted class path")),
    ("class-is-module", ["digits", f"{L}.optimizer_configs.optimizer_class=torch.optim"], ("is a module",)),
    ("class-is-function", ["digits", "model_configs.model_class=os.path.join"], ("model_class", "expected a class")),
    ("tinybig-learner-class", ["digits", "learner_configs.learner_class=tinybig.learner.forward_learner"],
     ("learner_configs.learner_class", "tinybig's own class")),
    # parameters
    ("unknown-parameter", ["digits", "model_configs.model_parameters.hiden_sizes=[3]"],
     ("hiden_sizes", "did you mean 'hidden_sizes'")),
    ("n-epochs-text", ["digits", f"{L}.n_epochs=ten"], ("n_epochs", "int >= 1", "'ten'")),
    ("n-epochs-zero", ["digits", f"{L}.n_epochs=0"], ("n_epochs", "int >= 1")),
    ("n-epochs-bool", ["digits", f"{L}.n_epochs=true"], ("n_epochs", "int >= 1", "True")),
    ("mixed-precision-unknown", ["digits", f"{L}.mixed_precision=fp32"], ("mixed_precision", "'bf16'", "'fp32'")),
    ("mixed-precision-bare-no", ["digits", f"{L}.mixed_precision=false"], ("mixed_precision", 'quote it')),
    ("max-grad-norm-negative", ["digits", f"{L}.max_grad_norm=-1"], ("max_grad_norm", "> 0")),
    ("scheduler-interval", ["digits", f"{L}.scheduler_interval=batch"], ("scheduler_interval", "'epoch'", "'batch'")),
    ("grad-accumulation-zero", ["digits", f"{L}.gradient_accumulation_steps=0"], ("gradient_accumulation_steps", ">= 1")),
    ("negative-lr", ["digits", f"{OPT}.lr=-0.001"], (f"{OPT}.lr", "AdamW refuses the value -0.001", "learning rate")),
    ("beta-out-of-range", ["digits", f"{OPT}.betas=[0.9,1.5]"], (f"{OPT}.betas", "refuses", "beta")),
    ("negative-weight-decay", ["digits", f"{OPT}.weight_decay=-1"], (f"{OPT}.weight_decay", "refuses", "weight_decay")),
    ("scheduler-bad-mode", ["digits", f"{SCHED}={{lr_scheduler_class: torch.optim.lr_scheduler.ReduceLROnPlateau, "
                            "lr_scheduler_parameters: {mode: maxx}}"], ("lr_scheduler_parameters.mode", "maxx")),
    ("scheduler-missing-required", ["digits", f"{SCHED}={{lr_scheduler_class: torch.optim.lr_scheduler.StepLR}}"],
     ("lr_scheduler_configs", "missing required parameter 'step_size'")),
    ("scheduler-refuses-combination", ["digits", f"{SCHED}={{lr_scheduler_class: torch.optim.lr_scheduler.OneCycleLR, "
                                       "lr_scheduler_parameters: {max_lr: 0.1}}"], ("OneCycleLR refuses", "total_steps")),
    ("param-set-by-distlearn", ["digits", f"{OPT}.params=[1]"], ("params", "set by distlearn")),
    ("data-name-typo", ["digits", "data_configs.data_parameters.name=digts"], ("data_configs.data_parameters.name", "digits")),
    ("batch-size-zero", ["digits", "data_configs.data_parameters.batch_size=0"], ("batch_size",)),
    ("test-size-too-big", ["digits", "data_configs.data_parameters.test_size=1.5"], ("test_size",)),
    # run
    ("seed-negative", ["digits", "run.seed=-1"], ("run.seed", "int >= 0")),
    ("overwrite-not-bool", ["digits", "run.overwrite=maybe"], ("run.overwrite", "true or false")),
    ("tracking-backend-null", ["digits", "run.tracking.backend=null"], ("run.tracking.backend", "the word none")),
    ("tracking-mode", ["digits", "run.tracking.mode=onlin"], ("run.tracking.mode", "'offline'")),
    ("tracking-mode-typo", ["digits", "run.tracking.mode=offlne"], ("run.tracking.mode", "did you mean 'offline'")),
    ("scheduler-interval-typo", ["digits", f"{L}.scheduler_interval=epoc"], ("scheduler_interval", "did you mean 'epoch'")),
    # broken interpolations name the key holding them and what they lack, in distlearn's words
    ("interpolation-missing-key", ["digits", f"{L}.n_epochs=${{nope.key}}"],
     (f"{L}.n_epochs: the interpolation '${{nope.key}}' refers to 'nope.key', which is not in the config",)),
    ("interpolation-key-typo", ["digits", f"run.seed=${{{L}.n_epoch}}"], ("run.seed", f"did you mean '{L}.n_epochs'")),
    ("interpolation-unknown-resolver", ["digits", f"{L}.n_epochs=${{oops:1}}"], (f"{L}.n_epochs", "resolver 'oops'")),
    # a key at the wrong level names where it belongs
    ("learner-key-at-top-level", ["wine", "n_epochs=5"], ("n_epochs: unknown top-level key", f"did you mean '{L}.n_epochs'")),
    ("learner-key-under-run", ["wine", "run.n_epochs=5"], ("run.n_epochs", f"did you mean '{L}.n_epochs'")),
    ("run-key-at-top-level", ["wine", "timeout_s=5"], ("timeout_s", "did you mean 'run.timeout_s'")),
    # metrics: refused values name their key; a longer class name finds the short one
    ("metric-choice-typo", ["wine", "metric_configs.metric_parameters.average=marco"],
     ("metric_configs.metric_parameters.average", "'marco'", "did you mean 'macro'")),
    ("metric-class-longer-name", ["wine", "metric_configs.metric_class=distlearn.metrics.F1Score"],
     ("metric_configs.metric_class", "did you mean 'distlearn.metrics.F1'")),
]


@pytest.mark.parametrize("case_id,args,words", CASES, ids=[c[0] for c in CASES])
def test_config_layer_refuses(case_id, args, words, workdir, earlier, capsys):
    argv = ["train", *args, f"run.output_dir={earlier}", "run.overwrite=true", "run.tracking.backend=none", "-q"]
    if case_id in ("overwrite-not-bool", "tracking-backend-null"):
        argv = ["train", *args, f"run.output_dir={earlier}", "-q"]  # the case sets that key itself
    elif case_id == "override-scalar-for-section":  # a later run.* override would rebuild `run` (OmegaConf's rule)
        argv = ["train", *args, "-q"]
    code, err = _in_process(capsys, argv)
    _check(code, err, 2, words)


def test_config_file_shapes_are_named(tmp_path, workdir, earlier, capsys):
    """A folder, a pipe, bad YAML, a list, binary bytes, an empty file: each named, none opened blindly."""
    folder = tmp_path / "configs_here"
    folder.mkdir()
    shutil.copy(REPO / "configs" / "wine.yaml", folder / "wine.yaml")
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)  # opening it for reading would wait forever for a writer
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("data_configs:\n  data_class: [unclosed\n")
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- 1\n- 2\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = [f"run.output_dir={earlier}", "run.overwrite=true", "-q"]
    for path, words in [
        (folder, ("is a folder", "wine.yaml")),
        (fifo, ("not a regular file", "pipe")),
        (bad_yaml, ("bad.yaml", "not valid YAML", "line")),
        (a_list, ("list.yaml", "expected a mapping")),
        (binary, ("binary.yaml", "not a UTF-8")),
        (empty, ("data_configs: missing", "model_configs: missing")),
    ]:
        code, err = _in_process(capsys, ["train", str(path), *out])
        _check(code, err, 2, (*words,))


def test_broken_interpolations_in_a_file_are_each_named_without_omegaconfs_exception(tmp_path, workdir, earlier,
                                                                                        capsys):
    config = tmp_path / "broken.yaml"
    text = (REPO / "configs" / "wine.yaml").read_text()
    config.write_text(text.replace("n_epochs: ", "n_epochs: ${run.epochs} # ", 1)
                      + "\nextra_notes:\n  where: runs/${nope}\n")
    code, err = _in_process(capsys, ["train", str(config), f"run.output_dir={earlier}", "run.overwrite=true", "-q"])
    _check(code, err, 2, (f"{L}.n_epochs: the interpolation '${{run.epochs}}' refers to 'run.epochs'",
                          "extra_notes.where: the interpolation 'runs/${nope}' refers to 'nope'", "2 problems"))
    assert "InterpolationKeyError" not in err and "full_key" not in err, err


def test_bad_command_line_exits_2(workdir, capsys):
    for argv, word in ((["train", "--bogus"], "unrecognized arguments"), (["trian"], "invalid choice")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert word in capsys.readouterr().err


def test_tinybig_file_with_unmappable_model_is_named(workdir, earlier, capsys):
    code, err = _in_process(capsys, ["train", str(DATA / "tinybig" / "iris_configs.yaml"), f"run.output_dir={earlier}",
                                     "run.overwrite=true", "-q"])
    _check(code, err, 2, ("model_configs.model_class", "tinybig.model.rpn", "distlearn.models.MLP"))
    assert "typing" not in err  # no "did you mean" from an unrelated module


# --------------------------------------------------------------------------- subprocess cases


def _env(**extra: str) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``command`` to its end; ``python -m distlearn`` is forked warm (tests/warm.py), other commands start cold."""
    began = time.monotonic()
    popen = warm.Popen if command[:2] == [sys.executable, "-m"] else subprocess.Popen
    proc = popen(command, cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{command} hung for {HANG_LIMIT_S} s")
    assert time.monotonic() - began < HANG_LIMIT_S
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _distlearn(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return _run([*prefix, sys.executable, "-m", "distlearn", "train", *args, "-q"], cwd)


def _unprivileged() -> tuple[str, ...]:
    """A command prefix under which file permissions apply (root ignores them unless it drops the capability)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search")


def test_permission_problems_are_named(tmp_path, workdir, earlier):
    unreadable = tmp_path / "secret.yaml"
    shutil.copy(REPO / "configs" / "digits.yaml", unreadable)
    unreadable.chmod(0o000)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    prefix = _unprivileged()
    result = _distlearn(str(unreadable), cwd=workdir, prefix=prefix)
    _check(result.returncode, result.stderr, 2, ("secret.yaml", "permission denied", "chmod"))
    result = _distlearn(f"run.output_dir={locked / 'new'}", "run.tracking.backend=none", cwd=workdir, prefix=prefix)
    _check(result.returncode, result.stderr, 2, ("run.output_dir", "not writable", "locked"))
    assert not list(locked.iterdir())


def test_output_dir_that_is_a_file_or_under_one(tmp_path, workdir, earlier, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for value, words in ((a_file, ("run.output_dir", "not a folder")), (a_file / "sub", ("run.output_dir", "not a folder"))):
        code, err = _in_process(capsys, ["train", f"run.output_dir={value}", "-q"])
        _check(code, err, 2, words)
    assert a_file.read_text() == "x"


def test_earlier_run_is_not_overwritten(workdir, earlier):
    result = _distlearn(f"run.output_dir={earlier}", "run.tracking.backend=none", cwd=workdir)
    _check(result.returncode, result.stderr, 2, ("already holds an earlier run", "run.overwrite=true"))


def test_a_folder_of_other_files_is_not_called_an_earlier_run(tmp_path, workdir, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code, err = _in_process(capsys, ["train", f"run.output_dir={folder}", "run.tracking.backend=none", "-q"])
    _check(code, err, 2, ("not empty", "holds no distlearn run", "notes.txt", "run.output_dir="))
    assert "earlier run" not in err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_fp16_on_cpu_names_the_key_or_the_launcher(workdir, earlier):
    key = f"{L}.mixed_precision"
    result = _distlearn(f"{key}=fp16", f"run.output_dir={earlier}", "run.overwrite=true", "run.tracking.backend=none",
                        cwd=workdir)
    _check(result.returncode, result.stderr, 2, (f"{key}: ", "needs a GPU", f"{key}=bf16"))
    launched = _run([sys.executable, "-m", "distlearn", "train", f"run.output_dir={earlier}", "run.overwrite=true",
                     "run.tracking.backend=none", "-q"], workdir, _env(ACCELERATE_MIXED_PRECISION="fp16"))
    _check(launched.returncode, launched.stderr, 2, (f"{key} is null", "launcher", "fp16", "needs a GPU"))


def test_labels_outside_the_models_outputs(workdir, earlier):
    result = _distlearn("model_configs.model_parameters.out_features=2", f"run.output_dir={earlier}",
                        "run.overwrite=true", "run.tracking.backend=none", cwd=workdir)
    _check(result.returncode, result.stderr, 2, ("out_features", "10 classes", "0, 1, 2", "out_features: auto"))


def _csv_config(tmp_path: Path, csv_text: str, earlier: Path) -> Path:
    import yaml

    table = tmp_path / "table.csv"
    table.write_text(csv_text)
    cfg = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    cfg["data_configs"] = {"data_class": "distlearn.data.CSVDataset", "data_parameters": {
        "path": str(table), "target": "y", "task": "classification", "batch_size": 2, "stratify": False}}
    cfg["run"].update(output_dir=str(earlier), overwrite=True, tracking={"backend": "none"})
    path = tmp_path / "csv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_csv_missing_column(tmp_path, workdir, earlier):
    config = _csv_config(tmp_path, "a,b,y_\n1,2,0\n3,4,1\n", earlier)
    result = _distlearn(str(config), cwd=workdir)
    _check(result.returncode, result.stderr, 2, ("table.csv", "no column 'y'", "did you mean 'y_'"))


def test_csv_nan_cell(tmp_path, workdir, earlier):
    config = _csv_config(tmp_path, "a,b,y\n1,2,0\n3,nan,1\n5,6,0\n7,8,1\n", earlier)
    result = _distlearn(str(config), cwd=workdir)
    _check(result.returncode, result.stderr, 2, ("table.csv", "line 3", "column 'b'", "nan"))


def test_csv_header_only(tmp_path, workdir, earlier):
    config = _csv_config(tmp_path, "a,b,y\n", earlier)
    result = _distlearn(str(config), cwd=workdir)
    _check(result.returncode, result.stderr, 2, ("table.csv", "no data rows"))


def test_accelerate_cpu_launch_of_two_warns(workdir, earlier):
    """`accelerate launch --cpu --num_processes 2` starts one process: the warning names a command that starts two."""
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    result = _run([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "distlearn", "train", "run.sed=3", "-q"],
                  cwd=workdir)
    err = result.stderr
    assert "distlearn: warning: accelerate launch was asked for 2 processes but started only this one" in err, err
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m distlearn train" in err
    assert "did you mean 'run.seed'" in err  # and the bad override still ends it with exit 2
    assert result.returncode != 0

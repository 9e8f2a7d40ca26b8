"""distlearn.config: shipped configs, overrides, every kind of config error, and the Accelerate configs."""

import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from distlearn.training.batches import flat_tokens
from distlearn.experiment.config import (
    ConfigError,
    build_experiment,
    config_dir,
    load_config,
    resolve_class,
    shipped_configs,
    validate_config,
)
from distlearn.data import SklearnDataset

REPO = Path(__file__).resolve().parent.parent
ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


def _problems(cfg):
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    return info.value.problems


def _with(*overrides):
    return load_config(None, overrides)


def test_every_shipped_config_loads_validates_and_builds():
    names = [p.stem for p in shipped_configs()]
    assert {"digits", "wine", "diabetes"} <= set(names)
    for path in shipped_configs():
        cfg = load_config(path)
        if "HFModel" in cfg.model_configs.model_class and importlib.util.find_spec("transformers") is None:
            continue  # the hf extra is not installed (test_hf.py checks the message it gets)
        validate_config(cfg)
        exp = build_experiment(cfg)
        batch = next(iter(exp.data_loaders["train_loader"]))
        if isinstance(batch, dict):  # a Hugging Face model, called as model(**batch), computes its own loss
            assert torch.isfinite(exp.model(**batch).loss) and exp.learner.loss is None, path.name
            continue
        x, y = batch
        out = exp.model(x)  # `auto` sizes came from the data
        assert out.shape == (*y.shape[:1 + (y.dim() > 1 and not y.is_floating_point())], exp.data.n_outputs), path.name
        if getattr(exp.data, "task", None) == "regression":
            assert y.shape == out.shape
        loss = exp.learner.loss  # built from the config's loss_configs
        loss_class = exp.config["learner_configs"]["learner_parameters"]["loss_configs"]["loss_class"]
        assert type(loss) is resolve_class(loss_class, "loss_class"), path.name
        assert torch.isfinite(loss(*flat_tokens(loss, out, y))), path.name  # (B, T, V) outputs: per token
        assert exp.metric is not None and exp.run["seed"] == 0


def test_default_config_is_digits_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config()
    assert cfg.data_configs.data_parameters.name == "digits"
    assert load_config("wine").data_configs.data_parameters.name == "wine"  # a shipped config by name
    assert config_dir() == REPO / "configs"
    with pytest.raises(ConfigError, match=r"not found.*did you mean .*wine.yaml"):
        load_config("wnie")


def test_overrides_are_typed_and_merged_onto_defaults(tmp_path):
    cfg = _with(
        "run.seed=3",
        "model_configs.model_parameters.hidden_sizes=[128,64]",
        "learner_configs.learner_parameters.optimizer_configs.optimizer_parameters.lr=5e-3",
        "run.tracking.backend=none",
    )
    assert cfg.run.seed == 3 and list(cfg.model_configs.model_parameters.hidden_sizes) == [128, 64]
    assert cfg.learner_configs.learner_parameters.optimizer_configs.optimizer_parameters.lr == 5e-3
    assert cfg.run.tracking.project == "distlearn"  # untouched siblings keep their values
    validate_config(cfg)

    # A config file without a run section gets every run default.
    small = OmegaConf.to_container(load_config())
    del small["run"]
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small))
    loaded = load_config(path)
    assert loaded.run.overwrite is False and loaded.run.resume == "auto"
    assert loaded.run.tracking.backend == "wandb"

    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(None, ["run.seed"])


def test_unknown_classes_get_near_miss_suggestions():
    problems = _problems(
        _with(
            "model_configs.model_class=distlearn.models.MPL",
            "metric_configs.metric_class=distlearn.metric.Accuracy",
            "learner_configs.learner_parameters.optimizer_configs.optimizer_class=torch.optim.Adamw",
        )
    )
    assert problems == [
        "model_configs.model_class: no class 'distlearn.models.MPL' — did you mean 'distlearn.models.MLP'?",
        "learner_configs.learner_parameters.optimizer_configs.optimizer_class: no class 'torch.optim.Adamw'"
        " — did you mean 'torch.optim.AdamW'?",
        "metric_configs.metric_class: no class 'distlearn.metric.Accuracy':"
        " module 'distlearn.metric' not found"
        " — did you mean 'distlearn.metrics.Accuracy'?",
    ]
    with pytest.raises(ConfigError, match="did you mean 'distlearn.models.MLP'"):
        resolve_class("distlearn.models.MPL", "model_class")
    assert resolve_class("torch.optim.AdamW", "optimizer_class") is torch.optim.AdamW


def test_parameters_bind_to_signatures():
    problems = _problems(
        _with(
            "model_configs.model_parameters.hiden_sizes=[8]",
            "learner_configs.learner_parameters.lr_scheduler_configs.lr_scheduler_class="
            "torch.optim.lr_scheduler.StepLR",
            "learner_configs.learner_parameters.optimizer_configs.optimizer_parameters.params=1",
            "learner_configs.learner_parameters.loss_configs.loss_parameters.label_smoothing=high",
            "data_configs.data_parameters.batch_size=0",
        )
    )
    joined = "\n".join(problems)
    assert len(problems) == 5, joined
    assert "data_configs.data_parameters.batch_size: expected a positive int, got 0" in joined
    assert (
        "model_configs.model_parameters.hiden_sizes: distlearn.models.MLP has no parameter 'hiden_sizes'"
        " — did you mean 'hidden_sizes'?" in joined
    )
    assert (
        "learner_configs.learner_parameters.lr_scheduler_configs.lr_scheduler_parameters:"
        " missing required parameter 'step_size' of torch.optim.lr_scheduler.StepLR" in joined
    )
    assert "optimizer_parameters.params: set by distlearn" in joined  # the model's parameters, at build time
    assert "loss_parameters.label_smoothing: expected float, got 'high' (str)" in joined


def test_bad_run_and_learner_values_are_all_reported_at_once():
    problems = _problems(
        _with(
            "run.seed=-1",
            "run.overwrite=maybe",
            "run.output_dir=5",
            "run.tracking.backend=wandbb",
            "run.tracking.mode=sometimes",
            "run.tracking.projct=x",
            "run.resume=3",
            "run.checkpoint=7",
            "run.sed=1",
            "learner_configs.learner_parameters.n_epochs=0",
            "learner_configs.learner_parameters.mixed_precision=no",  # YAML: false
        )
    )
    keys = [p.split(":")[0] for p in problems]
    assert keys == [
        "learner_configs.learner_parameters.n_epochs",
        "learner_configs.learner_parameters.mixed_precision",
        "run.sed",
        "run.seed",
        "run.output_dir",
        "run.overwrite",
        "run.tracking.projct",
        "run.tracking.backend",
        "run.tracking.mode",
        "run.checkpoint",
        "run.resume",
    ], "\n".join(problems)
    text = "\n".join(problems)
    for hint in ("'run.seed'", "'wandb'", "'run.tracking.project'"):
        assert f"did you mean {hint}" in text
    assert 'quote it: mixed_precision: "no"' in text
    assert f"{len(problems)} problems in the config" in str(ConfigError(problems))


def test_structure_errors_missing_sections_and_keys():
    cfg = OmegaConf.to_container(load_config())
    del cfg["learner_configs"]
    cfg["model_configs"]["model_params"] = cfg["model_configs"].pop("model_parameters")
    cfg["data_config"] = {}
    cfg["metric_configs"] = None  # allowed: no metric
    problems = _problems(cfg)
    text = "\n".join(problems)
    assert "data_config: unknown top-level key — did you mean 'data_configs'?" in text
    assert (
        "model_configs.model_params: unknown key of model_configs"
        " — did you mean 'model_configs.model_parameters'?" in text
    )
    assert "learner_configs: missing" in text
    assert len(problems) == 3, text


def test_callers_config_is_never_modified():
    plain = OmegaConf.to_container(load_config("diabetes"), resolve=True)
    del plain["run"]["checkpoint"]  # filled from the defaults inside, not in the caller's dict
    before = copy.deepcopy(plain)
    validate_config(plain)
    exp = build_experiment(plain, display_every_n_steps=0)
    assert plain == before
    exp.config["learner_configs"]["learner_parameters"]["n_epochs"] = 1
    assert plain == before

    cfg = load_config()
    snapshot = OmegaConf.to_yaml(cfg)
    build_experiment(cfg)
    assert OmegaConf.to_yaml(cfg) == snapshot


def test_an_optimizer_section_builds_its_class_and_stays_as_written(fresh_accelerate):
    plain = OmegaConf.to_container(load_config("wine", ["learner_configs.learner_parameters.n_epochs=1"]), resolve=True)
    section = {"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1}}
    plain["learner_configs"]["learner_parameters"]["optimizer_configs"] = section
    before = copy.deepcopy(section)
    exp = build_experiment(plain, display_every_n_steps=0)
    exp.learner.train(exp.model, exp.data_loaders, test_check=False, disable_tqdm=True)
    opt = exp.learner.accelerator()._optimizers[0].optimizer
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.1 and section == before


def test_build_experiment_sizes_model_from_data_and_seeds_it():
    cfg = _with("data_configs.data_parameters.name=iris", "model_configs.model_parameters.in_features=null")
    a, b = build_experiment(cfg), build_experiment(cfg)
    assert (a.model.in_features, a.model.out_features) == (4, 3)
    assert isinstance(a.data, SklearnDataset)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    c = build_experiment(_with("data_configs.data_parameters.name=iris", "run.seed=1"))
    assert not torch.equal(a.model.layers[0].weight, c.model.layers[0].weight)
    assert c.learner.seed == 1  # run.seed reaches the learner when its parameters set none


def test_metric_num_classes_is_sized_from_the_data():
    """A fixed-size confusion matrix: F1 never has to grow it (a host sync) during training."""
    wine = build_experiment(load_config("wine"))
    assert wine.metric.num_classes == 3 and wine.config["metric_configs"]["metric_parameters"]["num_classes"] == "auto"
    f1 = ("metric_configs.metric_class=distlearn.metrics.F1", "metric_configs.metric_parameters.average=macro")
    assert build_experiment(_with(*f1)).metric.num_classes == 10  # left out: from the data too
    assert build_experiment(_with(*f1, "metric_configs.metric_parameters.num_classes=12")).metric.num_classes == 12
    assert build_experiment(_with(*f1, "metric_configs.metric_parameters.num_classes=null")).metric.num_classes is None
    regression = load_config("diabetes", [*f1, "metric_configs.metric_parameters.num_classes=auto"])
    validate_config(regression)  # the class count of a data set is only known once it is read
    with pytest.raises(ConfigError, match=r"metric_parameters.num_classes: 'auto' takes the size from the data's "
                                          r"'n_classes', but SklearnDataset gives None"):
        build_experiment(regression)
    assert build_experiment(load_config("diabetes", f1)).metric.num_classes is None  # left out: F1's own default


def test_build_experiment_validates_unless_told_it_was_done():
    bad = _with("model_configs.model_parameters.hiden_sizes=[8]")
    with pytest.raises(ConfigError, match="did you mean 'hidden_sizes'"):
        build_experiment(bad)
    with pytest.raises(TypeError, match="hiden_sizes"):  # validated=True: straight to the constructor
        build_experiment(bad, validated=True)


def test_values_the_classes_refuse_are_reported_once_the_rest_is_right():
    """The optimizer is built on a stand-in only when nothing else is wrong (the first build imports
    torch's compiler, seconds): a negative lr shows up in the second round, after run.seed is fixed."""
    lr = "learner_configs.learner_parameters.optimizer_configs.optimizer_parameters.lr=-0.5"
    assert _problems(_with(lr, "run.seed=-1")) == ["run.seed: expected an int >= 0, got -1"]
    (problem,) = _problems(_with(lr))
    assert problem.startswith("learner_configs.learner_parameters.optimizer_configs.optimizer_parameters.lr: "
                              "torch.optim.adamw.AdamW refuses the value -0.5"), problem


@pytest.mark.timeout(120)
def test_a_built_wheel_ships_the_configs(tmp_path):
    """`pip install .` (not editable) must find the default config: configs/ is package data."""
    import zipfile

    src = tmp_path / "src"
    for name in ("distlearn", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("distlearn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"distlearn/configs/{p.relative_to(REPO / 'configs')}" for p in (REPO / "configs").rglob("*.yaml")}
    assert {"distlearn/configs/digits.yaml", "distlearn/configs/accelerate/cpu_multi.yaml"} <= shipped <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from distlearn.experiment.config import config_dir, load_config; print(config_dir()); load_config()"
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(site / "distlearn" / "configs")


def test_every_accelerate_config_parses():
    from accelerate.commands.config.config_args import load_config_from_file

    assert {p.stem for p in ACCELERATE_CONFIGS} == {
        "cpu_single", "cpu_multi", "gpu_single", "gpu_multi", "multi_node", "fsdp"
    }
    for path in ACCELERATE_CONFIGS:
        raw = yaml.safe_load(path.read_text())
        assert isinstance(raw, dict) and raw["compute_environment"] == "LOCAL_MACHINE", path.name
        load_config_from_file(str(path))  # Accelerate's own schema accepts it


RANKS_SCRIPT = """
import os
from accelerate import Accelerator
acc = Accelerator()
print(f"RANK {acc.process_index} OF {acc.num_processes} WORLD {os.environ.get('WORLD_SIZE')}", flush=True)
acc.wait_for_everyone()
"""


@pytest.mark.timeout(120)
def test_cpu_multi_accelerate_config_starts_two_processes(tmp_path):
    """One real `accelerate launch`: 2 processes that see each other (num_processes == 2)."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    # As documented at the top of cpu_multi.yaml: the workers need ACCELERATE_USE_CPU=1.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / "cpu_multi.yaml"),
        "--main_process_port", "0",  # a free port: tests may run next to other launches
        str(script),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The two processes share one stdout: their lines may interleave, so find the reports anywhere.
    lines = sorted(re.findall(r"RANK \d+ OF \d+ WORLD \d+", proc.stdout))
    assert lines == ["RANK 0 OF 2 WORLD 2", "RANK 1 OF 2 WORLD 2"], proc.stdout + proc.stderr[-2000:]


# --------------------------------------------------------------------------- tinybig experiment files

TINYBIG = Path(__file__).resolve().parent / "data" / "tinybig"


def test_tinybig_files_load_and_map_learner_metric_data_and_seed(caplog):
    """tinybig's own experiment files (tests/data/tinybig, copied unchanged) load as they are."""
    for name, data_name in (("iris", "iris"), ("diabetes", "diabetes"), ("banknote", None)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="distlearn"):
            cfg = load_config(TINYBIG / f"{name}_configs.yaml")
        assert "configurations" not in cfg and cfg.run.seed == 1234
        assert cfg.learner_configs.learner_class == "distlearn.learner.BackwardLearner"
        assert cfg.metric_configs.metric_class == "distlearn.metrics.MSE"
        assert "name" not in cfg.metric_configs.metric_parameters
        assert "output_configs" not in cfg and "result_configs" not in cfg and "device" not in cfg.model_configs
        log = caplog.text
        assert "tinybig.learner.backward_learner -> distlearn.learner.BackwardLearner" in log, log
        assert "tinybig.metric.mse -> distlearn.metrics.MSE" in log and "ignored device" in log
        problems = _problems(cfg)
        model = [p for p in problems if p.startswith("model_configs.model_class")]
        assert len(model) == 1 and "tinybig.model.rpn" in model[0] and "distlearn.models.MLP" in model[0], problems
        if data_name is None:  # tinybig's own data set: named, with what distlearn offers
            assert any(p.startswith("data_configs.data_class") and "SklearnDataset" in p and "CSVDataset" in p
                       for p in problems), problems
            assert len(problems) == 2, problems
        else:
            assert cfg.data_configs.data_class == "distlearn.data.SklearnDataset"
            assert cfg.data_configs.data_parameters.name == data_name
            assert cfg.data_configs.data_parameters.batch_size == 1000
            assert len(problems) == 1, problems
        assert not any("typing" in p for p in problems)


def test_tinybig_file_with_a_distlearn_model_builds():
    cfg = load_config(TINYBIG / "diabetes_configs.yaml")
    cfg.model_configs = {"model_class": "distlearn.models.MLP", "model_parameters": {"hidden_sizes": [8]}}
    validate_config(cfg)
    exp = build_experiment(cfg)
    x, y = next(iter(exp.data_loaders["train_loader"]))
    assert exp.model(x).shape == y.shape and exp.learner.n_epochs == 3000 and exp.run["seed"] == 1234


def test_unknown_top_level_package_gets_no_unrelated_suggestion():
    with pytest.raises(ConfigError) as info:
        resolve_class("tinybg.learner.backward_learner", "learner_configs.learner_class")
    assert "did you mean" not in str(info.value)  # 'typing' is not what a tinybig user meant
    with pytest.raises(ConfigError, match="did you mean 'torch.optim.AdamW'"):
        resolve_class("torhc.optim.AdamW", "k")


def test_a_list_of_metrics_builds_one_collection_with_the_first_as_primary():
    from distlearn.metrics import F1, Accuracy, Metrics

    cfg = OmegaConf.to_container(load_config("wine"))
    cfg["metric_configs"] = [{"metric_class": "distlearn.metrics.Accuracy"},
                             {"metric_class": "distlearn.metrics.F1", "metric_parameters": {"average": "macro"}}]
    validate_config(cfg)
    metric = build_experiment(cfg).metric
    assert isinstance(metric, Metrics) and metric.primary == "accuracy"
    assert isinstance(metric["accuracy"], Accuracy) and isinstance(metric["f1_macro"], F1)
    assert metric["f1_macro"].num_classes == 3  # each entry sized from the data like a single metric
    cfg["metric_configs"][1]["metric_parameters"] = {"averag": "macro"}
    assert any(p.startswith("metric_configs[1].metric_parameters") for p in _problems(cfg))
    cfg["metric_configs"] = []
    assert any("metric_configs: an empty list" in p for p in _problems(cfg))


def test_a_class_spec_splits_into_its_two_keys():
    from distlearn.specs import read_spec, spec_keys

    spec = read_spec({"optimizer_class": "torch.optim.SGD", "optimizer_parameters": None, "lr": 1}, "optimizer")
    assert (spec.class_key, spec.params_key) == spec_keys("optimizer") == ("optimizer_class", "optimizer_parameters")
    assert (spec.path, spec.has_class, spec.parameters, spec.unknown) == ("torch.optim.SGD", True, {}, ["lr"])
    assert not read_spec({"loss_parameters": 3}, "loss").has_class and read_spec({"loss_parameters": 3}, "loss").parameters == 3


def test_the_learner_and_the_config_check_one_set_of_option_ranges():
    from distlearn.training.settings import check_learner_options

    with pytest.raises(ValueError, match=r"^n_epochs must be an int >= 1, got 0$"):
        check_learner_options(n_epochs=0, seed=-1)  # the first one out of range
    with pytest.raises(ValueError, match=r"^seed must be an int >= 0, got None$"):
        check_learner_options(seed=None)
    check_learner_options(gradient_accumulation_steps=None, max_grad_norm=None, mixed_precision=None)
    at = "learner_configs.learner_parameters"
    problems = _problems(_with(f"{at}.max_grad_norm=true", f"{at}.scheduler_interval=null"))
    assert problems == [
        f"{at}.max_grad_norm: expected null or a number > 0, got True",
        f"{at}.scheduler_interval: expected one of ['epoch', 'step'], got None",
    ]


def test_the_config_layers_and_the_option_ranges_import_no_torch():
    code = (
        "import sys, distlearn.specs, distlearn.training.settings, distlearn.experiment.config; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]

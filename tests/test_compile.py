"""Compile and activation checkpointing (``model_options``): key names, exactness, resume, recompiles, refusals.

Training runs in real processes (the session pool, or a launched script where a SIGKILL is the point);
exactness runs use ``backend="aot_eager"`` (no C++ compile, the same aten ops as eager); one test
compiles with inductor.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from launching import run_script, without_clocks

SCRIPT = Path(__file__).parent / "scripts" / "resume_run.py"
AOT = {"compile": {"backend": "aot_eager"}}


def _text_loaders(n: int = 37, batch: int = 8):
    """Tiny random token windows, 37 of them: one process's last batch is smaller (several processes'
    are evened out by Accelerate)."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 11, (n, 16), generator=g), torch.randint(0, 11, (n, 16), generator=g)
    return {"train_loader": DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True),
            "test_loader": DataLoader(TensorDataset(x[:13], y[:13]), batch_size=batch)}


def _train(rank, world, options, folder=None, n_epochs=2, dropout=0.1, batch=8):
    """A CharTransformer trained on the tiny windows; returns the losses, weights, compiles and saved keys."""
    import torch._dynamo
    import torch._dynamo.utils as dynamo_utils
    from accelerate.state import AcceleratorState, GradientState

    from distlearn.models import CharTransformer
    from distlearn.training import checkpoint
    from distlearn.training.checkpoint import Checkpoints
    from distlearn.training.learner import BackwardLearner

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch._dynamo.reset()  # a fresh process's compile cache
    dynamo_utils.counters.clear()
    torch.manual_seed(1)
    model = CharTransformer(11, 16, 16, 1, 2, dropout=dropout)
    learner = BackwardLearner(n_epochs=n_epochs, loss=torch.nn.CrossEntropyLoss(), seed=3, display_every_n_steps=2,
                              optimizer_configs={"optimizer_class": "torch.optim.AdamW"}, model_options=options)
    store = None if folder is None else Checkpoints(folder)
    record = learner.train(model, _text_loaders(batch=batch), disable_tqdm=True, checkpoints=store)
    learner.accelerator().wait_for_everyone()
    saved = None
    if store is not None:
        from safetensors.torch import load_file

        saved = sorted(load_file(str(checkpoint.find(folder)[0][0] / "model.safetensors")))
    return {
        "losses": [record["training"][e]["train_loss"] for e in sorted(record["training"])],
        "test": [record["training"][e]["test_result"]["test_loss"] for e in sorted(record["training"])],
        "weights": torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().tobytes().hex(),
        "compiled_frames": dynamo_utils.counters["frames"]["ok"],
        "keys": sorted(model.state_dict()), "saved_keys": saved,
    }


def test_compiled_training_on_two_processes_keeps_key_names_matches_eager_and_compiles_once_per_mode(
        dist_pool, tmp_path):
    eager = dist_pool.run(_train, 2, None, str(tmp_path / "eager"), 2, 0.0)
    compiled = dist_pool.run(_train, 2, AOT, str(tmp_path / "compiled"), 2, 0.0)
    for got, want in zip(compiled, eager):
        assert got["weights"] == want["weights"] and got["losses"] == want["losses"] and got["test"] == want["test"]
        assert got["compiled_frames"] == 2 and want["compiled_frames"] == 0  # training and evaluation
    # one process, the same global batch: its last batch (5 of 16) is smaller and compiles nothing more
    single = dist_pool.run(_train, 1, AOT, None, 2, 0.0, 16)[0]
    assert single["compiled_frames"] == 2
    # epoch 0 to rounding (later epochs start from weights the last, evened-out step made: ~2e-4 apart)
    assert single["losses"][0] == pytest.approx(compiled[0]["losses"][0], rel=1e-5)
    assert compiled[0]["saved_keys"] == eager[0]["saved_keys"] == sorted(
        k for k in compiled[0]["keys"] if k != "head.weight")  # tied to the embedding: saved once
    assert not any("_orig_mod" in k for k in compiled[0]["saved_keys"])


def _resume_run(tmp_path: Path, name: str, kills: list[str], **env: str) -> dict:
    """tests/scripts/resume_run.py on one process, SIGKILLed at each of ``kills`` with ``env``, then finished."""
    run_dir, result = tmp_path / name, tmp_path / f"{name}.json"
    for kill, extra in kills:
        killed = run_script(SCRIPT, 1, run_dir, result, kill, **{**env, **extra})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    done = run_script(SCRIPT, 1, run_dir, result, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text())


def test_a_compiled_run_killed_and_resumed_ends_bitwise_equal_also_from_an_eager_checkpoint(tmp_path):
    """An eager run killed mid-epoch (step 6) goes on compiled from its checkpoint (the keys match), is
    killed again during the save of step 12 and finishes compiled, each restart compiling afresh: it
    ends bitwise where the compiled run never killed ends. (2 epochs of 9 steps, the last one uneven.)"""
    compiled = {"COMPILE": "aot_eager", "N_EPOCHS": "2"}
    want = _resume_run(tmp_path, "full", [], **compiled)
    got = _resume_run(tmp_path, "killed", [("step:6", {"COMPILE": ""}), ("save:12", {})], **compiled)
    assert got["resumed_from"] == "step-00000009"
    assert got["weights_hex"] == want["weights_hex"]
    assert without_clocks(got["record"]) == without_clocks(want["record"])


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor on a CPU needs a C++ compiler; none on PATH")
def test_inductor_runs_the_same_kernels_whichever_batch_size_comes_first():
    """The batch dimension is dynamic from the first call: a process that starts with the smaller last
    batch (a resume) computes bitwise what one that started with a full batch computes, with one compile."""
    import torch._dynamo
    import torch._dynamo.utils as dynamo_utils

    from distlearn.training.model_options import ModelOptions, apply_model_options, eager_forward

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    full, last = torch.randn(6, 8), torch.randn(2, 8)
    outputs = []
    for order in ((full, last), (last, full)):
        torch._dynamo.reset()
        dynamo_utils.counters.clear()
        apply_model_options(eager_forward(model), ModelOptions(compile=True), torch.device("cpu"))
        with torch.no_grad():
            got = {x.shape[0]: model(x) for x in order}
        assert dynamo_utils.counters["frames"]["ok"] == 1
        outputs.append(got)
    assert all(torch.equal(outputs[0][n], outputs[1][n]) for n in (6, 2))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with torch.no_grad():
        assert torch.allclose(model(full), eager_forward(model)(full), atol=1e-5)


def test_gradient_checkpointing_gives_the_losses_of_the_run_without_it(dist_pool):
    """Dropout on: the recomputed blocks draw the forward's masks (preserve_rng_state)."""
    plain = dist_pool.run(_train, 2, None, None, 1, 0.2)
    checkpointed = dist_pool.run(_train, 2, {"gradient_checkpointing": True}, None, 1, 0.2)
    both = dist_pool.run(_train, 2, {"gradient_checkpointing": True, **AOT}, None, 1, 0.2)
    for got in (checkpointed[0], both[0]):
        assert got["losses"] == pytest.approx(plain[0]["losses"], rel=1e-6)
        assert got["test"] == pytest.approx(plain[0]["test"], rel=1e-6)


def test_gradient_checkpointing_switches_on_a_hugging_face_models_own_checkpointing():
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    from distlearn.models import HFModel
    from distlearn.training.model_options import ModelOptions, apply_model_options

    model = HFModel(GPT2LMHeadModel, {"n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2, "vocab_size": 5})
    apply_model_options(model, ModelOptions(gradient_checkpointing=True), torch.device("cpu"))
    flag = "is_activation_checkpointing" if hasattr(model.model, "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    assert getattr(model.model, flag)


def test_a_model_without_checkpointing_is_refused_naming_the_key():
    from distlearn.models import MLP
    from distlearn.training.model_options import ModelOptions, ModelOptionsError, apply_model_options

    with pytest.raises(ModelOptionsError, match=r"learner_parameters.gradient_checkpointing: true, but MLP"):
        apply_model_options(MLP(4, 2), ModelOptions(gradient_checkpointing=True), torch.device("cpu"))


def test_compiling_with_accelerates_dynamo_plugin_too_is_refused():
    from distlearn.training.model_options import ModelOptions, ModelOptionsError, apply_model_options

    with pytest.raises(ModelOptionsError, match=r"Accelerate compiles too \(dynamo_backend='INDUCTOR'\)"):
        apply_model_options(torch.nn.Linear(2, 2), ModelOptions(compile=True), torch.device("cpu"), "INDUCTOR")


@pytest.mark.parametrize("options, message", [
    ({"compile": "yes"}, "compile must be False, True or a dict"),
    ({"compile": {"mode": "fast"}}, "mode: expected null or one of ['default'"),
    ({"compile": {"backend": "aot_eager", "fullgraph": True}}, "unknown keys ['fullgraph']"),
    ({"gradient_checkpointing": 1}, "gradient_checkpointing must be True or False, got 1"),
    ({"compile": {"backend": "aot_eagr"}}, "compile.backend: 'aot_eagr' is not a torch.compile backend — did you mean"),
    ({"compiled": True}, "model_options: unknown keys ['compiled']"),
])
def test_bad_model_options_are_refused_by_the_learner(options, message):
    from distlearn.training.learner import BackwardLearner

    with pytest.raises(ValueError) as error:
        BackwardLearner(model_options=options)
    assert message in str(error.value)


def test_the_config_validator_checks_both_keys_and_the_builder_groups_them():
    from distlearn.experiment.config import ConfigError, build_experiment, load_config, validate_config

    at = "learner_configs.learner_parameters"
    bad = load_config("digits", [f"{at}.compile={{mode: fast}}", f"{at}.gradient_checkpointing=3", f"{at}.compil=1"])
    with pytest.raises(ConfigError) as error:
        validate_config(bad, check_output_dir=False)
    assert f"{at}.compile: expected false, true or {{mode:" in str(error.value)
    assert f"{at}.gradient_checkpointing: expected true or false, got 3" in str(error.value)
    assert f"{at}.compil: " in str(error.value) and "did you mean 'compile'?" in str(error.value)
    good = load_config("digits", [f"{at}.compile={{backend: aot_eager, dynamic: false}}"])
    learner = build_experiment(good).learner
    assert learner.model_options.compiled.backend == "aot_eager" and learner.model_options.compiled.dynamic is False
    assert learner.model_options.gradient_checkpointing is False


def test_the_command_says_what_compiler_is_missing_and_exits_2(tmp_path):
    from test_cli import NO_TRACKING, distlearn, run_env

    at = "learner_configs.learner_parameters"
    result = distlearn("digits", f"{at}.n_epochs=1", f"{at}.compile=true", NO_TRACKING,
                       f"run.output_dir={tmp_path / 'out'}", cwd=tmp_path, env=run_env(CXX="no-such-c++"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("distlearn: error: learner_parameters.compile: the inductor backend on a CPU")
    assert "'no-such-c++'" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

"""The package's shape: paths written before the redesign keep importing, and a wheel holds every room."""

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# old path -> (new home, the names users and configs import from the old path)
MOVED = {
    "distlearn.learner": ("distlearn.training.learner", ["BackwardLearner", "NonFiniteLossError"]),
    "distlearn.accelerator": ("distlearn.runtime.accelerator", ["build_accelerator", "prepare_loader"]),
    "distlearn.checkpoint": ("distlearn.training.checkpoint", ["Checkpoints", "Interrupted", "latest", "find"]),
    "distlearn.config": ("distlearn.experiment.config", ["ConfigError", "load_config", "build_experiment"]),
    "distlearn.cli": ("distlearn.command.cli", ["main", "train"]),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_re_export_the_same_objects(old, recwarn):
    new, names = MOVED[old]
    before, after = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(before, name) is getattr(after, name), (old, name)
    assert set(names) <= set(before.__all__)
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)], "re-exports warn nothing"


def test_every_package_folder_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "distlearn").rglob("__init__.py")
    }
    assert folders <= listed, f"pyproject.toml's packages miss {sorted(folders - listed)}"


def test_the_console_script_and_python_m_reach_the_same_main():
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["distlearn"]
    module, name = script.split(":")
    main = getattr(importlib.import_module(module), name)
    assert main is importlib.import_module("distlearn.cli").main
    assert "from distlearn.command.cli import main" in (ROOT / "distlearn" / "__main__.py").read_text()

"""Loading an experiment config: find the file, read its YAML, merge the run defaults and the overrides."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..options import did_you_mean
from ..specs import ConfigError
from .defaults import DEFAULT_CONFIG_NAME, RUN_DEFAULTS
from .tinybig import from_tinybig, is_tinybig

__all__ = ["config_dir", "first_line", "interpolation_problems", "load_config", "shipped_configs"]


def config_dir() -> Path:
    """The shipped configs: ``distlearn/configs`` (wheel package data), else the repo's ``configs/``.

    Raises:
        FileNotFoundError: If neither exists.
    """
    here = Path(__file__).resolve().parents[1]  # the package folder: distlearn/
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / f"{DEFAULT_CONFIG_NAME}.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no shipped configs found in {here / 'configs'} or {here.parent / 'configs'}; pass a config file path"
    )


def shipped_configs() -> list[Path]:
    """All shipped experiment configs (``configs/*.yaml``), sorted by name."""
    return sorted(config_dir().glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load an experiment config, merged onto the run defaults, with command-line overrides.

    A tinybig experiment file (a top-level ``configurations:`` mapping with ``tinybig.*``
    class paths) is translated to distlearn's layout on the way; see ``distlearn.experiment.tinybig``.

    Args:
        path: A YAML file, a shipped config's name (``"wine"``), or ``None`` for digits.
        overrides: ``key.path=value`` strings applied last (OmegaConf dotlist syntax, e.g.
            ``run.seed=3``, ``model_configs.model_parameters.hidden_sizes=[128,64]``).

    Returns:
        The merged config, not yet validated (call ``validate_config``).

    Raises:
        ConfigError: If the file is missing, unreadable (a folder, a pipe, no permission) or
            not a YAML mapping, or an override is malformed (each bad one is named).
    """
    source = _find_config(path)
    if isinstance(overrides, str):
        overrides = [overrides]
    file_cfg = _read_yaml(source)
    if is_tinybig(file_cfg):
        file_cfg = OmegaConf.create(from_tinybig(OmegaConf.to_container(file_cfg), source=str(source)))
    problems: list[str] = []
    parsed = []
    for o in overrides:
        cli_cfg, problem = _parse_override(o)
        if problem:
            problems.append(problem)
        else:
            parsed.append((o, cli_cfg))
    if problems:
        raise ConfigError(problems)
    try:
        merged = OmegaConf.merge(OmegaConf.create({"run": RUN_DEFAULTS}), file_cfg)
    except Exception as exc:  # e.g. `run: 5` in the file
        raise ConfigError([f"{source}: {first_line(exc)}"]) from None
    for o, cli_cfg in parsed:  # one by one, so that a failure names its override
        try:
            merged = OmegaConf.merge(merged, cli_cfg)
        except Exception as exc:
            raise ConfigError([f"override {o!r}: {first_line(exc)}"]) from None
    if len(parsed) > 1:  # `run=5 run.seed=3` rebuilt `run` without its defaults: fill them in again
        merged = OmegaConf.merge(OmegaConf.create({"run": RUN_DEFAULTS}), merged)
    return merged


def _find_config(path: str | Path | None) -> Path:
    if path is None:
        return config_dir() / f"{DEFAULT_CONFIG_NAME}.yaml"
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        inside = sorted(c.name for c in p.glob("*.y*ml"))
        example = f" (it holds {', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''}: " \
            f"e.g. {str(p / inside[0])!r})" if inside else ""
        raise ConfigError([f"config file {str(path)!r}: is a folder; pass a YAML file{example}"])
    if p.exists():  # never opened: reading a pipe would wait for a writer
        raise ConfigError([
            f"config file {str(path)!r}: not a regular file (a pipe, socket or device); "
            f"write the config to a .yaml file and pass its path"
        ])
    try:
        shipped = {c.stem: str(c) for c in shipped_configs()}
    except FileNotFoundError:
        shipped = {}
    if p.suffix == "" and str(path) in shipped:
        return Path(shipped[str(path)])
    hint = did_you_mean(p.stem, shipped)
    if not hint and "." in str(path) and p.suffix not in (".yaml", ".yml") and "/" not in str(path):
        hint = f" — an override needs a value: {path}=VALUE"
    raise ConfigError([f"config file {str(path)!r}: not found (shipped configs: {sorted(shipped)}){hint}"])


def _read_yaml(source: Path) -> DictConfig:
    """The file's YAML mapping; unreadable files and bad YAML are ``ConfigError``s naming the file."""
    try:
        text = source.read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError([
            f"config file {str(source)!r}: permission denied; make it readable (chmod u+r) or copy it"
        ]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config file {str(source)!r}: not a UTF-8 text file ({exc.reason} at byte {exc.start})"]) \
            from None
    except OSError as exc:
        raise ConfigError([f"config file {str(source)!r}: cannot be read: {exc.strerror or exc}"]) from None
    try:
        file_cfg = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except Exception as exc:  # yaml errors carry the line and column
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError([f"{source}: expected a mapping at the top level, got a {type(file_cfg).__name__}"])
    return file_cfg


def _parse_override(override: Any) -> tuple[DictConfig | None, str | None]:
    """One ``key.path=value`` override as a config, or the problem with it (naming it)."""
    example = "expected key.path=value, e.g. run.seed=3"
    if not isinstance(override, str) or "=" not in override:
        return None, f"override {override!r}: no '='; {example}"
    key, _, value = override.partition("=")
    if not key.strip() or any(not part.strip() for part in key.split(".")):
        return None, f"override {override!r}: the key {key!r} has an empty part; {example}"
    if " " in key.strip():
        return None, f"override {override!r}: the key {key!r} has a space; {example}"
    try:
        return OmegaConf.from_dotlist([override]), None
    except Exception as exc:
        return None, (
            f"override {override!r}: the value {value!r} is not valid ({first_line(exc)}); "
            "close brackets and quotes, and quote the whole argument in the shell: 'key=[1,2]'"
        )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without OmegaConf's ``full_key:`` trailer."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(ln for ln in lines[:3] if not ln.startswith(("full_key:", "object_type", "in \"<unicode")))
    return text or type(exc).__name__



def interpolation_problems(cfg: DictConfig) -> list[str]:
    """Each ``${...}`` in ``cfg`` that cannot be resolved, named by the key that holds it and what it lacks.

    OmegaConf resolves lazily, so a broken interpolation (``n_epochs=${nope.key}``, from the
    file or an override) would surface as OmegaConf's exception wherever the value is first read.
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    known = [".".join(map(str, path)) for path, _ in _leaves(raw, ())]
    problems = []
    for path, text in _leaves(raw, ()):
        if not (isinstance(text, str) and "${" in text):
            continue
        try:
            node: Any = cfg
            for key in path:
                node = node[key]  # the last step resolves the interpolation
        except Exception as exc:  # OmegaConf's resolution errors share no base class worth naming
            problems.append(_interpolation_problem(".".join(map(str, path)), text, exc, known))
    return problems


def _leaves(node: Any, path: tuple) -> Iterator[tuple[tuple, Any]]:
    """(key path, value) of every value that is not a mapping or a list."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        yield path, node
        return
    for key, value in items:
        yield from _leaves(value, (*path, key))


def _interpolation_problem(where: str, text: str, exc: Exception, known: list[str]) -> str:
    """The message for the interpolation ``text`` at ``where`` that raised ``exc``."""
    message = first_line(exc)
    fix = f"fix the reference or give {where} a value"
    missing = re.search(r"Interpolation key '([^']+)' not found", message)
    if missing:
        key = missing.group(1)
        hint = did_you_mean(key, [k for k in known if k != where])
        return f"{where}: the interpolation {text!r} refers to {key!r}, which is not in the config; {fix}{hint}"
    resolver = re.search(r"Unsupported interpolation type (\S+)", message)
    if resolver:
        return (f"{where}: the interpolation {text!r} calls the resolver {resolver.group(1)!r}, which is not "
                f"registered (OmegaConf's own: oc.env, oc.select, oc.decode, ...); {fix}")
    unset = re.search(r"Missing mandatory value: (\S+)", message)
    if unset:
        return f"{where}: the interpolation {text!r} refers to {unset.group(1)!r}, which has no value (???); {fix}"
    return f"{where}: the interpolation {text!r} cannot be resolved: {message}; {fix}"

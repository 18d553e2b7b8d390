"""Configuration: `params.yaml` (composed from `conf/` by Hydra) plus `key=value` overrides.

Stage code reads `params.yaml`, never `@hydra.main`, so `dvc exp run -S` overrides reach it.
Overrides on the `clrpipe` command line use Hydra's override grammar: `section.key=value`
sets a value that must already exist (`+section.key=value` adds one), and `group=option`
(e.g. `schedule=triangular2`) replaces a whole section with `conf/<group>/<option>.yaml`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline import params
from clrpipe.pipeline.params import PARAMS_FILE, Params

__all__ = ["CONF_DIR", "EXPERIMENT_COPIES", "PARAMS_FILE", "compose", "flatten", "load",
           "project_root", "reads", "real_path", "section", "validated"]

CONF_DIR = Path("conf")
EXPERIMENT_COPIES = "/.dvc/tmp/exps/"  # where DVC runs --temp and queued experiments


def load(
    overrides: list[str] | tuple[str, ...] = (),
    params_file: Path = PARAMS_FILE,
    conf_dir: Path = CONF_DIR,
) -> DictConfig:
    """Read `params_file` and apply command-line overrides on top of it."""
    if not params_file.is_file():
        raise ClrpipeError(f"{params_file}: not found; run clrpipe from the project root")
    try:
        cfg = OmegaConf.load(params_file)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as err:
        raise ClrpipeError(f"{params_file}: not valid YAML ({first_line(err)})") from err
    if not isinstance(cfg, DictConfig):
        raise ClrpipeError(f"{params_file}: expected a mapping of sections at the top level")
    for override in _parse(overrides):
        _apply(cfg, override, params_file, conf_dir)
    return cfg


def compose(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose `conf/config.yaml` the way DVC's Hydra integration writes `params.yaml`."""
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as err:
        raise ClrpipeError(f"{conf_dir}: {first_line(err)}") from err


def validated(cfg: DictConfig) -> Params:
    """The whole config checked against `Params`: every section, whichever stage runs."""
    return params.parse(Params, _container(cfg), where="", prefix=f"{PARAMS_FILE}: ")


ReadsT = TypeVar("ReadsT", bound=BaseModel)


def reads(cfg: DictConfig, model: type[ReadsT]) -> ReadsT:
    """A stage's projection `model` of the config, after the whole config is validated."""
    validated(cfg)
    return params.parse(model, _container(cfg), where="", prefix=f"{PARAMS_FILE}: ")


def section(cfg: DictConfig, name: str, model: type[ReadsT]) -> ReadsT:
    """Section `name` of the config validated against `model`, failing with the dotted key."""
    raw = OmegaConf.select(cfg, name, default=None)
    if raw is None:
        raise ClrpipeError(f"{PARAMS_FILE}: missing section '{name}'")
    values = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    return params.parse(model, values, where=name, prefix=f"{PARAMS_FILE}: ")


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: nested keys joined with dots, leaves kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def project_root() -> Path:
    """$DVC_ROOT when DVC runs the stage, else the working directory; inside a DVC experiment
    copy (`<project>/.dvc/tmp/exps/<copy>`), the real project instead."""
    return real_path(Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve())


def real_path(path: Path) -> Path:
    """`path` with a DVC experiment copy replaced by the project it was copied from:
    `<project>/.dvc/tmp/exps/<copy>/a/b` -> `<project>/a/b`."""
    text = str(path)
    at = (text + "/").find(EXPERIMENT_COPIES)
    if at < 0:
        return path
    project = Path(text[:at] or "/")
    inside = Path(text[at + len(EXPERIMENT_COPIES):]).parts[1:]  # drop the copy's folder name
    return project.joinpath(*inside)


def _container(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ClrpipeError(f"{PARAMS_FILE}: {first_line(err)}") from None


def _parse(overrides: list[str] | tuple[str, ...]) -> list:
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as err:
            reason = first_line(err)
            raise ClrpipeError(f"override '{text}': expected key=value ({reason})") from err
    return parsed


def _apply(cfg: DictConfig, override, params_file: Path, conf_dir: Path) -> None:
    key = override.key_or_group
    value = override.value()
    group_dir = conf_dir / key
    if "." not in key and group_dir.is_dir():
        option = group_dir / f"{value}.yaml"
        if not option.is_file():
            choices = ", ".join(sorted(p.stem for p in group_dir.glob("*.yaml")))
            raise ClrpipeError(f"override '{key}={value}': no {option}; choose one of: {choices}")
        loaded = OmegaConf.load(option)
        if option.read_text().startswith("# @package _global_"):  # as Hydra: at the top level
            for name, value in loaded.items():
                if name == key:
                    cfg[name] = value
                else:
                    cfg[name] = OmegaConf.merge(cfg.get(name, {}), value)
        else:
            cfg[key] = loaded
        return
    if not override.is_add() and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
        raise ClrpipeError(
            f"override '{key}': no such key in {params_file} (prefix with + to add one)"
        )
    OmegaConf.update(cfg, key, value, merge=False, force_add=True)


_ABSENT = object()

"""Configuration: `params.yaml` (composed from `conf/` by Hydra) plus `key=value` overrides.

Stage code reads `params.yaml`, never `@hydra.main`, so `dvc exp run -S` overrides reach it.
Overrides on the `clrpipe` command line use Hydra's override grammar: `section.key=value`
sets a value that must already exist (`+section.key=value` adds one), and `group=option`
(e.g. `schedule=triangular2`) replaces a whole section with `conf/<group>/<option>.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, ValidationError

from clrpipe.errors import ClrpipeError

PARAMS_FILE = Path("params.yaml")
CONF_DIR = Path("conf")


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
    except (OmegaConfBaseException, ValueError) as err:
        raise ClrpipeError(f"{params_file}: not valid YAML ({_first_line(err)})") from err
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
        raise ClrpipeError(f"{conf_dir}: {_first_line(err)}") from err


class Section(BaseModel):
    """Base of the typed view of one params.yaml section: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def section_node(cfg: DictConfig, name: str) -> DictConfig:
    """The raw section `name`, for sections validated by their own module (e.g. `schedule`)."""
    node = OmegaConf.select(cfg, name, default=None)
    if not isinstance(node, DictConfig):
        raise ClrpipeError(f"{PARAMS_FILE}: missing section '{name}'")
    return node


SectionT = TypeVar("SectionT", bound=Section)


def section(cfg: DictConfig, name: str, model: type[SectionT]) -> SectionT:
    """Validate section `name` of the config against `model`, failing with the dotted key."""
    raw = OmegaConf.select(cfg, name, default=None)
    if raw is None:
        raise ClrpipeError(f"{PARAMS_FILE}: missing section '{name}'")
    values = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    try:
        return model.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in (name, *first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] not in ("missing", "value_error"):
            message = f"{message.lower()}, got {first.get('input')!r}"
        raise ClrpipeError(f"{PARAMS_FILE}: {key}: {message}") from None


def _parse(overrides: list[str] | tuple[str, ...]) -> list:
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as err:
            reason = _first_line(err)
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
        cfg[key] = OmegaConf.load(option)
        return
    if not override.is_add() and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
        raise ClrpipeError(
            f"override '{key}': no such key in {params_file} (prefix with + to add one)"
        )
    OmegaConf.update(cfg, key, value, merge=False, force_add=True)


_ABSENT = object()


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__

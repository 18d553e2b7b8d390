"""The `clrpipe` command: one subcommand per pipeline stage, each taking `key=value` overrides."""

from __future__ import annotations

import sys

import click

from clrpipe import config
from clrpipe.errors import ClrpipeError

OVERRIDES = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Find good learning rates, then train with them: the stages of the clrpipe pipeline."""


@main.command()
@OVERRIDES
def fetch(overrides: tuple[str, ...]) -> None:
    """Make sure the raw table is at data.raw, downloading it with kagglehub if it is not."""
    from clrpipe.stages import prepare as stage

    _run(stage.fetch, overrides)


@main.command()
@OVERRIDES
def prepare(overrides: tuple[str, ...]) -> None:
    """Load, validate and repair the raw table; write features and a repair report."""
    from clrpipe.stages import prepare as stage

    _run(stage.run, overrides)


@main.command()
@OVERRIDES
def split(overrides: tuple[str, ...]) -> None:
    """Stratified train/test split and a scaler fitted on the training part only."""
    from clrpipe.stages import split as stage

    _run(stage.run, overrides)


@main.command(name="range-test")
@OVERRIDES
def range_test(overrides: tuple[str, ...]) -> None:
    """LR range test: sweep the LR, pick CLR bounds -> metrics/range_test.json."""
    from clrpipe.stages import range_test as stage

    _run(stage.run, overrides)


@main.command()
@click.argument("variant", type=click.Choice(["baseline", "clr"]))
@OVERRIDES
def train(variant: str, overrides: tuple[str, ...]) -> None:
    """Train the network: `baseline` (constant LR) or `clr` (the `schedule:` section)."""
    from clrpipe.stages import train as stage

    _run(lambda cfg: stage.run(cfg, variant), overrides)


def _run(stage_run, overrides: tuple[str, ...]) -> None:
    try:
        stage_run(config.load(overrides))
    except ClrpipeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


@main.command()
@OVERRIDES
def params(overrides: tuple[str, ...]) -> None:
    """Write params.yaml composed from conf/ (what `dvc exp run` does; `dvc repro` does not)."""
    from omegaconf import OmegaConf

    from clrpipe.outputs import atomic_outputs

    try:
        composed = config.compose(overrides)
    except ClrpipeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    with atomic_outputs(config.PARAMS_FILE) as (tmp,):
        OmegaConf.save(composed, tmp)
    click.echo(f"params: wrote {config.PARAMS_FILE} from {config.CONF_DIR}/config.yaml")

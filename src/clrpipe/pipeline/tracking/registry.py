"""The MLflow model registry: register a serving model, move the `champion` alias, load it.

One registered model per dataset (`registry.name`, `clrpipe-cardio` by default); every training
stage adds a version (tagged with its stage and run). The alias `champion` points at the
version to serve: the `champion` stage puts it on the best validation score, `clrpipe promote`
moves it by hand, `clrpipe gate --promote` on a passing gate. `models:/<name>@champion` is the
URI that `mlflow models serve` and `clrpipe predict` load. Every failure is one `ClrpipeError`
line naming the model, the version or the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clrpipe.errors import ClrpipeError, first_line

__all__ = ["ALIAS", "STAGE_TAG", "champion_uri", "client", "find_version", "model_name",
           "promote", "promote_command", "promote_recorded", "register"]

ALIAS = "champion"
STAGE_TAG = "clrpipe.stage"


def champion_uri(name: str) -> str:
    return f"models:/{name}@{ALIAS}"


def register(client: MlflowClient, name: str, model_uri: str, run_id: str, model_id: str | None,
             stage: str) -> str:
    """A new version of `name` (created if needed) from the logged model; its number."""
    try:
        try:
            client.create_registered_model(name, description="clrpipe serving models: raw "
                                           "rows in, predictions out")
        except MlflowException:  # it exists (made earlier, or by a parallel stage just now)
            client.get_registered_model(name)
        version = client.create_model_version(name, model_uri, run_id=run_id,
                                              tags={STAGE_TAG: stage}, model_id=model_id)
    except MlflowException as err:
        raise ClrpipeError(f"model registry: cannot register '{name}': {first_line(err)}") from None
    return str(version.version)


def find_version(client: MlflowClient, name: str, *, version: str | None = None,
                 run_id: str | None = None) -> str:
    """The version of `name` given by number, or the one the run `run_id` registered."""
    try:
        if version is not None:
            return str(client.get_model_version(name, str(version)).version)
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as err:
        what = f"version {version}" if version is not None else f"run {run_id}"
        raise ClrpipeError(f"model registry: no {what} of '{name}' ({first_line(err)})") from None
    if not found:
        raise ClrpipeError(f"model registry: run {run_id} registered no version of '{name}'")
    return str(max(int(v.version) for v in found))


def promote(client: MlflowClient, name: str, version: str) -> str | None:
    """Point `champion` at `version` of `name`; the version it pointed at before (or None)."""
    try:
        before = client.get_model_version_by_alias(name, ALIAS).version
    except MlflowException:
        before = None
    try:
        client.get_model_version(name, str(version))
        client.set_registered_model_alias(name, ALIAS, str(version))
    except MlflowException as err:
        raise ClrpipeError(f"model registry: cannot set {name}@{ALIAS} to version {version} "
                           f"({first_line(err)})") from None
    return None if before is None else str(before)


def client(overrides: tuple[str, ...] = ()) -> MlflowClient:
    """A client on the configured store (`tracking.uri`, or $MLFLOW_TRACKING_URI)."""
    from clrpipe.pipeline import config
    from clrpipe.pipeline.params import TrackingParams
    from clrpipe.pipeline.tracking import runs

    cfg = config.load(overrides)
    config.validated(cfg)
    return MlflowClient(runs.store_uri(config.section(cfg, "tracking", TrackingParams).uri))


def model_name(overrides: tuple[str, ...] = ()) -> str:
    """`registry.name` with `{dataset}` filled from the split's `dataset.json`."""
    from clrpipe.pipeline import config
    from clrpipe.pipeline.data.tasks import Dataset
    from clrpipe.pipeline.params import RegistryParams, SplitDir

    cfg = config.load(overrides)
    name = config.section(cfg, "registry", RegistryParams)
    if "{dataset}" not in name.name:
        return name.name
    split = config.section(cfg, "split", SplitDir)
    return name.model_name(Dataset.read(split.dir).name)


def promote_command(overrides: tuple[str, ...], version: str | None, run_id: str | None,
                    name: str | None) -> None:
    """`clrpipe promote`: the alias on a version given by number or by the run that made it."""
    if (version is None) == (run_id is None):
        raise ClrpipeError("promote: give --version N or --run RUN_ID (one of them)")
    name = name or model_name(overrides)
    store = client(overrides)
    chosen = find_version(store, name, version=version, run_id=run_id)
    before = promote(store, name, chosen)
    click.echo(f"promote: {champion_uri(name)} = version {chosen} (was "
               f"{'none' if before is None else 'version ' + before})")


def promote_recorded(path: Path) -> None:
    """`clrpipe gate --promote`: the alias on the version `champion.json` recorded."""
    try:
        found = json.loads(path.read_text())
        name, version = found["registered_model"], found["model_version"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ClrpipeError(f"{path}: no registered model and version ({first_line(err)}); run "
                           "the champion stage with tracking enabled first") from None
    if name is None or version is None:
        raise ClrpipeError(f"{path}: no registered version to promote (tracking was off)")
    before = promote(client(), name, str(version))
    click.echo(f"gate: promoted {champion_uri(name)} = version {version} (was "
               f"{'none' if before is None else 'version ' + before})")

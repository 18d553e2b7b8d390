"""`prepare` stage: raw CSV -> validated, repaired features (parquet) + repair report (JSON)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import click
from omegaconf import DictConfig

from clrpipe import config, data
from clrpipe.errors import ClrpipeError
from clrpipe.outputs import atomic_outputs

KAGGLE_PAGE = "https://www.kaggle.com/datasets/{dataset}"


class DataParams(config.Section):
    """`data:` where the raw table lives, where to fetch it, and the repair limits."""

    raw: Path
    kaggle_dataset: str
    kaggle_file: str
    sha256: str
    limits: data.Limits = data.Limits()


class PrepareParams(config.Section):
    """`prepare:` where the features and the repair report go."""

    output: Path
    report: Path


def run(cfg: DictConfig) -> dict:
    """Read (or fetch) the raw table, prepare it, and write the features and the report."""
    source = config.section(cfg, "data", DataParams)
    params = config.section(cfg, "prepare", PrepareParams)
    refuse_folder(source)
    if not source.raw.is_file():
        fetch_raw(source)
    raw = read_raw(source.raw)
    features, report, notes = data.prepare(raw, str(source.raw), source.limits)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    report = {"source": str(source.raw), "sha256": hashlib.sha256(raw).hexdigest(), **report}
    with atomic_outputs(params.output, params.report) as (tmp_output, tmp_report):
        features.to_parquet(tmp_output, index=False)
        tmp_report.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(
        f"prepare: {report['rows_in']} rows in, {report['rows_out']} kept, "
        f"{report['rows_dropped']} dropped -> {params.output}, {params.report}"
    )
    return report


LOCAL_COPY_ENV = "CLRPIPE_CARDIO_CSV"


def fetch(cfg: DictConfig) -> Path:
    """`fetch` stage: make sure the raw table is present, downloading it when it is not.

    A local copy named by $CLRPIPE_CARDIO_CSV is used instead of Kaggle when set (offline
    machines, CI); it must have the same sha256 as a download.
    """
    source = config.section(cfg, "data", DataParams)
    refuse_folder(source)
    if not source.raw.is_file():
        local = os.environ.get(LOCAL_COPY_ENV)
        fetch_raw(source, download=(lambda _: Path(local)) if local else kaggle_download)
        click.echo(f"fetch: {local or source.kaggle_dataset} -> {source.raw}")
        return source.raw
    digest = hashlib.sha256(read_raw(source.raw)).hexdigest()
    state = "matches" if digest == source.sha256 else "differs from"
    click.echo(f"fetch: {source.raw} present; its sha256 {state} data.sha256")
    return source.raw


def refuse_folder(source: DataParams) -> None:
    """A folder given as data.raw is a mistake to name, not a file to download."""
    if source.raw.is_dir():
        raise ClrpipeError(
            f"{source.raw}: is a folder; data.raw must be the path of the CSV file "
            f"(e.g. data.raw={source.raw / source.kaggle_file})"
        )


def read_raw(path: Path) -> bytes:
    """The raw table's bytes, or one line saying why they cannot be read."""
    try:
        return path.read_bytes()
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise ClrpipeError(f"{path}: cannot read it ({reason})") from None


def kaggle_download(dataset: str) -> Path:
    """Download (or reuse kagglehub's cache of) a Kaggle dataset; return its folder."""
    import kagglehub

    return Path(kagglehub.dataset_download(dataset))


def fetch_raw(source: DataParams, download=kaggle_download) -> None:
    """Download the table and check its sha256, or explain where to put it."""
    where = (
        f"{source.raw}: not found and not downloadable ({{reason}}); download "
        f"{source.kaggle_file} from {KAGGLE_PAGE.format(dataset=source.kaggle_dataset)} "
        f"and put it at {source.raw.resolve()}"
    )
    try:
        folder = download(source.kaggle_dataset)  # a folder, or the file itself
    except Exception as err:  # kagglehub raises many types: offline, no credentials, 404
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClrpipeError(where.format(reason=reason)) from None
    downloaded = folder if folder.is_file() else folder / source.kaggle_file
    if not downloaded.is_file():
        raise ClrpipeError(where.format(reason=f"the download has no {source.kaggle_file}"))
    digest = hashlib.sha256(downloaded.read_bytes()).hexdigest()
    if digest != source.sha256:
        raise ClrpipeError(
            f"{downloaded}: sha256 {digest} does not match data.sha256 {source.sha256}; "
            "refusing to use it"
        )
    with atomic_outputs(source.raw) as (tmp,):
        shutil.copyfile(downloaded, tmp)

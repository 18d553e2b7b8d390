"""`fetch` stage: make sure the raw table is at `data.raw`.

`data: cardio`: copied from $CLRPIPE_CARDIO_CSV when set (offline machines, CI) or downloaded
from Kaggle, and checked against `data.sha256`. `data: table`: imported from `data.source` (a
path outside the project or an http(s) URL; `data.sources`) when set, checked against
`data.sha256` when that is set; otherwise the user's file must be at `data.raw`.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from omegaconf import DictConfig

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import config
from clrpipe.pipeline.data import download, sources
from clrpipe.pipeline.params import CardioData, DataParams, Reads

__all__ = ["STAGES", "FetchReads", "run"]


class FetchReads(Reads):
    """What `fetch` reads from params.yaml."""

    data: DataParams


STAGES = {"fetch": FetchReads}


def run(cfg: DictConfig) -> Path:
    """Fetch the cardio table when it is missing; say whether a present one matches."""
    source = config.reads(cfg, FetchReads).data
    if not isinstance(source, CardioData):
        download.refuse_folder(source.raw, "your_table.csv")
        if source.source is not None:
            digest = sources.import_table(source.source, source.raw, source.sha256)
            click.echo(f"fetch: {source.source} -> {source.raw} (sha256 {digest})")
            return source.raw
        if not source.raw.is_file():
            raise ClrpipeError(f"{source.raw}: not found; put your table there or set data.raw")
        click.echo(f"fetch: {source.raw} present (data: table; nothing to download)")
        return source.raw
    download.refuse_folder(source.raw, source.kaggle_file)
    if not source.raw.is_file():
        download.fetch_raw(source, download.local_or_kaggle())
        where = os.environ.get(download.LOCAL_COPY_ENV) or source.kaggle_dataset
        click.echo(f"fetch: {where} -> {source.raw}")
        return source.raw
    state = "matches" if download.sha256_of(source.raw) == source.sha256 else "differs from"
    click.echo(f"fetch: {source.raw} present; its sha256 {state} data.sha256")
    return source.raw

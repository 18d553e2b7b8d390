"""`fetch` stage: make sure the raw table is at `data.raw`, copying or downloading it if not.

A local copy named by $CLRPIPE_CARDIO_CSV is used instead of Kaggle when set (offline
machines, CI); it must have the same sha256 as a download.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from omegaconf import DictConfig

from clrpipe import config, download
from clrpipe.params import DataSource, Reads


class FetchReads(Reads):
    """What `fetch` reads from params.yaml."""

    data: DataSource


STAGES = {"fetch": FetchReads}


def run(cfg: DictConfig) -> Path:
    """Fetch the raw table when it is missing; say whether a present one matches its sha256."""
    source = config.reads(cfg, FetchReads).data
    download.refuse_folder(source.raw, source.kaggle_file)
    if not source.raw.is_file():
        download.fetch_raw(source, download.local_or_kaggle())
        where = os.environ.get(download.LOCAL_COPY_ENV) or source.kaggle_dataset
        click.echo(f"fetch: {where} -> {source.raw}")
        return source.raw
    state = "matches" if download.sha256_of(source.raw) == source.sha256 else "differs from"
    click.echo(f"fetch: {source.raw} present; its sha256 {state} data.sha256")
    return source.raw

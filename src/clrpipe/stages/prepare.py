"""`prepare` stage: raw CSV -> validated, repaired features (parquet) + repair report (JSON)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
from omegaconf import DictConfig

from clrpipe import config, data, download
from clrpipe.outputs import atomic_outputs
from clrpipe.params import Limits, PrepareParams, Reads


class _Data(Reads):
    raw: Path
    kaggle_file: str
    limits: Limits


class PrepareReads(Reads):
    """What `prepare` reads from params.yaml."""

    data: _Data
    prepare: PrepareParams


STAGES = {"prepare": PrepareReads}


def run(cfg: DictConfig) -> dict:
    """Read the raw table, prepare it, and write the features and the report."""
    p = config.reads(cfg, PrepareReads)
    source, params = p.data, p.prepare
    raw = download.read_raw(source.raw, source.kaggle_file)
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

"""`prepare` stage: raw table -> validated, cleaned table (parquet) + report (JSON).

`data: cardio`: the Kaggle table validated, repaired and featurized (`data.cardio`).
`data: table`: a user's CSV/TSV/Parquet validated against a schema built from its columns,
ids and ignored columns dropped, duplicates and rows without a target dropped, the task and
column kinds inferred where not declared (`data.tables`); the schema travels in the parquet's
metadata to `split`, which fits the encoding on the training part.
"""

from __future__ import annotations

import hashlib
import json

import click
from omegaconf import DictConfig

from clrpipe.pipeline import config
from clrpipe.pipeline.data import cardio, download, tables
from clrpipe.pipeline.outputs import atomic_outputs
from clrpipe.pipeline.params import CardioData, DataParams, PrepareParams, Reads
from clrpipe.pipeline.tracking import runs

__all__ = ["STAGES", "PrepareReads", "run"]


class PrepareReads(Reads):
    """What `prepare` reads from params.yaml."""

    data: DataParams
    prepare: PrepareParams


STAGES = {"prepare": PrepareReads}


def run(cfg: DictConfig) -> dict:
    """Read the raw table, prepare it, and write the cleaned table and the report."""
    p = config.reads(cfg, PrepareReads)
    source, params = p.data, p.prepare
    name = source.kaggle_file if isinstance(source, CardioData) else source.raw.name
    raw = download.read_raw(source.raw, name)
    if isinstance(source, CardioData):
        prepared, report, notes = cardio.prepare(raw, str(source.raw), source.limits)
    else:
        frame = tables.read_table(raw, str(source.raw), source.format)
        prepared, schema, report, notes = tables.prepare_table(frame, source, str(source.raw))
        prepared.attrs[tables.SCHEMA_KEY] = schema.to_dict()
        report.setdefault("rows_dropped", report["rows_in"] - report["rows_out"])
    for note in notes:
        click.echo(f"note: {note}", err=True)
    report = {"source": str(source.raw), "sha256": hashlib.sha256(raw).hexdigest(), **report}
    logged, renamed = tables.mlflow_keys(report)  # column names as MLflow metric names
    if renamed:
        report["mlflow_names"] = logged["mlflow_names"] = renamed
    with runs.stage_run(cfg, "prepare") as tracked, \
            atomic_outputs(params.output, params.report) as (tmp_output, tmp_report):
        tracked.log_report(logged, params.report.name)
        prepared.to_parquet(tmp_output, index=False)
        tmp_report.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(
        f"prepare: {report['rows_in']} rows in, {report['rows_out']} kept, "
        f"{report['rows_dropped']} dropped -> {params.output}, {params.report}"
    )
    return report

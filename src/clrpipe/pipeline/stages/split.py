"""`split` stage: train/test split (stratified for classification), then the preprocessing
fitted on the training part only.

The article scaled the whole table before splitting, which leaks test statistics into training.
`data: cardio`: the features standardized, `scaler.json` (names, means and scales). `data:
table`: imputation, one-hot encoding and scaling fitted on train (`data.tables`), saved as
`preprocessor.joblib`; a classification target becomes class indices, a regression target is
standardized. Both write `train.parquet`, `test.parquet` and `dataset.json` (feature columns,
target, task: what the trainings read).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pandas as pd
from omegaconf import DictConfig
from sklearn.model_selection import train_test_split

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline import config
from clrpipe.pipeline.data import cardio, tables
from clrpipe.pipeline.data.tasks import CARDIO, DATASET_FILE, Dataset, OutputSpec
from clrpipe.pipeline.outputs import atomic_outputs
from clrpipe.pipeline.params import DataParams, Reads, SplitParams, TableData
from clrpipe.pipeline.tracking import runs

__all__ = ["STAGES", "SplitReads", "run"]


class _Prepared(Reads):
    output: Path


class SplitReads(Reads):
    """What `split` reads from params.yaml."""

    data: DataParams
    prepare: _Prepared
    split: SplitParams


STAGES = {"split": SplitReads}


def run(cfg: DictConfig) -> dict:
    """Split the prepared table and write the encoded parts and what they hold."""
    p = config.reads(cfg, SplitReads)
    source, params = p.prepare.output, p.split
    frame = read_prepared(source)
    table = p.data if isinstance(p.data, TableData) else None
    if table is None:
        cardio.check_splittable(frame[cardio.TARGET], params.test_size, str(source))
        strata, schema = frame[cardio.TARGET], None
    else:
        schema = tables.TableSchema.from_dict(frame.attrs[tables.SCHEMA_KEY])
        tables.check_splittable(frame, schema, params.test_size, str(source))
        strata = frame[schema.target] if schema.task != "regression" else None
    train, test = train_test_split(frame, test_size=params.test_size, random_state=params.seed,
                                   stratify=strata)
    out = params.dir
    files = ["train.parquet", "test.parquet", DATASET_FILE,
             "scaler.json" if table is None else "preprocessor.joblib"]
    with runs.stage_run(cfg, "split") as tracked, \
            atomic_outputs(*(out / name for name in files)) as (tmp_train, tmp_test, tmp_spec,
                                                                tmp_fitted):
        if table is None:
            parts, dataset = _cardio(train, test, tmp_fitted)
        else:
            parts, dataset = _table(train, test, schema, table, tmp_fitted)
        for part, tmp in zip(parts, (tmp_train, tmp_test), strict=True):
            part.to_parquet(tmp, index=False)
        tmp_spec.write_text(json.dumps(dataset.to_dict(), indent=2) + "\n")
        summary = {"train_rows": len(train), "test_rows": len(test), "seed": params.seed,
                   "features": len(dataset.features), **dataset.details.get("counts", {})}
        tracked.log_report(summary, "split.json")
        tracked.log_dict(dataset.to_dict(), DATASET_FILE)
    click.echo(f"split: {summary['train_rows']} train / {summary['test_rows']} test, "
               f"{len(dataset.features)} features -> {out}")
    return summary


def _cardio(train: pd.DataFrame, test: pd.DataFrame, tmp_scaler: Path):
    """The 14 cardio features standardized with a scaler fitted on train."""
    parts, scaler = cardio.standardize(train, test)
    tmp_scaler.write_text(json.dumps(scaler, indent=2) + "\n")
    return parts, Dataset(tuple(cardio.FEATURES), cardio.TARGET, CARDIO)


def _table(train, test, schema, table: TableData, tmp_fitted: Path):
    """A user's table encoded by a preprocessor fitted on train; counts of what it did."""
    fitted = tables.Preprocessor.fit(train, schema, table.missing)
    parts, counts = [], {}
    for name, part in (("train", train), ("test", test)):
        x, done = fitted.transform(part)
        encoded = pd.DataFrame(x, columns=fitted.features)
        encoded["target"] = fitted.encode_target(part[schema.target])
        parts.append(encoded)
        counts |= {f"{name}_{key}": sum(value.values()) for key, value in done.items()}
    fitted.save(tmp_fitted)
    output = OutputSpec(schema.task, tuple(schema.classes or ()), fitted.target_mean,
                        fitted.target_std)
    details = {**fitted.describe(), "counts": counts}
    return parts, Dataset(tuple(fitted.features), "target", output, details,
                          table.raw.name.split(".")[0])


def read_prepared(source: Path) -> pd.DataFrame:
    """Read the prepared table, refusing a folder, a missing file or one that is not Parquet."""
    if source.is_dir():
        raise ClrpipeError(f"{source}: is a folder; prepare.output must be the prepared file")
    if not source.is_file():
        raise ClrpipeError(f"{source}: not found; run `clrpipe prepare` first")
    try:
        frame = pd.read_parquet(source)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ClrpipeError(
            f"{source}: not a readable Parquet table ({first_line(err)}); rerun `clrpipe prepare`"
        ) from None
    if tables.SCHEMA_KEY not in frame.attrs:
        missing = [c for c in (*cardio.FEATURES, cardio.TARGET) if c not in frame.columns]
        if missing:
            raise ClrpipeError(f"{source}: missing column '{missing[0]}'; rerun `clrpipe prepare`")
    return frame

"""`split` stage: stratified train/test split and a scaler fitted on the training part only.

The article scaled the whole table before splitting, which leaks test statistics into training.
Outputs: `train.parquet` and `test.parquet` (scaled features + target) and `scaler.json`
(feature names, means and scales, enough to rebuild the scaler without pickles).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pandas as pd
from omegaconf import DictConfig
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from clrpipe import config, data
from clrpipe.errors import ClrpipeError
from clrpipe.outputs import atomic_outputs
from clrpipe.params import Reads, SplitParams


class _Prepared(Reads):
    output: Path


class SplitReads(Reads):
    """What `split` reads from params.yaml."""

    prepare: _Prepared
    split: SplitParams


STAGES = {"split": SplitReads}


def run(cfg: DictConfig) -> dict:
    """Split the prepared table and write the scaled parts and the scaler."""
    p = config.reads(cfg, SplitReads)
    source, params = p.prepare.output, p.split
    if source.is_dir():
        raise ClrpipeError(f"{source}: is a folder; prepare.output must be the prepared file")
    if not source.is_file():
        raise ClrpipeError(f"{source}: not found; run `clrpipe prepare` first")
    frame = read_prepared(source)
    data.check_splittable(frame[data.TARGET], params.test_size, str(source))
    train, test = train_test_split(
        frame, test_size=params.test_size, random_state=params.seed, stratify=frame[data.TARGET]
    )
    features = list(data.FEATURES)
    scaler = StandardScaler().fit(train[features])
    out = params.dir
    paths = [out / "train.parquet", out / "test.parquet", out / "scaler.json"]
    with atomic_outputs(*paths) as (tmp_train, tmp_test, tmp_scaler):
        for part, tmp in ((train, tmp_train), (test, tmp_test)):
            scaled = pd.DataFrame(
                scaler.transform(part[features]).astype("float32"), columns=features
            )
            scaled[data.TARGET] = part[data.TARGET].to_numpy()
            scaled.to_parquet(tmp, index=False)
        scaler_doc = {
            "features": features,
            "mean": scaler.mean_.tolist(),
            "scale": scaler.scale_.tolist(),
        }
        tmp_scaler.write_text(json.dumps(scaler_doc, indent=2) + "\n")
    summary = {"train_rows": len(train), "test_rows": len(test), "seed": params.seed}
    click.echo(f"split: {summary['train_rows']} train / {summary['test_rows']} test -> {out}")
    return summary


def read_prepared(source: Path) -> pd.DataFrame:
    """Read the prepared table, refusing one that is not Parquet or lacks a feature column."""
    try:
        frame = pd.read_parquet(source)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClrpipeError(
            f"{source}: not a readable Parquet table ({first}); rerun `clrpipe prepare`"
        ) from None
    missing = [c for c in (*data.FEATURES, data.TARGET) if c not in frame.columns]
    if missing:
        raise ClrpipeError(f"{source}: missing column '{missing[0]}'; rerun `clrpipe prepare`")
    return frame

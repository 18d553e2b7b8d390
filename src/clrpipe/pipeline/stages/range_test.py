"""`range_test` stage: the LR range test on the real split, giving the CLR bounds.

The `model:` network, initialised from `train.seed` and trained with SGD (`train.momentum`), is
swept over the LR range of `range_test:` (`clrpipe.range_test_runner`) on the training split
minus a stratified held-out slice of `validation_rows` rows (for Smith's accuracy rule). An
`auto` batch size, sweep length or slice is sized from the training rows (`data.sizing`) and
written to the metrics (`auto`) and the run's params.
Outputs, all or none: `metrics/range_test.json` (bounds, spreads, per-method and per-seed
suggestions; `train_clr` reads `base_lr` and `max_lr` when the schedule's are null),
`plots/range_test/sweep.csv` (one row per batch and seed) and `plots/range_test/sweep.png`,
plus the same in the stage's MLflow run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import keras
import pandas as pd
from omegaconf import DictConfig
from sklearn.model_selection import train_test_split

from clrpipe import plots
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import config
from clrpipe.pipeline.data import sizing
from clrpipe.pipeline.outputs import atomic_outputs
from clrpipe.pipeline.params import PARAMS_FILE, ModelParams, RangeTestParams, Reads, SplitDir
from clrpipe.pipeline.tracking import runs
from clrpipe.pipeline.training import loop
from clrpipe.pipeline.training.model import build_model
from clrpipe.pipeline.training.trial import arrays, load_split, stratify
from clrpipe.range_test import RangeTestResult
from clrpipe.range_test_runner import run_range_test

__all__ = ["STAGES", "RangeTestReads", "run"]


class _ClrBatch(Reads):
    batch_size: int


class _Train(Reads):
    seed: int
    momentum: float
    clr: _ClrBatch


class RangeTestReads(Reads):
    """What `range_test` reads from params.yaml."""

    range_test: RangeTestParams
    model: ModelParams
    train: _Train
    split: SplitDir


STAGES = {"range_test": RangeTestReads}
METRICS = Path("metrics/range_test.json")
SWEEP_CSV = Path("plots/range_test/sweep.csv")
SWEEP_PNG = Path("plots/range_test/sweep.png")


def run(cfg: DictConfig) -> dict:
    """Run the range test and write its bounds, per-batch sweep and plot."""
    train_frame, _, dataset = load_split(config.section(cfg, "split", SplitDir).dir)
    rows = len(train_frame)
    cfg, sized = sizing.resolve(cfg, rows, dataset.output.task, len(dataset.output.classes))
    p = config.reads(cfg, RangeTestReads)
    rt = p.range_test
    batch_size = rt.batch_size or p.train.clr.batch_size
    if batch_size > rows // 2:
        key = "range_test.batch_size" if rt.batch_size else "train.clr.batch_size"
        raise ClrpipeError(f"{PARAMS_FILE}: {key}: expected at most half the {rows} training "
                           f"rows, got {batch_size}")
    if rt.validation_rows and not 2 <= rt.validation_rows <= rows - batch_size:
        raise ClrpipeError(
            f"{PARAMS_FILE}: range_test.validation_rows: expected 0 (none) or 2 to "
            f"{rows - batch_size} (training rows minus one batch), got {rt.validation_rows}"
        )
    sweep_frame, x_val, y_val = train_frame, None, None
    if rt.validation_rows:
        sweep_frame, val_frame = train_test_split(
            train_frame, test_size=rt.validation_rows, random_state=p.train.seed,
            stratify=stratify(train_frame, dataset),
        )
        x_val, y_val = arrays(val_frame, dataset)
    x, y = arrays(sweep_frame, dataset)

    with runs.stage_run(cfg, "range_test") as tracked:
        model = build_model(p.model, x.shape[1], p.train.seed, dataset.output)
        optimizer = keras.optimizers.SGD(learning_rate=rt.min_lr, momentum=p.train.momentum)
        loop.compile_model(model, optimizer, output=dataset.output)
        started = time.perf_counter()
        result = run_range_test(model, x, y, rt, batch_size=batch_size, x_val=x_val, y_val=y_val)
        seconds = time.perf_counter() - started
        summary = {**result.to_dict(), "batch_size": batch_size, "sweep_rows": len(sweep_frame),
                   "validation_rows": rt.validation_rows, "seconds": seconds,
                   **sizing.auto_report(sized, "range_test.", "train.clr.batch_size")}
        tracked.log_metrics(_metrics(result, seconds))
        for analysis in result.analyses:
            steps = [i for i, v in enumerate(analysis.smoothed) if math.isfinite(v)]
            tracked.log_series(f"smoothed_loss_seed_{analysis.curve.seed}", steps,
                               [float(analysis.smoothed[i]) for i in steps])
        tracked.log_dict(summary, METRICS.name)
        png = plots.png_bytes(plots.range_test_figure(result, batch_size))
        with atomic_outputs(METRICS, SWEEP_CSV, SWEEP_PNG) as (metrics_tmp, csv_tmp, png_tmp):
            metrics_tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
            pd.DataFrame(result.rows()).to_csv(csv_tmp, index=False)
            png_tmp.write_bytes(png)
            tracked.log_files({SWEEP_PNG: png_tmp}, "plots")
    flags = [f for f in ("methods_disagree", "seeds_disagree", "no_divergence") if summary[f]]
    click.echo(
        f"range_test: base_lr {result.base_lr:.3g}, max_lr {result.max_lr:.3g} "
        f"(rule {result.rule}, {'confident' if result.confident else 'NOT confident: '}"
        f"{', '.join(flags)}) from {len(result.analyses)} seeds in {seconds:.1f} s -> "
        f"{METRICS}, {SWEEP_CSV.parent}/"
    )
    return summary


def _metrics(result: RangeTestResult, seconds: float) -> dict[str, float]:
    """Scalar MLflow metrics: bounds, non-null per-method suggestions, flags and timing."""
    metrics = {"base_lr": result.base_lr, "max_lr": result.max_lr}
    metrics |= {f"suggestion_{m}": v for m, v in result.suggestions.items() if v is not None}
    divergence = result.to_dict()["divergence_lr"]
    if divergence is not None:
        metrics["divergence_lr"] = divergence
    return metrics | {
        "base_lr_spread": result.base_spread.ratio,
        "max_lr_spread": result.max_spread.ratio,
        "method_ratio": result.method_ratio,
        "confident": float(result.confident),
        "seconds": seconds,
    }


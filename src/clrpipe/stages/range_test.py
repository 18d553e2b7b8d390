"""`range_test` stage: the LR range test on the real split, giving the CLR bounds.

The `model:` network, initialised from `train.seed` and trained with SGD (`train.momentum`), is
swept over the LR range of the `range_test:` section (`clrpipe.range_test_runner`) on the
training split minus a stratified held-out slice of `validation_rows` rows (for Smith's
accuracy rule). Outputs, all or none: `metrics/range_test.json` (bounds, spreads, per-method
and per-seed suggestions; `train_clr` reads its `base_lr` and `max_lr` when the schedule's
bounds are null), `plots/range_test/sweep.csv` (one row per batch and seed) and
`plots/range_test/sweep.png`, plus the same in the stage's MLflow run.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import time
from pathlib import Path

import click
import keras
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from pydantic import Field
from sklearn.model_selection import train_test_split

from clrpipe import config, data, tracking, training
from clrpipe.errors import ClrpipeError
from clrpipe.model import ModelParams, build_model
from clrpipe.outputs import atomic_outputs
from clrpipe.range_test import RangeTestConfig, RangeTestResult, validate_config
from clrpipe.range_test_runner import run_range_test
from clrpipe.stages.split import SplitParams
from clrpipe.stages.train import TrainParams, arrays, load_split

SECTION = "range_test"
METRICS = Path("metrics/range_test.json")
SWEEP_CSV = Path("plots/range_test/sweep.csv")
SWEEP_PNG = Path("plots/range_test/sweep.png")


class StageParams(config.Section):
    """The stage-only keys of `range_test:`; the rest go to `validate_config`."""

    validation_rows: int = Field(default=2000, ge=0)
    batch_size: int | None = Field(default=None, gt=0)


STAGE_KEYS = tuple(StageParams.model_fields)


def read_section(cfg: DictConfig) -> tuple[StageParams, RangeTestConfig]:
    """Split `range_test:` into the stage's keys and the analysis config; fail naming the key."""
    raw = OmegaConf.to_container(config.section_node(cfg, SECTION), resolve=True)
    stage_part = {k: v for k, v in raw.items() if k in STAGE_KEYS}
    params = config.section(OmegaConf.create({SECTION: stage_part}), SECTION, StageParams)
    try:
        analysis = validate_config({k: v for k, v in raw.items() if k not in STAGE_KEYS}, SECTION)
    except ClrpipeError as err:
        raise ClrpipeError(f"{config.PARAMS_FILE}: {err}") from None
    return params, analysis


def run(cfg: DictConfig) -> dict:
    """Run the range test and write its bounds, per-batch sweep and plot."""
    params, rt_config = read_section(cfg)
    train_params = config.section(cfg, "train", TrainParams)
    model_params = config.section(cfg, "model", ModelParams)
    split_dir = config.section(cfg, "split", SplitParams).dir
    batch_size = params.batch_size or train_params.clr.batch_size
    train_frame, _ = load_split(split_dir)
    rows = len(train_frame)
    if batch_size > rows // 2:
        key = "range_test.batch_size" if params.batch_size else "train.clr.batch_size"
        raise ClrpipeError(
            f"{config.PARAMS_FILE}: {key}: expected at most half the {rows} training rows, "
            f"got {batch_size}"
        )
    if params.validation_rows and not 2 <= params.validation_rows <= rows - batch_size:
        raise ClrpipeError(
            f"{config.PARAMS_FILE}: {SECTION}.validation_rows: expected 0 (none) or 2 to "
            f"{rows - batch_size} (training rows minus one batch), got {params.validation_rows}"
        )
    if params.validation_rows:
        sweep_frame, val_frame = train_test_split(
            train_frame,
            test_size=params.validation_rows,
            random_state=train_params.seed,
            stratify=train_frame[data.TARGET],
        )
        x_val, y_val = arrays(val_frame)
    else:
        sweep_frame, x_val, y_val = train_frame, None, None
    x, y = arrays(sweep_frame)

    with tracking.stage_run(cfg, SECTION) as tracked:
        model = build_model(model_params, x.shape[1], train_params.seed)
        optimizer = keras.optimizers.SGD(
            learning_rate=rt_config.min_lr, momentum=train_params.momentum
        )
        training.compile_model(model, optimizer)
        started = time.perf_counter()
        result = run_range_test(
            model, x, y, rt_config, batch_size=batch_size, x_val=x_val, y_val=y_val
        )
        seconds = time.perf_counter() - started
        summary = {
            **result.to_dict(),
            "batch_size": batch_size,
            "sweep_rows": len(sweep_frame),
            "validation_rows": params.validation_rows,
            "seconds": seconds,
        }
        sweep = pd.DataFrame(result.rows())
        png = _png_bytes(result, batch_size)

        tracked.log_metrics(_metrics(result, seconds))
        for analysis in result.analyses:
            steps, values = _finite_series(analysis.smoothed)
            tracked.log_series(f"smoothed_loss_seed_{analysis.curve.seed}", steps, values)
        tracked.log_dict(summary, METRICS.name)
        with atomic_outputs(METRICS, SWEEP_CSV, SWEEP_PNG) as (metrics_tmp, csv_tmp, png_tmp):
            metrics_tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
            sweep.to_csv(csv_tmp, index=False)
            png_tmp.write_bytes(png)
            with tempfile.TemporaryDirectory() as folder:
                named = Path(folder) / SWEEP_PNG.name
                named.write_bytes(png)
                tracked.log_artifact(named, "plots")
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
    for method, value in result.method_medians.items():
        if value is not None:
            metrics[f"suggestion_{method}"] = value
    found = result.to_dict()
    if found["divergence_lr"] is not None:
        metrics["divergence_lr"] = found["divergence_lr"]
    metrics.update(
        base_lr_spread=result.base_spread.ratio,
        max_lr_spread=result.max_spread.ratio,
        method_ratio=result.method_ratio,
        confident=float(result.confident),
        seconds=seconds,
    )
    return metrics


def _finite_series(values: np.ndarray) -> tuple[list[int], list[float]]:
    steps = [i for i, v in enumerate(values) if math.isfinite(v)]
    return steps, [float(values[i]) for i in steps]


def _png_bytes(result: RangeTestResult, batch_size: int) -> bytes:
    """Smoothed loss (and held-out accuracy) against LR, one line per seed, bounds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_acc = any(
        a.curve.val_accuracy is not None and a.curve.val_accuracy.size for a in result.analyses
    )
    figure, axes = plt.subplots(
        1, 2 if with_acc else 1, figsize=(11 if with_acc else 7, 4), squeeze=False
    )
    loss_ax = axes[0][0]
    for analysis in result.analyses:
        curve = analysis.curve
        (line,) = loss_ax.plot(curve.lrs, analysis.smoothed, label=f"seed {curve.seed}")
        loss_ax.plot(curve.lrs, curve.losses, color=line.get_color(), alpha=0.15, lw=0.8)
        if with_acc and curve.val_accuracy is not None:
            axes[0][1].plot(
                curve.lrs[curve.val_steps],
                curve.val_accuracy,
                color=line.get_color(),
                label=f"seed {curve.seed}",
            )
    finite = np.concatenate([a.smoothed[np.isfinite(a.smoothed)] for a in result.analyses])
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        loss_ax.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low))
    for ax, ylabel in zip(
        axes[0], ("loss (smoothed; raw faint)", "held-out accuracy"), strict=False
    ):
        ax.set_xscale("log")
        for value, name, style in (
            (result.base_lr, "base_lr", "--"),
            (result.max_lr, "max_lr", "-"),
        ):
            ax.axvline(value, color="black", ls=style, lw=1, label=f"{name} {value:.3g}")
        ax.set(xlabel="learning rate", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    loss_ax.set_title(f"LR range test (batch {batch_size}, rule {result.rule})")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()

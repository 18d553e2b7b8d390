"""`train` stage: the article's network with a constant LR (`baseline`) or CLR (`clr`).

Both variants are one trial (`training.trial.train_trial`): a schedule (constant or cyclical) on
SGD, the fast `fit`, a test evaluation. Outputs, all or none: `models/train_<variant>.keras`,
`metrics/train_<variant>.json`, `plots/train_<variant>/{history,lr}.csv` for DVC, and the same
plus the model, the datasets and PNG curves in the stage's MLflow run.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from clrpipe import plots, schedules
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import config
from clrpipe.pipeline.data import sizing
from clrpipe.pipeline.outputs import atomic_outputs
from clrpipe.pipeline.params import (
    PARAMS_FILE,
    ConstantSchedule,
    DataParams,
    ModelParams,
    Reads,
    RegistryName,
    RunParams,
    ScheduleParams,
    SplitDir,
    TrainCommon,
)
from clrpipe.pipeline.tracking import runs, serving
from clrpipe.pipeline.training import legacy, trial

__all__ = ["STAGES", "BaselineReads", "ClrReads", "run"]


class _BaselineTrain(TrainCommon):
    baseline: RunParams


class _ClrTrain(TrainCommon):
    clr: RunParams


class BaselineReads(Reads):
    """What `train baseline` reads from params.yaml."""

    model: ModelParams
    train: _BaselineTrain
    split: SplitDir
    data: DataParams  # the serving model's raw-row checks (cardio's repair limits)
    registry: RegistryName


class ClrReads(BaselineReads):
    """What `train clr` reads from params.yaml."""

    train: _ClrTrain
    schedule: ScheduleParams


STAGES = {"train_baseline": BaselineReads, "train_clr": ClrReads}
VARIANTS = ("baseline", "clr")


def run(cfg: DictConfig, variant: str) -> dict:
    """Train one variant and write its model, metrics and curves."""
    if variant not in VARIANTS:
        raise ClrpipeError(f"train: unknown variant '{variant}'; expected one of {VARIANTS}")
    stage = f"train_{variant}"
    train_frame, test_frame, dataset = trial.load_split(config.section(cfg, "split",
                                                                      SplitDir).dir)
    cfg, sized = sizing.resolve(cfg, len(train_frame), dataset.output.task,
                                len(dataset.output.classes))
    p = config.reads(cfg, STAGES[stage])
    run_params: RunParams = getattr(p.train, variant)
    if variant == "baseline":
        if run_params.learning_rate is None:
            raise ClrpipeError(f"{PARAMS_FILE}: train.baseline.learning_rate: required, got null")
        spec = ConstantSchedule(learning_rate=run_params.learning_rate)
    else:
        spec = p.schedule
    split = trial.split_arrays(train_frame, test_frame, dataset, p.train.validation_fraction,
                         p.train.seed)
    bounds = trial.range_test_bounds()
    # Checked before an MLflow run opens: the schedule's bounds, and the tfa environment.
    schedules.build_schedule(spec, len(split.x), run_params.batch_size, bounds=bounds,
                             epochs=run_params.epochs)
    trial.refuse_what_tfa_cannot(p.train, spec, p.model, dataset.output)
    if spec.backend == "tfa":
        legacy.legacy_dir(config.project_root())

    with runs.stage_run(cfg, stage) as tracked:
        def on_epoch(epoch, logs, seconds):
            tracked.log_metrics({**logs, "epoch_seconds": seconds}, step=epoch, buffered=True)

        done = trial.train_trial(p.model, p.train, spec, epochs=run_params.epochs,
                            batch_size=run_params.batch_size, seed=p.train.seed, split=split,
                            bounds=bounds, on_epoch=on_epoch)
        history, score = done.history, dataset.output.score
        metrics = {
            **{f"test_{name}": value for name, value in done.test.items()},
            f"train_{score}": history.epochs[score][-1],
            f"final_val_{score}": history.epochs[f"val_{score}"][-1],
            "epochs": run_params.epochs,
            "train_seconds": done.seconds,
            "epoch_seconds_median": float(np.median(history.epoch_seconds)),
        }
        tracked.log_metrics(metrics)
        # what `auto` stood for among this stage's keys (the run's params hold them too)
        metrics |= sizing.auto_report(sized, f"train.{variant}.",
                                      *(["schedule."] if variant == "clr" else []))
        tracked.set_tag("clrpipe.backend", done.backend["backend"])
        metrics.update(done.backend)
        tracked.log_series("learning_rate", history.lr_steps, history.lr_values)
        outputs = {
            "model": Path("models") / f"{stage}.keras",
            "metrics": Path("metrics") / f"{stage}.json",
            "history": Path("plots") / stage / "history.csv",
            "lr": Path("plots") / stage / "lr.csv",
        }
        with atomic_outputs(*outputs.values()) as temps:
            tmp = dict(zip(outputs, temps, strict=True))
            done.model.save(tmp["model"])
            if tracked.active:  # the pyfunc taking raw rows, registered
                metrics.update(serving.log_serving_model(
                    tmp["model"], serving.fitted_preprocessing(p.split.dir, p.data),
                    p.registry.model_name(dataset.name), dataset.name, stage))
            tmp["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
            pd.DataFrame(history.epochs).assign(
                epoch=range(1, run_params.epochs + 1), seconds=history.epoch_seconds
            ).to_csv(tmp["history"], index=False)
            pd.DataFrame({"step": history.lr_steps, "lr": history.lr_values}).to_csv(
                tmp["lr"], index=False
            )
            tracked.log_keras_model(done.model, split.x[:5], list(dataset.features))
            tracked.log_datasets({"training": train_frame, "testing": test_frame}, dataset.name,
                                 dataset.target)
            tracked.log_figures(plots.training_figures(history, stage, score), "plots")
    click.echo(
        f"{stage}: test {score} {metrics[f'test_{score}']:.4f} after {run_params.epochs} "
        f"epochs in {done.seconds:.1f} s -> {outputs['model']}, {outputs['metrics']}"
    )
    return metrics

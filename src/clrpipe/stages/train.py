"""`train` stage: the article's network with a constant LR (`baseline`) or CLR (`clr`).

Both variants are one code path: a schedule (constant or cyclical) on SGD, the fast `fit`, a test
evaluation, then the outputs: `models/train_<variant>.keras`, `metrics/train_<variant>.json`,
`plots/train_<variant>/{history,lr}.csv` for DVC, and the same plus the model and PNG curves in
the stage's MLflow run. Nothing is written unless the whole stage succeeds.

One trial (model, schedule, fit, test evaluation) is `train_trial`, shared with the `compare`
stage, which runs many of them (methods x seeds) as Ray tasks.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import click
import keras
import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from pydantic import Field
from sklearn.model_selection import train_test_split

from clrpipe import config, data, legacy, plots, schedules, tracking, training
from clrpipe.errors import ClrpipeError
from clrpipe.model import ModelParams, build_model
from clrpipe.outputs import atomic_outputs
from clrpipe.stages.split import SplitParams

VARIANTS = ("baseline", "clr")
RANGE_TEST_METRICS = Path("metrics/range_test.json")


class RunParams(config.Section):
    """`train.baseline:` / `train.clr:` epochs, batch size (and the baseline's constant LR)."""

    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    learning_rate: float | None = Field(default=None, gt=0)


class TrainParams(config.Section):
    """`train:` settings shared by both training stages."""

    seed: int
    momentum: float = Field(ge=0, lt=1)
    validation_fraction: float = Field(gt=0, lt=1)
    steps_per_execution: int = Field(gt=0)
    jit_compile: bool
    reshuffle: bool = False
    baseline: RunParams
    clr: RunParams


def load_split(split_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    parts = []
    for name in ("train", "test"):
        path = split_dir / f"{name}.parquet"
        if not path.is_file():
            raise ClrpipeError(f"{path}: not found; run `clrpipe split` first")
        parts.append(pd.read_parquet(path))
    return parts[0], parts[1]


def arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    features = list(data.FEATURES)
    return frame[features].to_numpy("float32"), frame[data.TARGET].to_numpy("float32")


@dataclass(frozen=True)
class SplitArrays:
    """The split as float32 arrays: fit part, validation slice (per-epoch curves) and test."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def split_arrays(
    train_frame: pd.DataFrame, test_frame: pd.DataFrame, params: TrainParams
) -> SplitArrays:
    """Carve the stratified validation slice (`train.validation_fraction`, `train.seed`)."""
    fit_frame, val_frame = train_test_split(
        train_frame,
        test_size=params.validation_fraction,
        random_state=params.seed,
        stratify=train_frame[data.TARGET],
    )
    (x, y), (x_val, y_val), (x_test, y_test) = map(arrays, (fit_frame, val_frame, test_frame))
    return SplitArrays(x, y, x_val, y_val, x_test, y_test)


@dataclass
class TrialResult:
    """What one training returns: the model, its history, test metrics and fit seconds."""

    model: keras.Model
    history: training.History
    test: dict[str, float]
    seconds: float
    backend: dict[str, str | float] = field(default_factory=lambda: {"backend": "keras"})


def train_trial(
    model_params: ModelParams,
    params: TrainParams,
    schedule_section: Mapping,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    split: SplitArrays,
    bounds: tuple[float, float] | None = None,
    on_epoch: Callable[[int, dict, float], None] | None = None,
) -> TrialResult:
    """Build the network from `seed`, train it on `schedule_section` (a `schedule:`-style
    mapping, null rates filled from `bounds`) with SGD, and evaluate it on the test set."""
    schedule = schedules.build_schedule(
        schedule_section, len(split.x), batch_size, bounds=bounds, epochs=epochs
    )
    model = build_model(model_params, split.x.shape[1], seed)
    if schedule_section.get("backend") == "tfa":
        _refuse_reshuffle_with_tfa(params)
        return _tfa_trial(model, schedule, model_params, params, epochs=epochs,
                          batch_size=batch_size, seed=seed, split=split, on_epoch=on_epoch)
    optimizer = schedules.build_sgd(schedule, schedule_section)
    if params.momentum and type(optimizer) is keras.optimizers.SGD:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=params.momentum)
    training.compile_model(model, optimizer, params.steps_per_execution, params.jit_compile)
    started = time.perf_counter()
    history = training.fit(
        model, split.x, split.y, epochs=epochs, batch_size=batch_size,
        validation=(split.x_val, split.y_val), on_epoch=on_epoch,
        reshuffle_seed=seed if params.reshuffle else None,
    )
    seconds = time.perf_counter() - started
    test = training.evaluate(model, split.x_test, split.y_test)
    return TrialResult(model, history, test, seconds)


def _refuse_reshuffle_with_tfa(params: TrainParams) -> None:
    if params.reshuffle:
        raise ClrpipeError("train.reshuffle: true is not supported with schedule.backend: tfa "
                           "(tfa trains with Keras 2's own shuffle); set it to false")


def _tfa_trial(model, schedule, model_params, params, *, epochs, batch_size, seed, split, on_epoch):
    """The same trial trained by tfa 0.23 in legacy/.venv from the same initial weights; the
    Keras 3 model gets the trained weights and an optimizer positioned at tfa's last step, so it
    saves, scores and resumes like a model trained here."""
    started = time.perf_counter()
    done = legacy.train_with_tfa(
        schedule, model.get_weights(), units=model_params.units,
        activation=model_params.activation, dropout=model_params.dropout, l2=model_params.l2,
        data={"x": split.x, "y": split.y, "x_val": split.x_val, "y_val": split.y_val,
              "x_test": split.x_test, "y_test": split.y_test},
        epochs=epochs, batch_size=batch_size, momentum=params.momentum, seed=seed,
        project_root=tracking.project_root(),
    )
    seconds = time.perf_counter() - started
    model.set_weights(done.weights)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=params.momentum)
    training.compile_model(model, optimizer, params.steps_per_execution, params.jit_compile)
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(len(done.history.lr_steps))
    if on_epoch is not None:
        for epoch, seconds_of_epoch in enumerate(done.history.epoch_seconds):
            logs = {name: values[epoch] for name, values in done.history.epochs.items()}
            on_epoch(epoch, logs, seconds_of_epoch)
    test = training.evaluate(model, split.x_test, split.y_test)
    backend = {"backend": "tfa", "tensorflow": done.tensorflow,
               "tfa_test_accuracy": done.test["accuracy"]}
    return TrialResult(model, done.history, test, seconds, backend)


def range_test_bounds() -> tuple[float, float] | None:
    """(base_lr, max_lr) from the range-test stage, when it has run."""
    if not RANGE_TEST_METRICS.is_file():
        return None
    found = json.loads(RANGE_TEST_METRICS.read_text())
    return float(found["base_lr"]), float(found["max_lr"])


def variant_schedule(cfg: DictConfig, variant: str, run: RunParams) -> dict:
    """The variant's `schedule:`-style mapping: the baseline's constant LR, or the `schedule:`
    section for CLR."""
    if variant == "baseline":
        if run.learning_rate is None:
            raise ClrpipeError("params.yaml: train.baseline.learning_rate: required, got null")
        return {"policy": "constant", "learning_rate": run.learning_rate}
    return OmegaConf.to_container(config.section_node(cfg, "schedule"), resolve=True)


def run(cfg: DictConfig, variant: str) -> dict:
    """Train one variant and write its model, metrics and curves."""
    if variant not in VARIANTS:
        raise ClrpipeError(f"train: unknown variant '{variant}'; expected one of {VARIANTS}")
    stage = f"train_{variant}"
    params = config.section(cfg, "train", TrainParams)
    run_params: RunParams = getattr(params, variant)
    model_params = config.section(cfg, "model", ModelParams)
    split_dir = config.section(cfg, "split", SplitParams).dir
    train_frame, test_frame = load_split(split_dir)
    split = split_arrays(train_frame, test_frame, params)
    schedule_section = variant_schedule(cfg, variant, run_params)
    bounds = range_test_bounds()
    # Built here only to check it: a bad `schedule:` fails before an MLflow run is opened.
    schedules.build_schedule(schedule_section, len(split.x), run_params.batch_size,
                             bounds=bounds, epochs=run_params.epochs)
    if schedule_section.get("backend") == "tfa":
        _refuse_reshuffle_with_tfa(params)  # both before an MLflow run is opened
        legacy.legacy_dir(tracking.project_root())

    with tracking.stage_run(cfg, stage) as tracked:
        def on_epoch(epoch, logs, seconds):
            tracked.log_metrics({**logs, "epoch_seconds": seconds}, step=epoch, buffered=True)

        trial = train_trial(
            model_params, params, schedule_section, epochs=run_params.epochs,
            batch_size=run_params.batch_size, seed=params.seed, split=split,
            bounds=bounds, on_epoch=on_epoch,
        )
        model, history, test, seconds = trial.model, trial.history, trial.test, trial.seconds
        metrics = {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "train_accuracy": history.epochs["accuracy"][-1],
            "final_val_accuracy": history.epochs["val_accuracy"][-1],
            "epochs": run_params.epochs,
            "train_seconds": seconds,
            "epoch_seconds_median": float(np.median(history.epoch_seconds)),
        }
        tracked.log_metrics(metrics)
        tracked.set_tag("clrpipe.backend", trial.backend["backend"])
        metrics.update(trial.backend)
        tracked.log_series("learning_rate", history.lr_steps, history.lr_values)
        outputs = {
            "model": Path("models") / f"{stage}.keras",
            "metrics": Path("metrics") / f"{stage}.json",
            "history": Path("plots") / stage / "history.csv",
            "lr": Path("plots") / stage / "lr.csv",
        }
        with atomic_outputs(*outputs.values()) as temps:
            tmp = dict(zip(outputs, temps, strict=True))
            model_file = tmp["model"].with_suffix(".keras")
            model.save(model_file)
            model_file.replace(tmp["model"])
            tmp["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
            history_frame = pd.DataFrame(history.epochs).assign(
                epoch=range(1, run_params.epochs + 1), seconds=history.epoch_seconds
            )
            history_frame.to_csv(tmp["history"], index=False)
            pd.DataFrame({"step": history.lr_steps, "lr": history.lr_values}).to_csv(
                tmp["lr"], index=False
            )
            _log_model_and_plots(tracked, model, split.x, train_frame, test_frame, history, stage)
    click.echo(
        f"{stage}: test accuracy {metrics['test_accuracy']:.4f} after {run_params.epochs} "
        f"epochs in {seconds:.1f} s -> {outputs['model']}, {outputs['metrics']}"
    )
    return metrics


def _log_model_and_plots(tracked, model, x, train_frame, test_frame, history, stage) -> None:
    """The model (signature + input example), datasets and PNG curves, into the stage's run."""
    if not tracked.active:
        return
    from mlflow.models import infer_signature

    example = x[:5]
    signature = infer_signature(example, keras.ops.convert_to_numpy(model(example)))
    mlflow.keras.log_model(model, name="model", signature=signature)
    tracked.log_dict(
        {"columns": list(data.FEATURES), "data": example.tolist()}, "model/input_example.json"
    )
    for frame, context in ((train_frame, "training"), (test_frame, "testing")):
        mlflow.log_input(_dataset(frame, f"cardio_{context}"), context=context)
    with tempfile.TemporaryDirectory() as folder:
        for name, figure in plots.training_figures(history, stage).items():
            figure.savefig(Path(folder) / f"{name}.png", dpi=110)
        tracked.log_artifacts(Path(folder), "plots")


def _dataset(frame: pd.DataFrame, name: str):
    """`mlflow.data.from_pandas`, with its schema inferred from the first rows when no value is
    missing: MLflow tests every value in Python to mark columns required (0.4 s for the training
    split), and with nothing missing the first rows give the same schema."""
    from mlflow.models import infer_signature

    dataset = mlflow.data.from_pandas(frame, targets=data.TARGET, name=name)
    if not frame.isna().to_numpy().any():
        dataset.schema = infer_signature(frame.head(100)).inputs
    return dataset

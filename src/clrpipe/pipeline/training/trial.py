"""One trial: build the network from a seed, train it on a schedule, evaluate it on the test set.

The unit every stage reuses: `train_baseline` and `train_clr` run one trial, `compare` runs many
(methods x seeds, as Ray tasks), and the range test sweeps the same network on the same split.
Also here: reading the split into arrays, carving the validation slice, and reading the range
test's bounds, so each is done one way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from clrpipe import schedules
from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline import config
from clrpipe.pipeline.data.tasks import CARDIO, Dataset, OutputSpec
from clrpipe.pipeline.params import CustomModel, ModelParams, ScheduleParams, TrainCommon
from clrpipe.pipeline.training import legacy, loop
from clrpipe.pipeline.training.model import build_model

__all__ = [
    "RANGE_TEST_METRICS",
    "SplitArrays",
    "TrialResult",
    "arrays",
    "load_split",
    "range_test_bounds",
    "refuse_what_tfa_cannot",
    "split_arrays",
    "stratify",
    "train_trial",
]

RANGE_TEST_METRICS = Path("metrics/range_test.json")


def load_split(split_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, Dataset]:
    """The train and test parts the `split` stage wrote, and what they hold."""
    dataset = Dataset.read(split_dir)
    parts = []
    for name in ("train", "test"):
        path = split_dir / f"{name}.parquet"
        if not path.is_file():
            raise ClrpipeError(f"{path}: not found; run `clrpipe split` first")
        parts.append(pd.read_parquet(path))
    return parts[0], parts[1], dataset


def arrays(frame: pd.DataFrame, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and target (float32; class indices for classification) of a part."""
    return (frame[list(dataset.features)].to_numpy("float32"),
            frame[dataset.target].to_numpy("float32"))


def stratify(frame: pd.DataFrame, dataset: Dataset) -> pd.Series | None:
    """The column a classification split is stratified by (None for regression)."""
    return frame[dataset.target] if dataset.output.classification else None


@dataclass(frozen=True)
class SplitArrays:
    """The split as float32 arrays: fit part, validation slice (per-epoch curves) and test."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    output: OutputSpec = CARDIO

    def head(self, rows: int) -> SplitArrays:
        """The first `rows` rows of every part (a throwaway warm-up trial)."""
        parts = (self.x, self.y, self.x_val, self.y_val, self.x_test, self.y_test)
        return SplitArrays(*(part[:rows] for part in parts), output=self.output)


def split_arrays(
    train_frame: pd.DataFrame, test_frame: pd.DataFrame, dataset: Dataset,
    validation_fraction: float, seed: int,
) -> SplitArrays:
    """Carve the validation slice (`train.validation_fraction`, `train.seed`; stratified for
    classification)."""
    fit_frame, val_frame = train_test_split(
        train_frame, test_size=validation_fraction, random_state=seed,
        stratify=stratify(train_frame, dataset),
    )
    parts = (arrays(frame, dataset) for frame in (fit_frame, val_frame, test_frame))
    (x, y), (x_val, y_val), (x_test, y_test) = parts
    return SplitArrays(x, y, x_val, y_val, x_test, y_test, dataset.output)


def range_test_bounds(path: Path = RANGE_TEST_METRICS) -> tuple[float, float] | None:
    """(base_lr, max_lr) from the range-test stage, when it has run."""
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
        return float(found["base_lr"]), float(found["max_lr"])
    except (ValueError, KeyError, TypeError) as err:
        raise ClrpipeError(
            f"{path}: not a range-test result ({first_line(err)}); rerun `clrpipe range-test`"
        ) from None


@dataclass
class TrialResult:
    """What one training returns: the model, its history, test metrics and fit seconds."""

    model: keras.Model
    history: loop.History
    test: dict[str, float]
    seconds: float
    backend: dict[str, str | float] = field(default_factory=lambda: {"backend": "keras"})


def refuse_what_tfa_cannot(train: TrainCommon, spec: ScheduleParams, model: ModelParams,
                           output: OutputSpec) -> None:
    """The tfa path trains the article's binary MLP with Keras 2's own shuffle: a new order per
    epoch, a user's model or another task cannot be honoured there."""
    if spec.backend != "tfa":
        return
    if train.reshuffle:
        raise ClrpipeError("train.reshuffle: true is not supported with schedule.backend: tfa "
                           "(tfa trains with Keras 2's own shuffle); set it to false")
    if isinstance(model, CustomModel) or output.task != "binary":
        raise ClrpipeError("schedule.backend: tfa trains only the built-in binary MLP (the "
                           "article's); use backend keras")


def train_trial(
    model_params: ModelParams,
    train: TrainCommon,
    spec: ScheduleParams,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    split: SplitArrays,
    bounds: tuple[float, float] | None = None,
    on_epoch: Callable[[int, dict, float], None] | None = None,
    make_optimizer: Callable[[Any, keras.Model], keras.Optimizer] | None = None,
) -> TrialResult:
    """Build the network from `seed`, train it with SGD on the schedule `spec` (null rates
    filled from `bounds`), or with `make_optimizer(schedule, model)`'s optimizer, and evaluate
    it on the test set (under the optimizer's evaluation weights)."""
    schedule = schedules.build_schedule(spec, len(split.x), batch_size, bounds=bounds,
                                        epochs=epochs)
    model = build_model(model_params, split.x.shape[1], seed, split.output)
    if spec.backend == "tfa":
        refuse_what_tfa_cannot(train, spec, model_params, split.output)
        return _tfa_trial(model, schedule, model_params, train, epochs=epochs,
                          batch_size=batch_size, seed=seed, split=split, on_epoch=on_epoch)
    optimizer = (schedules.build_sgd(schedule, spec, momentum=train.momentum)
                 if make_optimizer is None else make_optimizer(schedule, model))
    loop.compile_model(model, optimizer, train.steps_per_execution, train.jit_compile,
                           split.output)
    started = time.perf_counter()
    history = loop.fit(
        model, split.x, split.y, epochs=epochs, batch_size=batch_size,
        validation=(split.x_val, split.y_val), on_epoch=on_epoch,
        reshuffle_seed=seed if train.reshuffle else None,
    )
    seconds = time.perf_counter() - started
    test = loop.evaluate(model, split.x_test, split.y_test, split.output)
    return TrialResult(model, history, test, seconds)


def _tfa_trial(model, schedule, model_params, train, *, epochs, batch_size, seed, split, on_epoch):
    """The same trial trained by tfa 0.23 in legacy/.venv from the same initial weights; the
    Keras 3 model gets the trained weights and an optimizer positioned at tfa's last step, so it
    saves, scores and resumes like a model trained here."""
    started = time.perf_counter()
    done = legacy.train_with_tfa(
        schedule, model.get_weights(), units=model_params.units,
        activation=model_params.activation, dropout=model_params.dropout, l2=model_params.l2,
        data={"x": split.x, "y": split.y, "x_val": split.x_val, "y_val": split.y_val,
              "x_test": split.x_test, "y_test": split.y_test},
        epochs=epochs, batch_size=batch_size, momentum=train.momentum, seed=seed,
        project_root=config.project_root(),
    )
    seconds = time.perf_counter() - started
    model.set_weights(done.weights)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=train.momentum)
    loop.compile_model(model, optimizer, train.steps_per_execution, train.jit_compile)
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(len(done.history.lr_steps))
    if on_epoch is not None:
        for epoch, seconds_of_epoch in enumerate(done.history.epoch_seconds):
            logs = {name: values[epoch] for name, values in done.history.epochs.items()}
            on_epoch(epoch, logs, seconds_of_epoch)
    test = loop.evaluate(model, split.x_test, split.y_test)
    backend = {"backend": "tfa", "tensorflow": done.tensorflow,
               "tfa_test_accuracy": done.test["accuracy"]}
    return TrialResult(model, done.history, test, seconds, backend)

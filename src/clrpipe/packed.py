"""Many small networks trained as one: the seeds of one method packed into a single Keras model.

A study trains the same small network under many methods and seeds; each training alone pays
for its own compiled step, Python loop and tiny matrix products. Packing puts S copies of the
network side by side in one functional model: copy i is `model.build_model(params, n, seeds[i])`
layer for layer (its layers renamed `s<i>_...`, its weights and dropout seed states copied), all
copies read the same input batch (the order `training.fit` draws, shared as it is by separate
trials with `train.reshuffle: false` and one order seed), and the outputs are stacked to shape
(batch, S, units). The loss is the sum of the copies' own losses, so the gradient of copy i's
weights is exactly its own loss's gradient: SGD and Adam (per-variable optimizers) then move each
copy exactly as when it trains alone (tested to 1e-5). Optimizers with a reduction over all
variables (Prodigy) get `group_of`, which names the copy a variable belongs to.

Per-seed metrics are compiled in: `s<i>_loss` and `s<i>_<score>` (accuracy or R²), so
`training.fit`'s epoch logs carry each copy's training and validation (`val_s<i>_...`) scores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np

from clrpipe import training
from clrpipe.errors import ClrpipeError
from clrpipe.model import build_model
from clrpipe.params import BuiltinModel, ModelParams
from clrpipe.tasks import CARDIO, OutputSpec, held_out_metrics

__all__ = [
    "PackedLoss", "PackedResult", "R2", "build_packed", "compile_packed", "group_of",
    "seed_history", "seed_prefix", "split_predictions", "test_metrics", "train_packed",
]


def seed_prefix(index: int) -> str:
    """The layer-name prefix of copy `index`: `s0_`, `s1_`, ..."""
    return f"s{index}_"


def build_packed(params: ModelParams, n_features: int, seeds: Sequence[int],
                 output: OutputSpec = CARDIO) -> keras.Model:
    """One model holding a copy of the `model:` network per seed, each initialised exactly as
    `build_model(params, n_features, seed, output)` would; output shape (batch, S, units)."""
    if not isinstance(params, BuiltinModel):
        raise ClrpipeError("study: packing several seeds into one model needs the built-in MLP "
                           "(model: without _target_)")
    if not seeds:
        raise ClrpipeError("study: expected at least one seed to pack, got none")
    inputs = keras.Input((n_features,), name="features")
    outputs = []
    for index, seed in enumerate(seeds):
        single = build_model(params, n_features, seed, output)
        hidden = inputs
        for layer in single.layers:
            copy = type(layer).from_config({**layer.get_config(),
                                            "name": seed_prefix(index) + layer.name})
            hidden = copy(hidden)
            for source, target in zip(layer.variables, copy.variables, strict=True):
                target.assign(source)
        outputs.append(hidden)
    stacked = keras.layers.Lambda(lambda parts: keras.ops.stack(parts, axis=1),
                                  name="stack")(outputs)
    return keras.Model(inputs, stacked, name=f"packed{len(seeds)}")


def group_of(model: keras.Model) -> Callable[[keras.Variable], int]:
    """`variable -> copy index` for a packed model (by the `s<i>_` prefix of its layer)."""
    owner = {}
    for layer in model.layers:
        head = layer.name.split("_", 1)[0]
        if head.startswith("s") and head[1:].isdigit():
            for variable in layer.variables:
                owner[id(variable)] = int(head[1:])

    def find(variable) -> int:
        return owner[id(variable)]

    return find


class PackedLoss(keras.losses.Loss):
    """Sum over the S copies of the task's per-sample loss, averaged over the batch: the mean of
    each copy's loss, summed, so each copy's gradient is its own."""

    def __init__(self, base: str, copies: int, name: str = "packed_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.base, self.copies = base, copies
        self._fn = keras.losses.get(base)

    def call(self, y_true, y_pred):
        return sum(_per_sample(self._fn, y_true, y_pred[:, i]) for i in range(self.copies))

    def get_config(self) -> dict:
        return {**super().get_config(), "base": self.base, "copies": self.copies}


def _per_sample(fn, y_true, y_pred_i):
    """One copy's per-sample loss, with the target shaped as Keras shapes it for that copy
    alone (a (batch,) target against a (batch, 1) output becomes (batch, 1))."""
    if y_pred_i.shape[-1] == 1 and len(y_true.shape) == 1:
        y_true = keras.ops.expand_dims(y_true, -1)
    return fn(keras.ops.cast(y_true, y_pred_i.dtype) if y_pred_i.shape[-1] == 1 else y_true,
              y_pred_i)


class R2(keras.metrics.Metric):
    """R² of one copy's prediction over all batches seen (sums of y, y², squared error)."""

    def __init__(self, index: int, name: str = "r2", **kwargs):
        super().__init__(name=name, **kwargs)
        self.index = index
        self.total = self.add_variable((), "zeros", name="total")
        self.squares = self.add_variable((), "zeros", name="squares")
        self.errors = self.add_variable((), "zeros", name="errors")
        self.count = self.add_variable((), "zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = keras.ops.reshape(keras.ops.cast(y_true, "float32"), (-1,))
        guess = keras.ops.reshape(y_pred[:, self.index], (-1,))
        self.total.assign_add(keras.ops.sum(y))
        self.squares.assign_add(keras.ops.sum(y * y))
        self.errors.assign_add(keras.ops.sum((y - guess) ** 2))
        self.count.assign_add(keras.ops.cast(keras.ops.shape(y)[0], "float32"))

    def result(self):
        spread = self.squares - self.total * self.total / keras.ops.maximum(self.count, 1.0)
        return 1.0 - self.errors / keras.ops.maximum(spread, 1e-12)

    def get_config(self) -> dict:
        return {**super().get_config(), "index": self.index}


def _copy_metrics(output: OutputSpec, copies: int) -> list:
    found = []
    fn = keras.losses.get(output.loss)
    accuracy = (keras.metrics.binary_accuracy if output.task == "binary"
                else keras.metrics.sparse_categorical_accuracy)
    for i in range(copies):
        prefix = seed_prefix(i)
        found.append(keras.metrics.MeanMetricWrapper(
            lambda yt, yp, i=i: _per_sample(fn, yt, yp[:, i]), name=f"{prefix}loss"))
        if output.classification:
            found.append(keras.metrics.MeanMetricWrapper(
                lambda yt, yp, i=i: _accuracy_of(accuracy, yt, yp[:, i]),
                name=f"{prefix}accuracy"))
        else:
            found.append(R2(i, name=f"{prefix}r2"))
    return found


def _accuracy_of(accuracy, y_true, y_pred_i):
    if y_pred_i.shape[-1] == 1 and len(y_true.shape) == 1:
        y_true = keras.ops.expand_dims(y_true, -1)
    return accuracy(y_true, y_pred_i)


def compile_packed(model: keras.Model, optimizer, copies: int, output: OutputSpec = CARDIO,
                   steps_per_execution: int = 64) -> None:
    """The summed loss and each copy's loss and score as metrics."""
    model.compile(optimizer=optimizer, loss=PackedLoss(output.loss, copies),
                  metrics=_copy_metrics(output, copies), steps_per_execution=steps_per_execution)


def seed_history(history: training.History, index: int) -> training.History:
    """Copy `index`'s own epoch logs (`loss`, `<score>`, `val_loss`, `val_<score>`) out of a
    packed training's history; its seconds are the packed epoch's."""
    prefix = seed_prefix(index)
    epochs = {}
    for key, values in history.epochs.items():
        for head in ("", "val_"):
            if key.startswith(head + prefix):
                epochs[head + key[len(head + prefix):]] = list(values)
    return training.History(epochs, list(history.epoch_seconds), list(history.lr_steps),
                            list(history.lr_values))


def split_predictions(predicted: np.ndarray) -> list[np.ndarray]:
    """Per-copy predictions (batch, units) from the packed (batch, S, units)."""
    return [predicted[:, i] for i in range(predicted.shape[1])]


def test_metrics(model: keras.Model, x: np.ndarray, y: np.ndarray, copies: int,
                 output: OutputSpec = CARDIO) -> list[dict[str, float]]:
    """Each copy's test metrics, as `training.evaluate` gives them for a network alone."""
    scores = model.evaluate(x, y, batch_size=4096, verbose=0, return_dict=True)
    predicted = keras.ops.convert_to_numpy(model.predict(x, batch_size=4096, verbose=0))
    found = []
    for i, part in enumerate(split_predictions(predicted)):
        prefix = seed_prefix(i)
        own = {"loss": scores[f"{prefix}loss"], output.score: scores[f"{prefix}{output.score}"]}
        found.append(held_out_metrics(own, y, part, output))
    return found


@dataclass
class PackedResult:
    """A packed training: the model, the shared history, per-seed histories and test metrics,
    the wall seconds of the fit, and each epoch's end time (ms since the epoch)."""

    model: keras.Model
    history: training.History
    seeds: tuple[int, ...]
    per_seed: list[training.History]
    test: list[dict[str, float]]
    seconds: float
    epoch_end_ms: list[int]


def train_packed(
    params: ModelParams,
    seeds: Sequence[int],
    make_optimizer: Callable[[keras.Model], keras.optimizers.Optimizer],
    x: np.ndarray, y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    order_seed: int,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    output: OutputSpec = CARDIO,
    steps_per_execution: int = 64,
    fit_options: dict | None = None,
    evaluation: Callable | None = None,
) -> PackedResult:
    """Build the packed model, train it with `training.fit` (batch order from `order_seed`) and
    score every copy on `test`. `make_optimizer(model)` builds the optimizer (it may use
    `group_of(model)`); `evaluation(model, optimizer)`, a context manager, swaps in the weights
    to score with (averaged or EMA weights) for the test metrics."""
    model = build_packed(params, x.shape[1], seeds, output)
    optimizer = make_optimizer(model)
    compile_packed(model, optimizer, len(seeds), output, steps_per_execution)
    keras.utils.set_random_seed(order_seed)
    ends: list[int] = []
    started = time.perf_counter()
    history = training.fit(model, x, y, epochs=epochs, batch_size=batch_size,
                           validation=validation,
                           on_epoch=lambda *_: ends.append(int(time.time() * 1000)),
                           **(fit_options or {}))
    seconds = time.perf_counter() - started
    scores: list[dict[str, float]] = []
    if test is not None:
        if evaluation is None:
            scores = test_metrics(model, *test, len(seeds), output)
        else:
            with evaluation(model, optimizer):
                scores = test_metrics(model, *test, len(seeds), output)
    per_seed = [seed_history(history, i) for i in range(len(seeds))]
    for i, seed_logs in enumerate(per_seed):
        if any(not math.isfinite(v) for v in seed_logs.epochs.get("loss", [])):
            raise ClrpipeError(f"training diverged: seed {seeds[i]} has a non-finite loss")
    return PackedResult(model, history, tuple(seeds), per_seed, scores, seconds, ends)

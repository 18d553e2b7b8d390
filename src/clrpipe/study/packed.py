"""Many small networks trained as one: the seeds of one method packed into a single Keras model.

A study trains the same small network under many methods and seeds; each training alone pays
for its own compiled step, Python loop and tiny matrix products. Packing puts S copies of the
network side by side in one functional model: copy i is `model.build_model(params, n, seeds[i])`
layer for layer (its layers renamed `s<i>_...`, its weights and dropout seed states copied), all
copies read the same input batch (every epoch a new order drawn from one order seed, as
`train.reshuffle: true` draws it: Keras's own per-epoch order costs a `tf.data` iterator per
epoch, more than an epoch of a small table), and the outputs are stacked to shape
(batch, S, units). The loss is the sum of the copies' own losses, so the gradient of copy i's
weights is exactly its own loss's gradient: SGD and Adam (per-variable optimizers) then move each
copy exactly as when it trains alone (tested to 1e-5). Optimizers with a reduction over all
variables (Prodigy) get `group_of`, which names the copy a variable belongs to.

Each copy's training loss is a compiled metric (`s<i>_loss` in `loop.fit`'s epoch logs);
its validation loss and score (`val_s<i>_loss`, `val_s<i>_<score>`) come from one forward pass
after each epoch, under the optimizer's evaluation weights when it has them.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.data.tasks import CARDIO, OutputSpec, held_out_metrics
from clrpipe.pipeline.params import BuiltinModel, ModelParams
from clrpipe.pipeline.training import loop
from clrpipe.pipeline.training.model import build_model

__all__ = [
    "PackedLoss", "PackedResult", "build_packed", "compile_packed", "copy_scores", "group_of",
    "predict", "seed_history", "seed_prefix", "split_predictions", "test_metrics",
    "train_packed",
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


def _copy_metrics(output: OutputSpec, copies: int) -> list:
    """Each copy's own training loss (its score is computed on validation only)."""
    fn = keras.losses.get(output.loss)
    return [keras.metrics.MeanMetricWrapper(lambda yt, yp, i=i: _per_sample(fn, yt, yp[:, i]),
                                            name=f"{seed_prefix(i)}loss")
            for i in range(copies)]


def compile_packed(model: keras.Model, optimizer, copies: int, output: OutputSpec = CARDIO,
                   steps_per_execution: int = 64) -> None:
    """The summed loss, and each copy's loss as a metric."""
    model.compile(optimizer=optimizer, loss=PackedLoss(output.loss, copies),
                  metrics=_copy_metrics(output, copies), steps_per_execution=steps_per_execution)


def seed_history(history: loop.History, index: int) -> loop.History:
    """Copy `index`'s own epoch logs (`loss`, `<score>`, `val_loss`, `val_<score>`) out of a
    packed training's history; its seconds are the packed epoch's."""
    prefix = seed_prefix(index)
    epochs = {}
    for key, values in history.epochs.items():
        for head in ("", "val_"):
            if key.startswith(head + prefix):
                epochs[head + key[len(head + prefix):]] = list(values)
    return loop.History(epochs, list(history.epoch_seconds), list(history.lr_steps),
                            list(history.lr_values))


def split_predictions(predicted: np.ndarray) -> list[np.ndarray]:
    """Per-copy predictions (batch, units) from the packed (batch, S, units)."""
    return [predicted[:, i] for i in range(predicted.shape[1])]


_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict(model: keras.Model, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The packed prediction (rows, S, units) in inference mode, by one compiled forward pass
    per chunk (traced once per model): no `model.predict` pipeline built for every call."""
    forward = _FORWARD.get(model)
    if forward is None:
        forward = tf.function(lambda rows: model(rows, training=False), reduce_retracing=True)
        _FORWARD[model] = forward
    parts = [forward(tf.constant(x[i:i + chunk])).numpy() for i in range(0, len(x), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0,))


def copy_scores(predicted: np.ndarray, y: np.ndarray, output: OutputSpec = CARDIO
                ) -> list[dict[str, float]]:
    """Each copy's mean loss and score (accuracy, or R² in the standardized units the network
    trains in) on `y`, from the packed prediction, in numpy: Keras's cross-entropies (its
    probability clipping to [eps, 1 - eps]) and squared error."""
    eps = keras.config.epsilon()
    truth = y.reshape(-1)
    found = []
    for part in split_predictions(predicted.astype(np.float64)):
        if output.task == "binary":
            p = np.clip(part.reshape(-1), eps, 1 - eps)
            loss = -np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p))
            score = np.mean((part.reshape(-1) > 0.5) == (truth > 0.5))
        elif output.task == "multiclass":
            p = part / part.sum(axis=-1, keepdims=True)
            p = np.clip(p, eps, 1 - eps)
            loss = -np.mean(np.log(p[np.arange(len(truth)), truth.astype(int)]))
            score = np.mean(part.argmax(axis=-1) == truth.astype(int))
        else:
            guess = part.reshape(-1)
            loss = np.mean((truth - guess) ** 2)
            score = 1.0 - np.sum((truth - guess) ** 2) / max(
                float(np.sum((truth - truth.mean()) ** 2)), 1e-12)
        found.append({"loss": float(loss), output.score: float(score)})
    return found


def test_metrics(model: keras.Model, x: np.ndarray, y: np.ndarray, copies: int,
                 output: OutputSpec = CARDIO) -> list[dict[str, float]]:
    """Each copy's test metrics, as `loop.evaluate` gives them for a network alone."""
    predicted = predict(model, x)
    return [held_out_metrics(own, y, part, output) for own, part in
            zip(copy_scores(predicted, y, output), split_predictions(predicted), strict=True)]


@dataclass
class PackedResult:
    """A packed training: the model, the shared history, per-seed histories and test metrics,
    the wall seconds of the fit, and each epoch's end time (ms since the epoch)."""

    model: keras.Model
    history: loop.History
    seeds: tuple[int, ...]
    per_seed: list[loop.History]
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
    """Build the packed model, train it with `loop.fit` (a new batch order every epoch
    drawn from `order_seed`, as `train.reshuffle: true` does, shared by all copies),
    score every copy on `validation` after each epoch (one compiled forward pass: Keras's
    `evaluate` costs more than an epoch of these small networks) and on `test` at the
    end. `make_optimizer(model)` builds the optimizer (it may use
    `group_of(model)`); `evaluation(model, optimizer)`, a context manager, swaps in the weights
    to score with (averaged or EMA weights) for the test metrics."""
    model = build_packed(params, x.shape[1], seeds, output)
    optimizer = make_optimizer(model)
    compile_packed(model, optimizer, len(seeds), output, steps_per_execution)
    keras.utils.set_random_seed(order_seed)
    ends: list[int] = []
    validated: list[list[dict[str, float]]] = []
    validating: list[float] = []

    def on_epoch(*_):
        if validation is not None:
            began = time.perf_counter()
            if evaluation is None:
                validated.append(copy_scores(predict(model, validation[0]), validation[1], output))
            else:
                with evaluation(model, optimizer):
                    validated.append(copy_scores(predict(model, validation[0]), validation[1],
                                                 output))
            validating.append(time.perf_counter() - began)
        ends.append(int(time.time() * 1000))

    started = time.perf_counter()
    history = loop.fit(model, x, y, epochs=epochs, batch_size=batch_size, on_epoch=on_epoch,
                           reshuffle_seed=order_seed, **(fit_options or {}))
    seconds = time.perf_counter() - started
    if validation is not None:
        history.epoch_seconds = [a + b for a, b in zip(history.epoch_seconds, validating,
                                                       strict=True)]
        for i in range(len(seeds)):
            for key in ("loss", output.score):
                history.epochs[f"val_{seed_prefix(i)}{key}"] = [e[i][key] for e in validated]
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

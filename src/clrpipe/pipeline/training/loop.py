"""Training core: fit a compiled model on in-memory arrays and record what a comparison needs.

No files and no tracking here: the `train` stage logs what `fit` returns.

`fit` is Keras's `model.fit(x, y, shuffle=True, validation_data=...)` with the per-batch input
pipeline taken out. Profiling a plain fit on this table showed that fetching each batch from
Keras's `tf.data` pipeline costs about as much as the whole training step of this small network.
So `fit` takes each epoch's row order from Keras's own shuffle (the same permutation `model.fit`
would draw for the same seed), then runs `model.train_step` over the batches inside one compiled
loop, `steps_per_execution` batches per call, gathering rows from tensors already in memory.
The steps, their order and their math are Keras's, so the weights are bit-identical to a plain
`model.fit` (tested), at a fraction of its time (`bench/benchmark.py`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from clrpipe import keras_private
from clrpipe.errors import ClrpipeError
from clrpipe.optimizers import evaluation_weights, resume
from clrpipe.pipeline.data.tasks import CARDIO, OutputSpec, held_out_metrics

__all__ = [
    "History", "OnEpoch", "compile_model", "epoch_orders", "evaluate", "fit", "limit_threads",
]

OnEpoch = Callable[[int, dict, float], None]


@dataclass
class History:
    """Per-epoch metrics, epoch seconds, and the learning rate read from the optimizer."""

    epochs: dict[str, list[float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    lr_steps: list[int] = field(default_factory=list)
    lr_values: list[float] = field(default_factory=list)


def limit_threads(threads: int) -> bool:
    """Limit TensorFlow's intra- and inter-op thread pools; False when the runtime has already
    started (its pools are fixed then). One thread is the fastest setting for this small network
    and lets parallel trials share cores without oversubscription."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return False
    return True


def compile_model(model, optimizer, steps_per_execution: int = 1, jit_compile=False,
                  output: OutputSpec = CARDIO) -> None:
    """The task's loss and score metric (binary cross-entropy and accuracy for cardio, as in
    the article)."""
    model.compile(
        optimizer=optimizer,
        loss=output.loss,
        metrics=output.keras_metrics(),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )


def epoch_orders(rows: int) -> tf.data.Dataset:
    """One element per iteration: the row order `model.fit(shuffle=True)` uses for an epoch.

    It is Keras's own array adapter, fed row indices instead of rows: its permutation does not
    depend on the batch size, so one batch of all rows is the whole order. Like `fit`, take one
    fresh iterator per epoch (`next(iter(orders))`). Under a global seed
    (`keras.utils.set_random_seed`) a fresh iterator re-seeds the shuffle, so Keras (and this)
    visits the rows in one order at every epoch; the seed decides which order.
    """
    return keras_private.epoch_order_dataset(rows)


def _batch_runner(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int):
    """A compiled `run(order, first, last)`: `model.train_step` on batches first..last-1 of the
    epoch order, each `batch_size` rows gathered in order (the last one may be short); returns
    the model's running metrics."""
    x_all, y_all = tf.constant(x), tf.constant(y)
    rows = len(x)
    step = model.train_step
    if model.jit_compile:
        step = tf.function(step, jit_compile=True, reduce_retracing=True)

    @tf.function
    def run(order, first, last):
        for batch in tf.range(first, last):
            rows_of_batch = order[batch * batch_size : tf.minimum((batch + 1) * batch_size, rows)]
            step((tf.gather(x_all, rows_of_batch), tf.gather(y_all, rows_of_batch)))
        return model.get_metrics_result()

    return run


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch: OnEpoch | None = None,
    reshuffle_seed: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] | keras.callbacks.CallbackList | None = None,
) -> History:
    """Train a compiled model as `model.fit(x, y, batch_size, epochs, shuffle=True,
    validation_data=validation)` would, `model.steps_per_execution` batches per compiled call.

    After every call the LR the optimizer applies at its next step (`iterations`) is recorded
    with that step, and a non-finite loss stops training with an error. `on_epoch(epoch, logs,
    seconds)` is called after each epoch, with the validation metrics (`val_*`) in `logs`.
    With `reshuffle_seed`, every epoch gets a new row order drawn from that seed instead of
    Keras's (one order repeated under a global seed, see `epoch_orders`).

    `callbacks` are Keras callbacks, called through a `keras.callbacks.CallbackList` at the
    points `model.fit` calls them: `on_train_begin/end`, `on_epoch_begin/end` (with the same
    logs, `val_*` included), `on_train_batch_begin(first)` / `on_train_batch_end(first +
    steps_per_execution - 1, logs)` once per compiled call of `steps_per_execution` batches
    (as Keras's fit does with `steps_per_execution`; the logs are the epoch's running metrics),
    and `on_test_*` during validation. Validation scores the weights the optimizer evaluates
    with (schedule-free's average, an EMA: `optimizers.evaluation_weights`), and the model
    ends with them (Keras's `finalize_variable_values`, as `fit` does). `model.stop_training`
    set by a callback (EarlyStopping) stops training after the current call and epoch, as in
    Keras. With the same callbacks (and an optimizer that evaluates its iterate) the weights
    and logs stay bit-identical to `model.fit` (tested).
    """
    if len(x) == 0 or batch_size < 1:
        raise ClrpipeError(f"fit: expected rows and a batch size of at least 1, got {len(x)} "
                           f"rows and batch size {batch_size}")
    history = History()
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    resume(model, optimizer)
    steps = math.ceil(len(x) / batch_size)
    per_call = int(model.steps_per_execution)
    run = _batch_runner(model, x, y, batch_size)
    next_order = _order_source(len(x), reshuffle_seed)
    hooks = _callback_list(callbacks, model, epochs, steps)
    model.stop_training = False
    hooks.on_train_begin()
    epoch_logs = None
    for epoch in range(epochs):
        started = time.perf_counter()
        model.reset_metrics()
        hooks.on_epoch_begin(epoch)
        order = next_order()
        for first in range(0, steps, per_call):
            hooks.on_train_batch_begin(first)
            logs = run(order, tf.constant(first), tf.constant(min(first + per_call, steps)))
            _record_lr(history, optimizer)
            _stop_if_diverged(float(logs["loss"]), optimizer)
            hooks.on_train_batch_end(first + per_call - 1, logs)
            if model.stop_training:
                break
        logs = {name: float(value) for name, value in logs.items()}
        if validation is not None:
            with evaluation_weights(model, optimizer):
                scores = model.evaluate(*validation, batch_size=batch_size, verbose=0,
                                        return_dict=True, callbacks=hooks)
            logs.update({f"val_{name}": float(value) for name, value in scores.items()})
        history.epoch_seconds.append(time.perf_counter() - started)
        hooks.on_epoch_end(epoch, logs)
        logs = _seen_epoch_logs(hooks, logs)
        epoch_logs = logs
        for name, value in logs.items():
            history.epochs.setdefault(name, []).append(value)
        if on_epoch is not None:
            on_epoch(epoch, logs, history.epoch_seconds[-1])
        if model.stop_training:
            break
    if epochs > 0:
        optimizer.finalize_variable_values(model.trainable_weights)
    hooks.on_train_end(logs=epoch_logs)
    return history


class _EpochLogs(keras.callbacks.Callback):
    """Last in the list, like Keras's `History`: keeps the epoch logs as the callbacks before it
    left them (`ReduceLROnPlateau` adds `learning_rate`, for example)."""

    def on_epoch_end(self, epoch, logs=None):
        self.logs = dict(logs or {})


def _callback_list(callbacks, model, epochs: int, steps: int) -> keras.callbacks.CallbackList:
    """The callbacks in a `CallbackList` set up as `model.fit(verbose=0)` sets up its own."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    return keras.callbacks.CallbackList(
        [*(callbacks or []), _EpochLogs()], add_history=False, add_progbar=False, model=model,
        verbose=0, epochs=epochs, steps=steps,
    )


def _seen_epoch_logs(hooks: keras.callbacks.CallbackList, logs: dict) -> dict:
    last = hooks.callbacks[-1] if hooks.callbacks else None
    if isinstance(last, _EpochLogs):
        return {name: _number(value) for name, value in last.logs.items()}
    return logs


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _order_source(rows: int, reshuffle_seed: int | None) -> Callable[[], tf.Tensor]:
    """Each call gives the next epoch's row order: Keras's, or a new one from `reshuffle_seed`."""
    if reshuffle_seed is None:
        orders = epoch_orders(rows)
        return lambda: next(iter(orders))
    order_rng = np.random.default_rng(reshuffle_seed)
    return lambda: tf.constant(order_rng.permutation(rows))


def _record_lr(history: History, optimizer) -> None:
    history.lr_steps.append(int(optimizer.iterations))
    history.lr_values.append(float(optimizer.learning_rate))


def _stop_if_diverged(loss: float, optimizer) -> None:
    if not math.isfinite(loss):
        raise ClrpipeError(
            f"training diverged: loss is {loss} at step {int(optimizer.iterations)}; "
            "lower the learning rate (schedule.maximal_learning_rate or train.*.learning_rate)"
        )


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray,
             output: OutputSpec = CARDIO) -> dict[str, float]:
    """Loss, score and the task's test metrics on held-out data (`tasks.held_out_metrics`),
    with the weights the optimizer evaluates with (`optimizers.evaluation_weights`)."""
    with evaluation_weights(model, model.optimizer):
        scores = model.evaluate(x, y, batch_size=4096, verbose=0, return_dict=True)
        predicted = keras.ops.convert_to_numpy(model.predict(x, batch_size=4096, verbose=0))
    return held_out_metrics(scores, y, predicted, output)

"""The range test's training and evaluation steps, per Keras backend: the only backend-specific
code of the sweep (guarded by `tests/test_backends.py`).

TensorFlow: Keras's TF `train_step` without the metric updates under `tf.function` (the fast
step), or the model's own `train_step` under `tf.function`: today's numbers, unchanged.
JAX and PyTorch: Keras's own compiled train function through `model.train_on_batch` (which
resets the metrics first, so its "loss" is the batch's), with the sweep's optimizer clone in
`model.optimizer`; a `loss=` override needs the TensorFlow backend. Evaluation is a plain call
of the model and `compute_loss` on every backend other than TensorFlow.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import keras

from clrpipe import keras_private
from clrpipe.errors import ClrpipeError

__all__ = ["eval_step_fn", "is_tensorflow", "is_tf_dataset", "train_step_fn"]


def is_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow (the only backend with the fast step and tf.data)."""
    return keras.backend.backend() == "tensorflow"


def is_tf_dataset(x: Any) -> bool:
    """Whether `x` is a `tf.data.Dataset`, without importing TensorFlow when it is not loaded."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and hasattr(tf, "data") and isinstance(x, tf.data.Dataset)


def train_step_fn(model, opt, loss_fn, use_train_step: bool) -> Callable[[Any], float]:
    """A `batch -> batch loss` that trains one step with `opt` (already in `model.optimizer`
    when `use_train_step`)."""
    if not is_tensorflow():
        if loss_fn is not None:
            raise ClrpipeError(
                f"loss: a loss= override needs the TensorFlow backend (Keras runs on "
                f"{keras.backend.backend()}); compile the model with the loss instead"
            )
        return _on_batch_step_fn(model, opt)
    if use_train_step:
        return _train_step_fn(model)
    return _fast_step_fn(model, opt, loss_fn)


def eval_step_fn(model, loss_fn) -> Callable[[Any, Any], tuple[Any, Any]]:
    """A `(x_val, y_val) -> (loss, predictions)` in inference mode."""
    training_arg = keras_private.call_has_training_arg(model)

    def step(xv, yv):
        pred = model(xv, training=False) if training_arg else model(xv)
        if loss_fn is None:
            value = keras_private.compute_loss(model, xv, yv, pred, None, False)
        else:
            value = loss_fn(yv, pred)
        return value, pred

    if is_tensorflow():
        return _maybe_jit(model, step)
    return lambda xv, yv: keras.tree.map_structure(keras.ops.stop_gradient, step(xv, yv))


def _maybe_jit(model, fn):
    import tensorflow as tf

    if getattr(model, "run_eagerly", False):
        return fn
    return tf.function(fn, jit_compile=bool(getattr(model, "jit_compile", False)),
                       reduce_retracing=True)


def _fast_step_fn(model, opt, loss_fn):
    """Keras's TF `train_step` without the metrics (or with `loss_fn` instead of the compiled
    loss): returns the batch loss."""
    import tensorflow as tf

    training_arg = keras_private.call_has_training_arg(model)

    def step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True) if training_arg else model(x)
            if loss_fn is None:
                value = keras_private.compute_loss(model, x, y, y_pred, sample_weight, True)
            else:
                value = loss_fn(y, y_pred)
                if model.losses:
                    value = value + tf.add_n(model.losses)
            scaled = opt.scale_loss(value)
        weights = model.trainable_weights
        grads = tape.gradient(scaled, weights)
        opt.apply_gradients(zip(grads, weights, strict=True))
        return value

    compiled = _maybe_jit(model, step)
    return lambda data: float(compiled(data))


def _train_step_fn(model):
    """The model's own `train_step` (with `model.optimizer` already the clone); metrics reset
    before each batch so the returned "loss" is that batch's."""
    compiled = _maybe_jit(model, model.train_step)

    def run(data):
        model.reset_metrics()
        return _loss_of(compiled(data))

    return run


def _on_batch_step_fn(model, opt):
    """JAX and PyTorch: Keras's compiled train function on one batch, with `opt` in
    `model.optimizer` (the caller restores the model's own optimizer and train function)."""
    model.optimizer = opt
    model.train_function = None  # traced anew with the clone; the caller puts the old one back

    def run(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return _loss_of(model.train_on_batch(x, y, sample_weight=sample_weight,
                                             return_dict=True))

    return run


def _loss_of(logs) -> float:
    if not isinstance(logs, dict) or "loss" not in logs:
        keys = sorted(logs) if isinstance(logs, dict) else type(logs).__name__
        raise ClrpipeError(
            f"range_test: the model's train_step must return a dict with a 'loss' entry, "
            f"got {keys}"
        )
    return float(logs["loss"])

"""Run the LR range test on a Keras model and leave no trace of it.

Each seed sweeps the LR upward every batch (see `clrpipe.range_test.lr_schedule`) with a clone
of the model's optimizer, starting from the model's current weights, on batches shuffled by
that seed, and stops at divergence. The analysis is `clrpipe.range_test.analyse`.

Isolation is the point: when `run_range_test` returns (or raises), the model's variables
(weights, non-trainable state, dropout seed-generator states), the user's optimizer (never
used: a clone from its config is), numpy's and Python's global RNG and Keras' global
`SeedGenerator` are exactly as before, so training afterwards is bit-identical to training
without the test.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from clrpipe import keras_private
from clrpipe.errors import ClrpipeError
from clrpipe.params import RangeTestParams
from clrpipe.range_test import Curve, DivergenceMonitor, RangeTestResult, analyse, lr_schedule

__all__ = ["preserved_state", "run_range_test", "sweep"]


@contextlib.contextmanager
def preserved_state(model: keras.Model, *optimizers: Any) -> Iterator[None]:
    """Restore model variables, optimizer variables and all global RNG state on exit."""
    model_values = [v.numpy() for v in model.variables]
    opt_values = [[v.numpy() for v in o.variables] for o in optimizers if o is not None]
    np_state, py_state = np.random.get_state(), random.getstate()
    gen = keras_private.global_seed_generator()
    gen_state = gen.state.numpy() if gen is not None else None
    try:
        yield
    finally:
        for var, value in zip(model.variables, model_values, strict=True):
            var.assign(value)
        for opt, values in zip([o for o in optimizers if o is not None], opt_values, strict=True):
            for var, value in zip(opt.variables, values, strict=True):
                var.assign(value)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if gen is not None:
            gen.state.assign(gen_state)
        keras_private.set_global_seed_generator(gen)


def run_range_test(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    config: RangeTestParams,
    *,
    batch_size: int,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: Any = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> RangeTestResult:
    """Sweep every seed of `config` and return the analysed result; the model is left untouched.

    `optimizer` and `loss` default to the compiled model's; the optimizer is cloned from its
    config with a plain float LR that the sweep sets every batch. `x_val, y_val` (a small
    held-out slice, e.g. 2,000 rows) are evaluated every `config.val_every` batches for val
    loss and, for cross-entropy losses, accuracy (which enables Smith's accuracy bounds).
    """
    return analyse(
        sweep(
            model,
            x,
            y,
            config,
            batch_size=batch_size,
            optimizer=optimizer,
            loss=loss,
            x_val=x_val,
            y_val=y_val,
        ),
        config,
    )


def sweep(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    config: RangeTestParams,
    *,
    batch_size: int,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: Any = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> list[Curve]:
    """Record one raw `Curve` per seed (no analysis); the model is left untouched."""
    if not model.built or not model.variables:
        raise ClrpipeError("range_test: model is not built; give it a keras.Input first")
    user_opt = optimizer if optimizer is not None else getattr(model, "optimizer", None)
    if user_opt is None:
        raise ClrpipeError("range_test: no optimizer; compile the model or pass optimizer=")
    loss_obj = loss if loss is not None else getattr(model, "loss", None)
    if loss_obj is None or isinstance(loss_obj, dict | list | tuple):
        raise ClrpipeError("range_test: expected one loss; compile the model or pass loss=")
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 0 < batch_size <= n:
        raise ClrpipeError(
            f"batch_size: expected an integer from 1 to the training rows ({n}), got {batch_size}"
        )
    out_dim = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else None
    y = _align_target(np.asarray(y), out_dim)
    use_val = x_val is not None and y_val is not None and config.val_every > 0
    if use_val:
        x_val = np.asarray(x_val, dtype=np.float32)
        y_val = _align_target(np.asarray(y_val), out_dim)
    loss_fn = _loss_callable(loss_obj)
    acc_fn = _accuracy_fn(loss_obj)

    with preserved_state(model, user_opt):
        opt = _clone_optimizer(user_opt, config.min_lr)
        opt.build(model.trainable_variables)
        train_step, eval_step = _compile_steps(model, opt, loss_fn)
        model_init = [v.numpy() for v in model.variables]
        opt_init = [v.numpy() for v in opt.variables]
        seed_vars = [v for v in model.variables if v.name == "seed_generator_state"]
        lrs = lr_schedule(config)
        curves = []
        for seed in config.seed_list():
            for var, value in zip(model.variables, model_init, strict=True):
                var.assign(value)
            for var, value in zip(opt.variables, opt_init, strict=True):
                var.assign(value)
            rng = np.random.default_rng(seed)
            for var in seed_vars:
                var.assign(np.array([rng.integers(1, 2**31 - 1), 0], dtype=np.int64))
            curves.append(
                _sweep_one(
                    seed,
                    rng,
                    lrs,
                    config,
                    opt,
                    train_step,
                    eval_step,
                    acc_fn,
                    x,
                    y,
                    batch_size,
                    (x_val, y_val) if use_val else None,
                )
            )
    return curves


def _sweep_one(
    seed, rng, lrs, config, opt, train_step, eval_step, acc_fn, x, y, batch_size, val
) -> Curve:
    """One seed's sweep: set the LR, train a batch, record, stop at divergence."""
    n_batches = x.shape[0] // batch_size
    monitor = DivergenceMonitor(config.beta, config.divergence_factor, config.smoothing)
    losses: list[float] = []
    val_steps: list[int] = []
    val_loss: list[float] = []
    val_acc: list[float] = []
    order = rng.permutation(x.shape[0])
    for step, lr in enumerate(lrs):
        b = step % n_batches
        if b == 0 and step:
            order = rng.permutation(x.shape[0])
        idx = order[b * batch_size : (b + 1) * batch_size]
        opt.learning_rate = float(lr)
        loss = float(train_step(x[idx], y[idx]))
        losses.append(loss)
        if val is not None and step % config.val_every == 0:
            v_loss, v_pred = eval_step(val[0], val[1])
            val_steps.append(step)
            val_loss.append(float(v_loss))
            if acc_fn is not None:
                val_acc.append(acc_fn(val[1], v_pred.numpy()))
        if monitor.update(loss):
            break
    return Curve(
        seed=seed,
        lrs=lrs[: len(losses)],
        losses=np.array(losses),
        val_steps=np.array(val_steps, dtype=int),
        val_loss=np.array(val_loss),
        val_accuracy=np.array(val_acc) if acc_fn is not None and val is not None else None,
    )


def _compile_steps(model, opt, loss_fn):
    """tf.function train and eval steps bound to this model and optimizer."""

    @tf.function(reduce_retracing=True)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            value = loss_fn(yb, model(xb, training=True))
            if model.losses:
                value = value + tf.add_n(model.losses)
        grads = tape.gradient(value, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return value

    @tf.function(reduce_retracing=True)
    def eval_step(xv, yv):
        pred = model(xv, training=False)
        return loss_fn(yv, pred), pred

    return train_step, eval_step


def _clone_optimizer(opt, lr: float):
    """A fresh optimizer of the same class and settings, with a float LR we can set per batch."""
    config = opt.get_config()
    config["learning_rate"] = float(lr)
    return opt.__class__.from_config(config)


def _align_target(y: np.ndarray, out_dim: int | None) -> np.ndarray:
    """Give a 1-D target the (n, 1) shape of a single-unit output so losses do not broadcast."""
    if y.ndim == 1 and out_dim == 1:
        y = y[:, None]
    return y.astype(np.float32) if y.dtype.kind in "fb" or out_dim == 1 else y


def _loss_callable(loss_obj):
    """A `(y_true, y_pred) -> scalar mean loss` from a Keras loss name, function or instance."""
    fn = keras.losses.get(loss_obj) if isinstance(loss_obj, str) else loss_obj
    if isinstance(fn, keras.losses.Loss):
        return fn
    if fn is None or not callable(fn):
        raise ClrpipeError(f"range_test: unknown loss {loss_obj!r}")
    return lambda yt, yp: tf.reduce_mean(fn(yt, yp))


def _loss_name(loss_obj) -> str:
    if isinstance(loss_obj, str):
        return loss_obj.lower()
    name = getattr(loss_obj, "name", None) or getattr(loss_obj, "__name__", "")
    return f"{type(loss_obj).__name__} {name}".lower()


def _accuracy_fn(loss_obj):
    """Accuracy for cross-entropy losses (binary threshold at 0.5, or 0 for logits), else None."""
    name = _loss_name(loss_obj)
    if "crossentropy" not in name:
        return None
    logits = bool(getattr(loss_obj, "from_logits", False)) or bool(
        getattr(loss_obj, "get_config", dict)().get("from_logits", False)
    )
    if "binary" in name:
        cut = 0.0 if logits else 0.5
        return lambda yt, yp: float(np.mean((yp > cut) == (yt > 0.5)))
    if "sparse" in name:
        return lambda yt, yp: float(np.mean(np.argmax(yp, -1) == np.reshape(yt, -1)))
    return lambda yt, yp: float(np.mean(np.argmax(yp, -1) == np.argmax(yt, -1)))

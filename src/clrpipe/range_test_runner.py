"""Run the LR range test on a Keras model and leave no trace of it.

Each seed sweeps the LR upward every batch (see `clrpipe.range_test.lr_schedule`) with a clone
of the model's optimizer, starting from the model's current weights, on batches shuffled by
that seed, and stops at divergence. The analysis is `clrpipe.range_test.analyse`.

Inputs: NumPy arrays (or nested structures of them, for multi-input models), shuffled per seed
and cut into `batch_size` batches; a `keras.utils.PyDataset`, whose batches are visited in a
per-seed random order (its `on_epoch_*` hooks are not called and its workers are not used); or
a `tf.data.Dataset`, read in its own order (a fresh iterator per seed, repeated when exhausted).

Steps (`clrpipe._backend`), on TensorFlow: a model whose `train_step` is Keras's own is swept by
a step that is Keras's `train_step` without the metric updates (same forward pass, same
`compute_loss`, same gradients: bit-identical weights, tested) and returns the batch loss. A
model with its own `train_step` is swept through it: the clone optimizer is put in
`model.optimizer` for the sweep, the model's metrics are reset before each batch and the batch
loss is the `"loss"` its `train_step` returns. On JAX and PyTorch every model is swept through
Keras's own compiled train function (`train_on_batch`), with the same isolation.

Isolation is the point: when `run_range_test` returns (or raises), the model's variables
(weights, non-trainable state, dropout seed-generator states), its metrics' state, its
`optimizer` attribute, the user's optimizer (never used: a clone from its config is), numpy's
and Python's global RNG and Keras' global `SeedGenerator` are exactly as before, so training
afterwards is bit-identical to training without the test. One thing cannot be put back: a
`tf.data.Dataset` that reshuffles on every iteration has advanced its own hidden shuffle state.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from clrpipe import _backend, keras_private
from clrpipe.errors import ClrpipeError
from clrpipe.range_test import Curve, DivergenceMonitor, RangeTestResult, analyse, lr_schedule
from clrpipe.settings import RangeTestParams

__all__ = ["has_custom_train_step", "preserved_state", "run_range_test", "sweep"]


@contextlib.contextmanager
def preserved_state(model: keras.Model, *optimizers: Any) -> Iterator[None]:
    """Restore model variables, metric state, `model.optimizer`, the optimizers' variables and
    all global RNG state on exit."""
    model_values = [v.numpy() for v in model.variables]
    metric_values = [(v, v.numpy()) for v in _metric_variables(model)]
    model_opt = getattr(model, "optimizer", None)
    train_function = getattr(model, "train_function", None)
    opt_values = [[v.numpy() for v in o.variables] for o in optimizers if o is not None]
    np_state, py_state = np.random.get_state(), random.getstate()
    gen = keras_private.global_seed_generator()
    gen_state = gen.state.numpy() if gen is not None else None
    try:
        yield
    finally:
        if hasattr(model, "optimizer"):
            model.optimizer = model_opt
        if hasattr(model, "train_function"):
            model.train_function = train_function
        for var, value in zip(model.variables, model_values, strict=True):
            var.assign(value)
        for metric in getattr(model, "metrics", []):
            metric.reset_state()
        for var, value in metric_values:
            var.assign(value)
        for opt, values in zip([o for o in optimizers if o is not None], opt_values, strict=True):
            for var, value in zip(opt.variables, values, strict=True):
                var.assign(value)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if gen is not None:
            gen.state.assign(gen_state)
        keras_private.set_global_seed_generator(gen)


def _metric_variables(model: keras.Model) -> list:
    return [v for m in getattr(model, "metrics", []) for v in m.variables]


def has_custom_train_step(model: keras.Model) -> bool:
    """True when the model's class overrides Keras's `train_step`."""
    return type(model).train_step is not keras.Model.train_step


def run_range_test(
    model: keras.Model,
    x: Any,
    y: Any,
    config: RangeTestParams,
    *,
    batch_size: int | None,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: Any = None,
    x_val: Any = None,
    y_val: Any = None,
    step: str = "auto",
) -> RangeTestResult:
    """Sweep every seed of `config` and return the analysed result; the model is left untouched.

    `x` is arrays (with targets `y` and a `batch_size`), a `tf.data.Dataset` or a
    `keras.utils.PyDataset` (batches of `(x, y)` or `(x, y, sample_weight)`; `y` and
    `batch_size` None). `optimizer` and `loss` default to the compiled model's; the optimizer
    is cloned from its config with a plain float LR that the sweep sets every batch. `x_val,
    y_val` (a small held-out slice, e.g. 2,000 rows) are evaluated every `config.val_every`
    batches for val loss and, for cross-entropy losses, accuracy (which enables Smith's
    accuracy bounds). `step`: "auto" (the fast step unless the model has its own
    `train_step`), "train_step" (always the model's `train_step`) or "fast".
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
            step=step,
        ),
        config,
    )


def sweep(
    model: keras.Model,
    x: Any,
    y: Any,
    config: RangeTestParams,
    *,
    batch_size: int | None,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: Any = None,
    x_val: Any = None,
    y_val: Any = None,
    step: str = "auto",
) -> list[Curve]:
    """Record one raw `Curve` per seed (no analysis); the model is left untouched."""
    if not model.built or not model.variables:
        raise ClrpipeError(
            "model: not built; give it a keras.Input, call model.build(shape) "
            "or call it on a batch first"
        )
    user_opt = optimizer if optimizer is not None else getattr(model, "optimizer", None)
    if user_opt is None:
        raise ClrpipeError("model: not compiled (no optimizer); compile it or pass optimizer=")
    if step not in ("auto", "fast", "train_step"):
        raise ClrpipeError(f"step: expected auto, fast or train_step, got {step!r}")
    custom = has_custom_train_step(model)
    use_train_step = step == "train_step" or (step == "auto" and custom)
    if custom and not use_train_step:
        raise ClrpipeError("step: the model has its own train_step; use step='auto'")
    if loss is not None and use_train_step:
        raise ClrpipeError("loss: the sweep goes through the model's train_step, which uses "
                           "the compiled loss; compile the model with it instead")
    if not _backend.is_tensorflow() and not getattr(model, "compiled", False):
        raise ClrpipeError("model: not compiled; call model.compile(optimizer=..., loss=...) "
                           "first")
    compiled_loss = getattr(model, "loss", None)
    if loss is None and compiled_loss is None and not custom:
        raise ClrpipeError("model: not compiled (no loss); compile it with one or pass loss=")
    out_dim = _out_dim(model)
    source = _source(model, x, y, batch_size, out_dim if loss is not None else None)
    use_val = x_val is not None and config.val_every > 0
    val = None
    if use_val:
        if loss is None and compiled_loss is None:
            raise ClrpipeError("validation: needs a compiled loss (or loss=) to score")
        val = (_as_float(x_val), _align_target(y_val, out_dim))
        _check_width(model, val[0])
        _check_finite("validation_data", val)
    loss_obj = loss if loss is not None else compiled_loss
    loss_fn = _loss_callable(loss) if loss is not None else None
    acc_fn = _accuracy_fn(loss_obj) if loss_obj is not None else None

    with preserved_state(model, user_opt):
        opt = _clone_optimizer(user_opt, config.min_lr)
        opt.build(model.trainable_variables)
        if use_train_step:
            model.optimizer = opt
        train_step = _backend.train_step_fn(model, opt, loss_fn, use_train_step)
        eval_step = _backend.eval_step_fn(model, loss_fn) if use_val else None
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
                    seed, source.batches(rng), lrs, config, opt, train_step, eval_step, acc_fn, val
                )
            )
    return curves


def _sweep_one(seed, batches, lrs, config, opt, train_step, eval_step, acc_fn, val) -> Curve:
    """One seed's sweep: set the LR, train a batch, record, stop at divergence."""
    monitor = DivergenceMonitor(config.beta, config.divergence_factor, config.smoothing)
    losses: list[float] = []
    val_steps: list[int] = []
    val_loss: list[float] = []
    val_acc: list[float] = []
    for step, lr in enumerate(lrs):
        opt.learning_rate = float(lr)
        loss = train_step(next(batches))
        losses.append(loss)
        if val is not None and step % config.val_every == 0:
            v_loss, v_pred = eval_step(val[0], val[1])
            val_steps.append(step)
            val_loss.append(float(v_loss))
            if acc_fn is not None:
                val_acc.append(acc_fn(val[1], keras.ops.convert_to_numpy(v_pred)))
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


# Inputs -----------------------------------------------------------------------------------


class _Arrays:
    """Arrays (or nested structures of them): a new permutation per pass, full batches only."""

    def __init__(self, x, y, batch_size, out_dim):
        self.x = keras.tree.map_structure(_as_float, x)
        self.y = None if y is None else _align_target(y, out_dim)
        rows = {int(np.shape(a)[0]) for a in keras.tree.flatten(self.x)}
        if self.y is not None:
            rows |= {int(np.shape(a)[0]) for a in keras.tree.flatten(self.y)}
        if len(rows) != 1:
            raise ClrpipeError(f"x, y: expected the same number of rows in all, got {rows}")
        n = rows.pop()
        if batch_size is None:
            batch_size = 32
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or \
                not 0 < batch_size <= n:
            raise ClrpipeError(
                f"batch_size: expected an integer from 1 to the training rows ({n}), "
                f"got {batch_size}"
            )
        self.n, self.batch_size = n, batch_size
        _check_finite("x", self.x)
        if self.y is not None:
            _check_finite("y", self.y)

    def batches(self, rng):
        n_batches = self.n // self.batch_size
        order = rng.permutation(self.n)
        step = 0
        while True:
            b = step % n_batches
            if b == 0 and step:
                order = rng.permutation(self.n)
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            xb = keras.tree.map_structure(lambda a, i=idx: a[i], self.x)
            if self.y is None:
                yield (xb,)
            else:
                yield xb, keras.tree.map_structure(lambda a, i=idx: a[i], self.y)
            step += 1


class _PyDataset:
    """A `keras.utils.PyDataset`: its batches in a new random order per pass."""

    def __init__(self, data):
        self.data = data
        self.n = len(data)
        if not self.n:
            raise ClrpipeError("x: the PyDataset is empty")

    def batches(self, rng):
        while True:
            for i in rng.permutation(self.n):
                yield _as_tuple(self.data[int(i)])


class _TFDataset:
    """A `tf.data.Dataset`: its own order, a fresh iterator per seed and when exhausted."""

    def __init__(self, data):
        self.data = data

    def batches(self, rng):
        while True:
            empty = True
            for batch in self.data:
                empty = False
                yield _as_tuple(batch)
            if empty:
                raise ClrpipeError("x: the tf.data.Dataset is empty")


def _as_tuple(batch):
    return tuple(batch) if isinstance(batch, tuple | list) else (batch,)


def _source(model, x, y, batch_size, out_dim):
    tf_data = _backend.is_tf_dataset(x)
    if tf_data or isinstance(x, keras.utils.PyDataset):
        kind = "tf.data.Dataset" if tf_data else "PyDataset"
        if y is not None:
            raise ClrpipeError(f"y: must be None when x is a {kind} (it yields (x, y) batches)")
        if batch_size is not None:
            raise ClrpipeError(f"batch_size: must be None when x is a {kind} (it is batched)")
        return _TFDataset(x) if tf_data else _PyDataset(x)
    _check_width(model, x)
    return _Arrays(x, y, batch_size, out_dim)


def _check_finite(name: str, data: Any) -> None:
    """A one-line error when a float array of `data` holds NaN or infinity."""
    for a in keras.tree.flatten(data):
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(a.size - np.isfinite(a).sum())
            raise ClrpipeError(f"{name}: expected finite values, found {bad} NaN or infinite")


def _check_width(model, x: Any) -> None:
    """A one-line error when array rows do not have the shape the model's single input takes."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1 or isinstance(x, dict | list | tuple):
        return
    expected = tuple(inputs[0].shape[1:])
    got = tuple(np.shape(x)[1:])
    fits = len(expected) == len(got) and all(e is None or e == g for e, g in zip(
        expected, got, strict=True))
    if not fits:
        want = "(n, " + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise ClrpipeError(f"x: expected rows of shape {want} for the model's input, "
                           f"got {tuple(np.shape(x))}")


def _out_dim(model) -> int | None:
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    last = outputs[0].shape[-1]
    return int(last) if last is not None else None


def _as_float(a):
    a = np.asarray(a)
    return a.astype(keras.config.floatx()) if a.dtype.kind == "f" else a


def _clone_optimizer(opt, lr: float):
    """A fresh optimizer of the same class and settings, with a float LR we can set per batch."""
    config = opt.get_config()
    config["learning_rate"] = float(lr)
    return opt.__class__.from_config(config)


def _align_target(y: Any, out_dim: int | None) -> Any:
    """Give a 1-D target the (n, 1) shape of a single-unit output so losses do not broadcast."""
    if isinstance(y, dict | tuple) or not hasattr(y, "__len__"):
        return y  # a structure for a multi-output model, left as the user gave it
    y = np.asarray(y)
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
    return lambda yt, yp: keras.ops.mean(fn(yt, yp))


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

"""The public LR finder: `lr_range_test` (a function) and `LRFinder` (a Keras callback).

Both sweep the learning rate upward every batch, stop at divergence and analyse the curve with
`clrpipe.range_test` into a `RangeTestResult`: `base_lr` and `max_lr` for a cyclical schedule,
each rule's `suggestions`, `confident`, and `plot()`.

`lr_range_test` runs its own sweeps (one per seed) and leaves the model exactly as it was:
weights, optimizer state and every global RNG (`clrpipe.range_test_runner`). `LRFinder` runs
inside your own `model.fit`: one sweep, over the batches your fit feeds it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import keras
import numpy as np
from pydantic import ValidationError

from clrpipe.errors import ClrpipeError
from clrpipe.range_test import Curve, DivergenceMonitor, RangeTestResult, analyse, lr_schedule
from clrpipe.settings import RangeTestParams

__all__ = ["LRFinder", "RangeTestResult", "lr_range_test"]

_DEFAULTS = RangeTestParams()


def _params(**given: Any) -> RangeTestParams:
    """`RangeTestParams` from the keyword arguments that are not None (the rest: defaults)."""
    try:
        return RangeTestParams(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ClrpipeError(f"{where + ': ' if where else ''}{message}") from None


def lr_range_test(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    batch_size: int | None = None,
    validation_data: tuple[Any, Any] | None = None,
    min_lr: float = _DEFAULTS.min_lr,
    max_lr: float = _DEFAULTS.max_lr,
    num_steps: int = _DEFAULTS.num_steps,
    mode: Literal["linear", "exponential"] = _DEFAULTS.mode,
    seeds: int = _DEFAULTS.seeds,
    seed: int = _DEFAULTS.seed,
    smoothing: Literal["log", "linear"] = _DEFAULTS.smoothing,
    beta: float = _DEFAULTS.beta,
    divergence_factor: float = _DEFAULTS.divergence_factor,
    val_every: int = _DEFAULTS.val_every,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: Any = None,
) -> RangeTestResult:
    """LR range test of a compiled Keras 3 model; the model is left exactly as it was.

    Each of `seeds` sweeps (seeds `seed`, `seed + 1`, ...) starts from the model's current
    weights with a fresh clone of its optimizer, raises the LR from `min_lr` to `max_lr` over
    `num_steps` batches (`mode` "exponential" or "linear"), and stops when the loss is NaN or its
    EMA (`beta`, of the log loss for `smoothing="log"`) exceeds `divergence_factor` x its best.
    `x`: NumPy arrays with targets `y` (shuffled per seed, `batch_size` rows a batch, default
    32), a `tf.data.Dataset` or a `keras.utils.PyDataset` of `(x, y)` batches (`y` and
    `batch_size` None). `validation_data=(x_val, y_val)` is scored every `val_every` batches;
    for a cross-entropy loss its accuracy sets the bounds (Smith's rule), else the loss does.
    A model with its own `train_step` is swept through it. Afterwards the weights, optimizer
    variables, metric state, and numpy's, Python's and Keras's global RNGs are as before.
    `optimizer` / `loss` override the compiled ones.

    ```python
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    result = lr_range_test(model, x, y, batch_size=64)
    schedule = CyclicalLearningRate(result.base_lr, result.max_lr, step_size=4 * len(x) // 64)
    print(result.suggestions, result.confident); result.plot()
    ```
    """
    from clrpipe.range_test_runner import run_range_test

    config = _params(
        min_lr=min_lr, max_lr=max_lr, num_steps=num_steps, mode=mode, seeds=seeds, seed=seed,
        smoothing=smoothing, beta=beta, divergence_factor=divergence_factor, val_every=val_every,
    )
    x_val, y_val = _split_validation(validation_data)
    return run_range_test(
        model, x, y, config, batch_size=batch_size, optimizer=optimizer, loss=loss,
        x_val=x_val, y_val=y_val,
    )


def _split_validation(validation_data) -> tuple[Any, Any]:
    if validation_data is None:
        return None, None
    if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
        raise ClrpipeError("validation_data: expected a pair (x_val, y_val) of arrays")
    return validation_data[0], validation_data[1]


class LRFinder(keras.callbacks.Callback):
    """The range test as a callback for your own `model.fit` (like fastai's `LRFinder`).

    From the first batch it sets the optimizer's LR, rising from `min_lr` to `max_lr` over
    `num_steps` batches, resets the model's metrics before each batch so that the batch's logs
    hold its own loss, and stops training at divergence or after `num_steps` batches. At the
    end of `fit` it puts back the model's variables (weights, non-trainable state, dropout
    seed states) and the optimizer's variables (slots, `iterations`, its learning rate) as they
    were when `fit` began, and analyses the sweep into `result` (one seed: the order your fit
    fed). It cannot put back the RNG: `fit` itself draws from it (shuffling, dropout) and
    that belongs to your run. The optimizer's LR must be a float, not a schedule. With
    `steps_per_execution` > 1 Keras calls batch hooks once per execution: the LR then changes
    once per execution and each recorded loss is the mean over those batches.

    ```python
    finder = LRFinder(min_lr=1e-5, max_lr=1.0, num_steps=200)
    model.fit(x, y, batch_size=64, epochs=100, callbacks=[finder], verbose=0)
    finder.result.base_lr, finder.result.max_lr
    ```
    """

    def __init__(
        self,
        min_lr: float = _DEFAULTS.min_lr,
        max_lr: float = _DEFAULTS.max_lr,
        num_steps: int = _DEFAULTS.num_steps,
        mode: Literal["linear", "exponential"] = _DEFAULTS.mode,
        smoothing: Literal["log", "linear"] = _DEFAULTS.smoothing,
        beta: float = _DEFAULTS.beta,
        divergence_factor: float = _DEFAULTS.divergence_factor,
        restore: bool = True,
    ) -> None:
        super().__init__()
        self.config = _params(
            min_lr=min_lr, max_lr=max_lr, num_steps=num_steps, mode=mode, smoothing=smoothing,
            beta=beta, divergence_factor=divergence_factor, seeds=1, val_every=0,
        )
        self.restore = restore
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._result: RangeTestResult | None = None
        self._error: ClrpipeError | None = None

    @property
    def result(self) -> RangeTestResult:
        """The analysed sweep (after `fit`); raises `ClrpipeError` if it gave no usable curve."""
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise ClrpipeError("LRFinder: no result yet; pass it to model.fit(callbacks=[...])")
        return self._result

    def on_train_begin(self, logs=None) -> None:
        opt = self.model.optimizer
        if not opt.built:
            opt.build(self.model.trainable_variables)
        self._saved_model = [v.numpy() for v in self.model.variables]
        self._saved_opt = [v.numpy() for v in opt.variables]
        self._saved_lr = float(opt.learning_rate)
        try:
            opt.learning_rate = float(self.config.min_lr)
        except (TypeError, AttributeError) as err:
            raise ClrpipeError(
                "LRFinder: the optimizer's learning rate is a schedule; compile with a float "
                "learning rate for the sweep"
            ) from err
        self._schedule = lr_schedule(self.config)
        self._monitor = DivergenceMonitor(
            self.config.beta, self.config.divergence_factor, self.config.smoothing
        )
        self.lrs, self.losses = [], []
        self._result, self._error = None, None

    def on_train_batch_begin(self, batch, logs=None) -> None:
        step = len(self.losses)
        if step >= len(self._schedule):
            self.model.stop_training = True
            return
        self.model.reset_metrics()
        self.model.optimizer.learning_rate = float(self._schedule[step])

    def on_train_batch_end(self, batch, logs=None) -> None:
        step = len(self.losses)
        if step >= len(self._schedule):
            return
        loss = float((logs or {}).get("loss", math.nan))
        self.lrs.append(float(self._schedule[step]))
        self.losses.append(loss)
        if self._monitor.update(loss) or len(self.losses) >= len(self._schedule):
            self.model.stop_training = True

    def on_train_end(self, logs=None) -> None:
        if self.restore:
            for var, value in zip(self.model.variables, self._saved_model, strict=True):
                var.assign(value)
            opt_vars = self.model.optimizer.variables
            for var, value in zip(opt_vars, self._saved_opt, strict=True):
                var.assign(value)
            self.model.optimizer.learning_rate = self._saved_lr
        curve = Curve(seed=0, lrs=np.array(self.lrs), losses=np.array(self.losses))
        try:
            self._result = analyse([curve], self.config)
        except ClrpipeError as err:
            self._error = err

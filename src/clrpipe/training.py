"""Training core: fit a compiled model on in-memory arrays and record what a comparison needs.

No files and no tracking here: the `train` stage logs what `fit` returns. The fast path is
`steps_per_execution` (many batches per compiled call) on in-memory float32 arrays; it gives the
same weights as a plain `model.fit` for the same seed, several times faster on a CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from clrpipe.errors import ClrpipeError


@dataclass
class History:
    """Per-epoch metrics, epoch seconds, and the learning rate read from the optimizer."""

    epochs: dict[str, list[float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    lr_steps: list[int] = field(default_factory=list)
    lr_values: list[float] = field(default_factory=list)


class _Recorder(keras.callbacks.Callback):
    """Collects epoch metrics and times, stops on NaN, and after every compiled call reads the
    LR the optimizer applies at its next step (`iterations`), logged with that step."""

    def __init__(self, history: History, on_epoch=None):
        super().__init__()
        self.history = history
        self.on_epoch = on_epoch
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.history.lr_steps.append(int(optimizer.iterations))
        self.history.lr_values.append(float(optimizer.learning_rate))
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise ClrpipeError(
                f"training diverged: loss is {float(loss)} at step {int(optimizer.iterations)}; "
                "lower the learning rate (schedule.maximal_learning_rate or train.*.learning_rate)"
            )

    def on_epoch_end(self, epoch, logs=None):
        self.history.epoch_seconds.append(time.perf_counter() - self._start)
        for name, value in (logs or {}).items():
            self.history.epochs.setdefault(name, []).append(float(value))
        if self.on_epoch is not None:
            self.on_epoch(epoch, logs or {}, self.history.epoch_seconds[-1])


def compile_model(model, optimizer, steps_per_execution: int = 1, jit_compile=False) -> None:
    """Binary cross-entropy and accuracy, as in the article."""
    model.compile(
        optimizer=optimizer,
        loss="binary_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    initial_epoch: int = 0,
    on_epoch=None,
) -> History:
    """Train a compiled model; `on_epoch(epoch, logs, seconds)` is called after each epoch."""
    history = History()
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        initial_epoch=initial_epoch,
        validation_data=validation,
        shuffle=True,
        verbose=0,
        callbacks=[_Recorder(history, on_epoch)],
    )
    return history


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Loss and accuracy on held-out data."""
    loss, accuracy = model.evaluate(x, y, batch_size=4096, verbose=0)
    return {"loss": float(loss), "accuracy": float(accuracy)}

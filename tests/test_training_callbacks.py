"""`training.fit(callbacks=...)` against Keras's own `model.fit` with the same callbacks: same
weights, same hook calls with the same logs, same early stop, same checkpoint."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from clrpipe.pipeline.params import BuiltinModel
from clrpipe.pipeline.training import loop
from clrpipe.pipeline.training.model import build_model

PARAMS = BuiltinModel(units=[16, 8], dropout=0.2)


class Recorder(keras.callbacks.Callback):
    """Every hook call with its argument and logs, as plain Python values."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def _log(self, hook, arg=None, logs=None):
        self.calls.append((hook, arg, {k: float(v) for k, v in (logs or {}).items()}))

    def on_train_begin(self, logs=None):
        self._log("train_begin", None, logs)

    def on_train_end(self, logs=None):
        self._log("train_end", None, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._log("epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._log("epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._log("batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._log("batch_end", batch, logs)

    def on_test_begin(self, logs=None):
        self._log("test_begin", None, logs)


class StopAt(keras.callbacks.Callback):
    """Sets `model.stop_training` after a given batch of a given epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) >= self.at:
            self.model.stop_training = True


def _model(x, steps_per_execution):
    model = build_model(PARAMS, x.shape[1], seed=7)
    loop.compile_model(model, keras.optimizers.SGD(0.05, momentum=0.9), steps_per_execution)
    return model


def _callbacks(path):
    return [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, min_delta=0.002,
                                      restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(path, monitor="val_loss", save_best_only=True),
        Recorder(),
    ]


@pytest.mark.parametrize("steps_per_execution", [1, 7])
def test_early_stopping_checkpoint_and_hooks_match_keras_fit(data, tmp_path, steps_per_execution):
    x, y, x_val, y_val = data
    theirs = _model(x, steps_per_execution)
    their_cbs = _callbacks(tmp_path / "theirs.keras")
    logs = theirs.fit(x, y, batch_size=32, epochs=30, shuffle=True, verbose=0,
                      validation_data=(x_val, y_val), callbacks=their_cbs).history
    ours = _model(x, steps_per_execution)
    our_cbs = _callbacks(tmp_path / "ours.keras")
    history = loop.fit(ours, x, y, epochs=30, batch_size=32, validation=(x_val, y_val),
                           callbacks=our_cbs)

    assert 0 < their_cbs[0].stopped_epoch < 29  # early stopping did stop training
    assert our_cbs[0].stopped_epoch == their_cbs[0].stopped_epoch
    assert our_cbs[0].best_epoch == their_cbs[0].best_epoch
    assert history.epochs == logs
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the restored best weights, bit for bit
    assert our_cbs[2].calls == their_cbs[2].calls  # same hooks, arguments and logs, in order
    hooks = [c[0] for c in our_cbs[2].calls]
    assert hooks[0] == "train_begin" and hooks[-1] == "train_end"
    batch_ends = [c[1] for c in our_cbs[2].calls[:40] if c[0] == "batch_end"]
    assert batch_ends[:2] == [steps_per_execution - 1, 2 * steps_per_execution - 1]
    saved_ours = keras.saving.load_model(tmp_path / "ours.keras")
    saved_theirs = keras.saving.load_model(tmp_path / "theirs.keras")
    for a, b in zip(saved_ours.get_weights(), saved_theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_callback_stopping_mid_epoch_stops_where_keras_stops(data):
    x, y, _, _ = data
    theirs = _model(x, 4)
    theirs.fit(x, y, batch_size=32, epochs=5, shuffle=True, verbose=0, callbacks=[StopAt(1, 11)])
    ours = _model(x, 4)
    history = loop.fit(ours, x, y, epochs=5, batch_size=32, callbacks=[StopAt(1, 11)])
    assert len(history.epoch_seconds) == 2
    assert int(ours.optimizer.iterations) == int(theirs.optimizer.iterations) == 32 + 12
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_callbacks_see_the_pipeline_on_epoch_logs_and_may_add_to_them(data):
    """A callback that adds a key in `on_epoch_end` (as ReduceLROnPlateau adds
    `learning_rate`) adds it to the History too, as in Keras's History callback."""
    x, y, x_val, y_val = data
    seen = []

    class AddKey(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["twice_loss"] = 2 * logs["loss"]

    model = _model(x, 8)
    history = loop.fit(model, x, y, epochs=2, batch_size=32, validation=(x_val, y_val),
                           callbacks=[AddKey()], on_epoch=lambda e, logs, s: seen.append(logs))
    assert history.epochs["twice_loss"] == [2 * v for v in history.epochs["loss"]]
    assert [set(logs) for logs in seen] == [{"loss", "accuracy", "val_loss", "val_accuracy",
                                             "twice_loss"}] * 2

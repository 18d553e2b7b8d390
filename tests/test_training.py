"""The fast training loop against Keras's own `model.fit`: same weights, same logs (dropout's
random masks included)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from clrpipe import keras_private, schedules
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.params import BuiltinModel
from clrpipe.pipeline.training import loop
from clrpipe.pipeline.training.model import build_model
from tests.conftest import FIT_ROWS as ROWS

PARAMS = BuiltinModel(units=[16, 8])


def triangular():
    return schedules.CyclicalLearningRate(0.01, 0.2, step_size=20)


def keras_fit(data, batch_size, learning_rate, epochs=3, params=PARAMS):
    x, y, x_val, y_val = data
    model = build_model(params, x.shape[1], seed=7)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
                  loss="binary_crossentropy", metrics=["accuracy"])
    logs = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
                     validation_data=(x_val, y_val)).history
    return model.get_weights(), logs


def clrpipe_fit(data, batch_size, learning_rate, steps_per_execution, epochs=3, params=PARAMS):
    x, y, x_val, y_val = data
    model = build_model(params, x.shape[1], seed=7)
    optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)
    loop.compile_model(model, optimizer, steps_per_execution)
    history = loop.fit(model, x, y, epochs=epochs, batch_size=batch_size,
                           validation=(x_val, y_val))
    return model, history


REGULARIZED = BuiltinModel(units=[16, 8], dropout=0.2, l2=1e-3)


@pytest.mark.parametrize(
    ("batch_size", "learning_rate", "steps_per_execution", "params"),
    [(32, 0.05, 1, PARAMS), (32, 0.05, 7, PARAMS), (32, triangular, 64, PARAMS),
     (100, triangular, 3, PARAMS), (32, triangular, 16, REGULARIZED)],
)
def test_weights_and_epoch_logs_equal_keras_fit_bit_for_bit(
    data, batch_size, learning_rate, steps_per_execution, params
):
    rate = learning_rate() if callable(learning_rate) else learning_rate
    expected_weights, expected_logs = keras_fit(data, batch_size, rate, params=params)
    rate = learning_rate() if callable(learning_rate) else learning_rate
    model, history = clrpipe_fit(data, batch_size, rate, steps_per_execution, params=params)
    for ours, theirs in zip(model.get_weights(), expected_weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert history.epochs == expected_logs
    assert len(history.epoch_seconds) == 3


def test_lr_is_recorded_after_every_compiled_call_with_its_step(data):
    steps = -(-ROWS // 32)  # 32 batches per epoch: calls of 7 end at 7, 14, ..., 28, 32
    model, history = clrpipe_fit(data, 32, triangular(), steps_per_execution=7, epochs=2)
    ends = [7, 14, 21, 28, 32]
    assert history.lr_steps == ends + [steps + end for end in ends]
    schedule = keras_private.learning_rate_schedule(model.optimizer)
    expected = [float(schedule(step)) for step in history.lr_steps]
    assert history.lr_values == pytest.approx(expected, rel=1e-6)


def test_epoch_orders_are_one_permutation_repeated_under_a_global_seed(data):
    """Keras 3's array shuffle, with `keras.utils.set_random_seed` set, draws the same order at
    every epoch (a fresh iterator re-seeds its shuffle); `fit` reproduces that, as the
    bit-identity with `model.fit` above shows. A new seed gives a new order."""
    keras.utils.set_random_seed(3)
    orders = loop.epoch_orders(50)
    first, second = (next(iter(orders)).numpy() for _ in range(2))
    assert sorted(first) == list(range(50))
    assert list(first) != list(range(50))
    np.testing.assert_array_equal(first, second)
    keras.utils.set_random_seed(4)
    assert list(next(iter(loop.epoch_orders(50))).numpy()) != list(first)


def test_reshuffle_leaves_keras_order_and_is_reproducible(data):
    x, y, _, _ = data

    def weights_after(epochs, reshuffle_seed):
        model = build_model(PARAMS, x.shape[1], seed=7)
        loop.compile_model(model, keras.optimizers.SGD(0.05), steps_per_execution=8)
        loop.fit(model, x, y, epochs=epochs, batch_size=32, reshuffle_seed=reshuffle_seed)
        return model.get_weights()

    keras_order = weights_after(2, None)
    reshuffled = weights_after(2, 11)
    assert any(not np.array_equal(a, b) for a, b in zip(keras_order, reshuffled, strict=True))
    for again, first in zip(weights_after(2, 11), reshuffled, strict=True):
        np.testing.assert_array_equal(again, first)


def test_divergence_stops_with_an_error_naming_the_step_and_the_keys(data):
    x, y, _, _ = data
    model = build_model(PARAMS, x.shape[1], seed=7)
    loop.compile_model(model, keras.optimizers.SGD(1e30), steps_per_execution=4)
    with pytest.raises(ClrpipeError, match=r"training diverged: loss is nan at step 4; .*"
                                           r"schedule\.maximal_learning_rate"):
        loop.fit(model, x, y, epochs=1, batch_size=32)


def test_regularized_model_has_dropout_after_each_hidden_layer_and_l2_on_their_kernels():
    model = build_model(REGULARIZED, 5, seed=0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [layer.rate for layer in dropouts] == [0.2, 0.2]
    hidden = [layer for layer in model.layers[:-1] if type(layer).__name__ == "Dense"]
    assert [layer.kernel_regularizer.l2 for layer in hidden] == pytest.approx([1e-3, 1e-3])
    assert model.layers[-1].kernel_regularizer is None
    assert len(model.get_weights()) == len(build_model(PARAMS, 5, seed=0).get_weights())


@pytest.mark.parametrize(("rows", "batch_size"), [(0, 32), (10, 0)])
def test_no_rows_or_no_batch_size_is_refused(rows, batch_size):
    model = build_model(PARAMS, 5, seed=0)
    loop.compile_model(model, keras.optimizers.SGD(0.01))
    x = np.zeros((rows, 5), "float32")
    with pytest.raises(ClrpipeError, match=rf"got {rows} rows and batch size {batch_size}"):
        loop.fit(model, x, x[:, 0], epochs=1, batch_size=batch_size)

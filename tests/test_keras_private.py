"""Guards for every private Keras API clrpipe uses (`clrpipe.keras_private`): when a Keras
release moves one, this names the Keras version and the missing piece."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from clrpipe import keras_private

VERSION = f"Keras {keras.__version__}"


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model


def test_epoch_order_dataset_yields_a_permutation():
    order = next(iter(keras_private.epoch_order_dataset(20))).numpy()
    assert sorted(order) == list(range(20)), VERSION


def test_global_seed_generator_round_trips():
    keras.random.uniform((1,))
    gen = keras_private.global_seed_generator()
    assert gen is not None and hasattr(gen, "state"), VERSION
    keras_private.set_global_seed_generator(None)
    assert keras_private.global_seed_generator() is None, VERSION
    keras_private.set_global_seed_generator(gen)
    assert keras_private.global_seed_generator() is gen, VERSION


def test_slot_and_learning_rate_schedule():
    model = _model()
    opt = model.optimizer
    opt.build(model.trainable_variables)
    var = model.trainable_variables[0]
    assert keras_private.slot(opt, opt.momentums, var).shape == var.shape, VERSION
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    assert keras_private.learning_rate_schedule(keras.optimizers.SGD(schedule)) is schedule


@pytest.mark.parametrize("training", [True, False])
def test_compute_loss_is_the_loss_keras_reports(training):
    model = _model()
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.arange(8) % 2
    assert keras_private.call_has_training_arg(model) is True, VERSION
    loss = keras_private.compute_loss(model, x, y, model(x), None, training)
    expected = model.evaluate(x, y, batch_size=8, verbose=0)
    assert float(loss) == pytest.approx(expected, rel=1e-6), VERSION

"""Guards for `clrpipe.keras_private`: each private Keras name clrpipe relies on still exists and
behaves as used. A failure names the Keras version and the moved name, so an upgrade fails
here, not deep inside a training run."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from clrpipe import keras_private
from clrpipe.pipeline import params

VERSION = f"Keras {keras.__version__}"


def _moved(what: str) -> str:
    return f"{VERSION}: {what} moved or changed; update clrpipe/keras_private.py"


def test_array_adapter_gives_the_order_fit_uses():
    try:
        from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter
    except ImportError as err:
        pytest.fail(_moved(f"keras.src...ArrayDataAdapter ({err})"))
    assert callable(ArrayDataAdapter)
    keras.utils.set_random_seed(3)
    order = next(iter(keras_private.epoch_order_dataset(50))).numpy()
    assert sorted(order.tolist()) == list(range(50)), _moved("ArrayDataAdapter's shuffle")
    assert order.tolist() != list(range(50))


def test_global_seed_generator_round_trips():
    try:
        from keras.src.backend.common import global_state
    except ImportError as err:
        pytest.fail(_moved(f"keras.src.backend.common.global_state ({err})"))
    assert hasattr(global_state, "get_global_attribute"), _moved("get_global_attribute")
    keras.random.uniform((1,))  # make Keras create its global generator
    generator = keras_private.global_seed_generator()
    assert generator is not None and hasattr(generator, "state"), _moved("global seed generator")
    keras_private.set_global_seed_generator(None)
    assert keras_private.global_seed_generator() is None
    keras_private.set_global_seed_generator(generator)
    assert keras_private.global_seed_generator() is generator


def test_optimizer_slot_and_schedule_lookups():
    optimizer = keras.optimizers.SGD(learning_rate=keras.optimizers.schedules.ExponentialDecay(
        0.1, 10, 0.5), momentum=0.9)
    variables = [keras.Variable(np.zeros(3)), keras.Variable(np.ones(2))]
    optimizer.build(variables)
    assert hasattr(optimizer, "_get_variable_index"), _moved("Optimizer._get_variable_index")
    assert keras_private.slot(optimizer, optimizer.momentums, variables[1]) is \
        optimizer.momentums[1], _moved("Optimizer._get_variable_index")
    schedule = keras_private.learning_rate_schedule(optimizer)
    assert isinstance(schedule, keras.optimizers.schedules.ExponentialDecay), \
        _moved("Optimizer._learning_rate")


def test_built_variables_are_the_ones_apply_updates_without_variables():
    variables = [keras.Variable(np.zeros(3)), keras.Variable(np.ones(2))]
    optimizer = keras.optimizers.SGD(0.5)
    optimizer.build(variables)
    assert hasattr(optimizer, "_trainable_variables"), _moved("Optimizer._trainable_variables")
    found = keras_private.built_variables(optimizer)
    assert [id(v) for v in found] == [id(v) for v in variables], \
        _moved("Optimizer._trainable_variables")
    optimizer.apply([np.ones(3), np.ones(2)])
    assert variables[0].numpy().tolist() == [-0.5] * 3


def test_config_name_lists_match_keras():
    """params.py checks activation and initializer names without importing Keras."""
    from keras.src.activations import ALL_OBJECTS_DICT as activations
    from keras.src.initializers import ALL_OBJECTS_DICT as initializers

    assert set(params.ACTIVATIONS) == set(activations), _moved("the activation names")
    usable = {name for name in initializers if name.islower() and name not in (
        "initializer", "stft")}
    assert set(params.INITIALIZERS) == usable, _moved("the initializer names")


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("training", [True, False])
def test_compute_loss_is_the_loss_keras_reports(training):
    model = _model()
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.arange(8) % 2
    assert keras_private.call_has_training_arg(model) is True, VERSION
    loss = keras_private.compute_loss(model, x, y, model(x), None, training)
    expected = model.evaluate(x, y, batch_size=8, verbose=0)
    assert float(loss) == pytest.approx(expected, rel=1e-6), VERSION

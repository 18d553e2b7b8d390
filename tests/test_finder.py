"""The public finder on real Keras training (scikit-learn's 8x8 digits): `lr_range_test` on a
convolutional network, a subclassed model with its own `train_step`, `tf.data` and `PyDataset`
input, several optimizers; the `LRFinder` callback in a user's `fit`. Each leaves the model's
state (and, for `lr_range_test`, every RNG) bit for bit as it was, gives finite bounds, and CLR
training with them reaches a stated accuracy."""

from __future__ import annotations

import math
import random

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from clrpipe import CyclicalLearningRate, LRFinder, keras_private, lr_range_test
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.params import RangeTestParams
from clrpipe.range_test_runner import sweep

BATCH = 64
TRAIN = 1400
# Test accuracy of 8 epochs (one CLR cycle, step_size 4 epochs) at the found bounds, measured
# 2026-12-01 (Keras 3.15, TF 2.21, 2 CPU cores): conv + Adam 0.927, subclassed + AdamW 0.884,
# tf.data 0.924, PyDataset 0.914, LRFinder's bounds 0.960. Asserted with a margin:
MIN_ACCURACY = 0.85


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.images[..., None] / 16.0).astype("float32")
    y = d.target.astype("int64")
    return x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:]


def conv_net(seed=0, optimizer=None):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=optimizer or keras.optimizers.Adam(),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class CustomStepNet(keras.Model):
    """Subclassed, with its own train_step (loss tracker, gradient clipping); counts traces."""

    traced = 0

    def __init__(self):
        super().__init__()
        self.flat = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(64, activation="relu")
        self.drop = keras.layers.Dropout(0.2)
        self.out = keras.layers.Dense(10, activation="softmax")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, x, training=False):
        return self.out(self.drop(self.hidden(self.flat(x)), training=training))

    def train_step(self, data):
        CustomStepNet.traced += 1
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        grads = [tf.clip_by_norm(g, 5.0) for g in grads]
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]


def custom_net(seed=0):
    keras.utils.set_random_seed(seed)
    model = CustomStepNet()
    model(np.zeros((1, 8, 8, 1), "float32"))
    model.compile(optimizer=keras.optimizers.AdamW(weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy")
    return model


class DigitBatches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i):
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


# State: snapshot, compare --------------------------------------------------------------------


def snapshot(model):
    gen = keras_private.global_seed_generator()
    return {
        "model": [v.numpy().copy() for v in model.variables],
        "optimizer": [v.numpy().copy() for v in model.optimizer.variables],
        "metrics": [v.numpy().copy() for m in model.metrics for v in m.variables],
        "np": np.random.get_state(),
        "py": random.getstate(),
        "keras": None if gen is None else gen.state.numpy().copy(),
    }


def next_draws():
    return (np.random.random(4).tolist(), [random.random() for _ in range(4)],
            keras.ops.convert_to_numpy(keras.random.uniform((4,))).tolist())


def assert_unchanged(model, before, rng=True):
    """Model and optimizer variables equal bit for bit; with `rng`, metric state too and the
    next random draws equal those the RNGs gave from their states before the test."""
    after = snapshot(model)
    for key in ("model", "optimizer", "metrics") if rng else ("model", "optimizer"):
        assert len(after[key]) == len(before[key]), key
        for a, b in zip(after[key], before[key], strict=True):
            np.testing.assert_array_equal(a, b)
    if not rng:
        return
    draws_now = next_draws()
    np.random.set_state(before["np"])
    random.setstate(before["py"])
    keras_private.global_seed_generator().state.assign(before["keras"])
    assert next_draws() == draws_now


def prepared(model, x, y):
    """A model that has trained a little (optimizer slots and metrics non-zero) and a global
    Keras seed generator that exists, so the test has real state to disturb."""
    model.fit(x[:512], y[:512], batch_size=BATCH, epochs=1, verbose=0)
    keras.random.uniform((1,))
    return model


def assert_usable(result):
    assert math.isfinite(result.base_lr) and math.isfinite(result.max_lr)
    assert 0 < result.base_lr < result.max_lr
    assert set(result.suggestions) >= {"steepest", "valley", "minimum", "loss_max"}
    assert isinstance(result.confident, bool)


def clr_accuracy(build, bounds, data, seed=1, epochs=8):
    """Test accuracy after `epochs` of CLR (triangular, step_size 4 epochs) at `bounds`."""
    x, y, x_test, y_test = data
    model = build(seed)
    schedule = CyclicalLearningRate(*bounds, step_size=4 * math.ceil(len(x) / BATCH))
    optimizer = type(model.optimizer).from_config(
        {**model.optimizer.get_config(), "learning_rate": schedule})
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=None if isinstance(model, CustomStepNet) else ["accuracy"])
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    print(f"CLR {bounds[0]:.3g}..{bounds[1]:.3g}: test accuracy {accuracy:.4f}")
    return accuracy


# lr_range_test -----------------------------------------------------------------------------


def test_conv_net_with_adam_on_arrays(digits):
    x, y, x_test, y_test = digits
    model = prepared(conv_net(), x, y)
    before = snapshot(model)
    result = lr_range_test(model, x, y, batch_size=BATCH, validation_data=(x_test, y_test))
    assert_unchanged(model, before)
    assert_usable(result)
    assert result.rule == "accuracy" and len(result.analyses) == 3
    assert all(a.diverged for a in result.analyses)
    assert clr_accuracy(conv_net, (result.base_lr, result.max_lr), digits) >= MIN_ACCURACY


def test_later_training_is_bit_identical_to_training_without_the_test(digits):
    """Also TensorFlow's own RNGs (op seeds under a global seed, the global Generator), which
    the sweep does not touch."""
    x, y, _, _ = digits

    def world(with_test):
        model = prepared(conv_net(3), x, y)  # conv_net seeds TensorFlow's op seeds too
        tf.random.set_global_generator(tf.random.Generator.from_seed(11))
        if with_test:
            lr_range_test(model, x, y, batch_size=BATCH, num_steps=60, seeds=2)
        draws = (*next_draws(), tf.random.uniform((4,)).numpy().tolist(),
                 tf.random.get_global_generator().normal((4,)).numpy().tolist())
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        return draws, [v.numpy() for v in model.variables + model.optimizer.variables]

    (draws_a, state_a), (draws_b, state_b) = world(False), world(True)
    assert draws_a == draws_b
    for a, b in zip(state_a, state_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_subclassed_model_is_swept_through_its_own_train_step(digits):
    x, y, x_test, y_test = digits
    model = prepared(custom_net(), x, y)
    before, traced = snapshot(model), CustomStepNet.traced
    result = lr_range_test(model, x, y, batch_size=BATCH, validation_data=(x_test, y_test))
    assert CustomStepNet.traced > traced  # the sweep traced (and so ran) the model's train_step
    assert model.optimizer.__class__ is keras.optimizers.AdamW  # its own optimizer is back
    assert_unchanged(model, before)
    assert_usable(result)
    assert clr_accuracy(custom_net, (result.base_lr, result.max_lr), digits) >= MIN_ACCURACY


def test_tf_data_input(digits):
    x, y, x_test, y_test = digits
    dataset = (tf.data.Dataset.from_tensor_slices((x, y))
               .shuffle(len(x), seed=5, reshuffle_each_iteration=False).batch(BATCH))
    model = prepared(conv_net(), x, y)
    before = snapshot(model)
    result = lr_range_test(model, dataset, validation_data=(x_test, y_test))
    assert_unchanged(model, before)
    assert_usable(result)
    assert clr_accuracy(conv_net, (result.base_lr, result.max_lr), digits) >= MIN_ACCURACY


def test_py_dataset_input(digits):
    x, y, x_test, y_test = digits
    batches = DigitBatches(x, y, BATCH)
    model = prepared(conv_net(), x, y)
    before = snapshot(model)
    result = lr_range_test(model, batches, validation_data=(x_test, y_test))
    assert_unchanged(model, before)
    assert_usable(result)
    first = [a.curve.losses[:5] for a in result.analyses]
    assert not np.array_equal(first[0], first[1])  # seeds visit the batches in other orders
    assert clr_accuracy(conv_net, (result.base_lr, result.max_lr), digits) >= MIN_ACCURACY


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
    lambda: keras.optimizers.AdamW(weight_decay=1e-3),
    lambda: keras.optimizers.RMSprop(),
    lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-3, 100, 0.9)),
], ids=["sgd", "adamw", "rmsprop", "adam-with-schedule"])
def test_functional_two_input_model_with_each_optimizer(digits, optimizer):
    x, y, _, _ = digits
    keras.utils.set_random_seed(0)
    image, extra = keras.Input((8, 8, 1), name="image"), keras.Input((2,), name="extra")
    hidden = keras.layers.Dense(32, activation="relu")(
        keras.layers.Concatenate()([keras.layers.Flatten()(image), extra]))
    model = keras.Model({"image": image, "extra": extra},
                        keras.layers.Dense(10, activation="softmax")(hidden))
    model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
    inputs = {"image": x, "extra": np.zeros((len(x), 2), "float32")}
    model.fit(inputs, y, batch_size=BATCH, epochs=1, verbose=0)
    keras.random.uniform((1,))
    before = snapshot(model)
    result = lr_range_test(model, inputs, y, batch_size=BATCH, num_steps=150, seeds=2,
                           min_lr=1e-5, max_lr=10.0)
    assert_unchanged(model, before)
    assert_usable(result)


def test_fast_step_is_bit_identical_to_keras_train_step(digits):
    """A plain model is swept by Keras's train_step minus its metrics: same losses, bit for bit,
    as sweeping through `model.train_step` itself (dropout and L2 included)."""
    x, y, _, _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3)),
        keras.layers.Dropout(0.3), keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    cfg = RangeTestParams(num_steps=80, seeds=2, min_lr=1e-3, max_lr=3.0)
    fast = sweep(model, x, y, cfg, batch_size=BATCH, step="fast")
    own = sweep(model, x, y, cfg, batch_size=BATCH, step="train_step")
    for a, b in zip(fast, own, strict=True):
        np.testing.assert_array_equal(a.losses, b.losses)


def test_bad_arguments_are_one_line_errors(digits):
    x, y, _, _ = digits
    model = conv_net()
    with pytest.raises(ClrpipeError, match=r"^min_lr: .*expected > 0"):
        lr_range_test(model, x, y, min_lr=0.0)
    with pytest.raises(ClrpipeError, match=r"^batch_size: must be None when x is a PyDataset"):
        lr_range_test(model, DigitBatches(x, y, BATCH), batch_size=32)
    with pytest.raises(ClrpipeError, match=r"not built"):
        lr_range_test(CustomStepNet(), x, y)
    with pytest.raises(ClrpipeError, match=r"^x: expected rows of shape \(n, 8, 8, 1\) .*got \("):
        lr_range_test(model, x[:, :6], y, batch_size=32)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ClrpipeError, match=r"^x: expected finite values, found 1 NaN or inf"):
        lr_range_test(model, bad, y, batch_size=32)
    with pytest.raises(ClrpipeError, match=r"^min_lr: expected < range_test.max_lr \(0.1\)"):
        lr_range_test(model, x, y, min_lr=1.0, max_lr=0.1)
    with pytest.raises(ClrpipeError, match=r"^model: not compiled \(no optimizer\)"):
        lr_range_test(keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                        keras.layers.Dense(10)]), x, y)


# LRFinder ----------------------------------------------------------------------------------


def test_lr_finder_callback_in_a_users_fit(digits):
    x, y, _, _ = digits
    model = prepared(conv_net(), x, y)
    before = snapshot(model)
    lr_before = float(model.optimizer.learning_rate)
    finder = LRFinder(min_lr=1e-5, max_lr=10.0, num_steps=300)
    history = model.fit(x, y, batch_size=BATCH, epochs=100, verbose=0, callbacks=[finder])
    assert len(history.epoch) < 100  # stopped at divergence, not after 100 epochs
    assert 20 < len(finder.losses) < 300 and finder.lrs == sorted(finder.lrs)
    assert_unchanged(model, before, rng=False)  # weights, optimizer; RNG, metrics: fit's
    assert float(model.optimizer.learning_rate) == lr_before
    result = finder.result
    assert_usable(result)
    assert result.analyses[0].diverged
    assert clr_accuracy(conv_net, (result.base_lr, result.max_lr), digits) >= MIN_ACCURACY


def test_lr_finder_refuses_a_schedule_and_reports_no_result_before_fit(digits):
    x, y, _, _ = digits
    finder = LRFinder()
    with pytest.raises(ClrpipeError, match="no result yet"):
        _ = finder.result
    model = conv_net(optimizer=keras.optimizers.Adam(CyclicalLearningRate(1e-4, 1e-2, 10)))
    with pytest.raises(ClrpipeError, match="learning rate is a schedule"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[finder])

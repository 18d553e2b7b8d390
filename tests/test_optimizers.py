"""clrpipe.optimizers: building by name, packed networks moving as if alone, and the weights
each optimizer evaluates with (in `training.fit` and `training.evaluate` too). Parity with the
PyTorch references is in test_optimizers_parity.py."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from clrpipe import optimizers
from clrpipe.errors import ClrpipeError
from clrpipe.optimizers import (
    NAMES,
    Prodigy,
    ScheduleFreeAdamW,
    build_optimizer,
    evaluation_weights,
    finalize,
    muon_exclusions,
)
from clrpipe.pipeline.data.tasks import OutputSpec
from clrpipe.pipeline.training import loop

FEATURES = 5
REGRESSION = OutputSpec("regression")


def _network(prefix: str, seed: int):
    """Two Dense layers named `<prefix>hidden`, `<prefix>out`, initialised from `seed`."""
    init = keras.initializers.GlorotUniform
    return [keras.layers.Dense(8, activation="tanh", name=f"{prefix}hidden",
                               kernel_initializer=init(seed),
                               bias_initializer=keras.initializers.RandomNormal(0, 0.1, seed)),
            keras.layers.Dense(3, name=f"{prefix}out", kernel_initializer=init(seed + 1))]


def _model(prefixes_and_seeds) -> keras.Model:
    """The networks side by side on one input, outputs stacked (batch, copies, 3)."""
    inputs = keras.Input((FEATURES,))
    outs = []
    for prefix, seed in prefixes_and_seeds:
        hidden = inputs
        for layer in _network(prefix, seed):
            hidden = layer(hidden)
        outs.append(hidden)
    stacked = keras.layers.Lambda(lambda parts: keras.ops.stack(parts, axis=1))(outs)
    return keras.Model(inputs, stacked)


def _group_of(variable) -> str:
    return variable.path.split("_", 1)[0]


def _data(seed=0, rows=64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2], np.tanh(x[:, 3])], 1).astype(np.float32)
    return x, y


def _train(model, optimizer, steps, copies):
    """`steps` full-batch steps of the summed squared error of the copies (each copy's gradient
    is its own loss's), compiled as `training.fit` compiles them."""
    x, y = _data()
    optimizer.build(model.trainable_variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = model(x)
            loss = sum(keras.ops.mean(keras.ops.square(out[:, i] - y)) for i in range(copies))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    for _ in range(steps):
        step()


def _build(name, model, group_of=None):
    options = {"exclude_layers": muon_exclusions(model, group_of)} if name == "muon" else {}
    rate = {"prodigy": 1.0}.get(name, 3e-3)
    return build_optimizer(name, rate, momentum=0.9 if name == "sgd" else 0.0,
                           group_of=group_of, **options)


@pytest.mark.parametrize("name", NAMES)
def test_two_networks_packed_with_group_of_move_exactly_as_each_alone(name):
    steps = 25
    packed = _model([("s0_", 1), ("s1_", 7)])
    _train(packed, _build(name, packed, _group_of), steps, copies=2)
    for index, seed in enumerate((1, 7)):
        alone = _model([(f"s{index}_", seed)])
        _train(alone, _build(name, alone), steps, copies=1)
        mine = [v.numpy() for v in packed.trainable_variables if _group_of(v) == f"s{index}"]
        theirs = [v.numpy() for v in alone.trainable_variables]
        assert len(mine) == len(theirs) == 4
        gap = max(np.abs(a - b).max() for a, b in zip(mine, theirs, strict=True))
        assert gap <= 1e-6, f"{name}: copy {index} differs from its training alone by {gap}"
        start = _model([(f"s{index}_", seed)])
        assert max(np.abs(a.numpy() - b).max() for a, b in
                   zip(start.trainable_variables, theirs, strict=True)) > 1e-3  # it moved


def test_prodigy_without_group_of_couples_the_packed_networks():
    """The control: one d for both networks is not what either gets alone."""
    packed = _model([("s0_", 1), ("s1_", 7)])
    one_d = _build("prodigy", packed)
    _train(packed, one_d, 25, copies=2)
    alone = _model([("s0_", 1)])
    own_d = _build("prodigy", alone)
    _train(alone, own_d, 25, copies=1)
    assert len(one_d.d) == 1 and len(own_d.d) == 1
    assert abs(float(one_d.d[0]) - float(own_d.d[0])) > 1e-3 * float(own_d.d[0])


def test_build_optimizer_names_their_classes_and_settings():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.5)
    sgd = build_optimizer("sgd", schedule, momentum=0.9)
    assert type(sgd) is keras.optimizers.SGD and sgd.momentum == 0.9
    assert float(sgd.learning_rate) == pytest.approx(1e-2)
    assert type(build_optimizer("adam", 1e-3)) is keras.optimizers.Adam
    ema = build_optimizer("adamw_ema", 1e-3)
    assert type(ema) is keras.optimizers.AdamW and ema.use_ema and ema.weight_decay == 0.004
    free = build_optimizer("schedule_free_adamw", 1e-3, weight_decay=0.1, warmup_steps=20)
    assert type(free) is ScheduleFreeAdamW and (free.decay, free.warmup_steps) == (0.1, 20)
    prodigy = build_optimizer("prodigy", 1.0)
    assert type(prodigy) is Prodigy
    assert (prodigy.d0, prodigy.d_coef, prodigy.beta_1, prodigy.beta_2, prodigy.beta_3,
            prodigy.use_bias_correction, prodigy.safeguard_warmup, prodigy.decay,
            prodigy.decouple) == (1e-6, 1.0, 0.9, 0.999, None, False, False, 0.0, True)
    with pytest.raises(ClrpipeError, match="exclude_layers"):
        build_optimizer("muon", 1e-3)
    with pytest.raises(ClrpipeError, match="expected one of sgd, adam"):
        build_optimizer("lion", 1e-3)


def test_muon_uses_adamw_for_the_output_layers_and_biases_only():
    packed = _model([("s0_", 1), ("s1_", 7)])
    patterns = muon_exclusions(packed, _group_of)
    assert patterns == [r"(^|/)s0_out/", r"(^|/)s1_out/"]
    muon = build_optimizer("muon", 1e-3, exclude_layers=patterns)
    muon.build(packed.trainable_variables)
    adamw = {v.path for v, velocity in zip(packed.trainable_variables, muon.adam_velocities,
                                           strict=True) if velocity is not None}
    assert adamw == {"s0_hidden/bias", "s0_out/kernel", "s0_out/bias",
                     "s1_hidden/bias", "s1_out/kernel", "s1_out/bias"}
    single = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(4),
                               keras.layers.Dense(1, name="last")])
    assert [p for p in muon_exclusions(single) if re.search(p, "sequential/last/kernel")]


def test_ports_refuse_base_options_their_per_step_work_would_bypass():
    with pytest.raises(ClrpipeError, match="Prodigy: global_clipnorm not supported"):
        Prodigy(1.0, global_clipnorm=1.0)
    with pytest.raises(ClrpipeError, match="ScheduleFreeAdamW: use_ema not supported"):
        ScheduleFreeAdamW(1e-3, use_ema=True)


def test_configs_round_trip():
    for optimizer in (ScheduleFreeAdamW(1e-3, weight_decay=0.1, warmup_steps=5, r=0.5),
                      Prodigy(0.5, d_coef=2.0, weight_decay=0.01, growth_rate=1.02)):
        config = optimizer.get_config()
        again = type(optimizer).from_config(config)
        assert again.get_config() == config
        revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
        assert type(revived) is type(optimizer) and revived.get_config() == config


def _steps(optimizer, model, steps=30):
    _train(model, optimizer, steps, copies=1)
    return model


def _loss(model):
    x, y = _data(seed=1)
    return float(keras.ops.mean(keras.ops.square(model(x)[:, 0] - y)))


def test_schedule_free_evaluates_the_average_and_swaps_back_exactly():
    model = _model([("s0_", 3)])
    optimizer = ScheduleFreeAdamW(3e-2, warmup_steps=5)
    _steps(optimizer, model)
    y = [v.numpy() for v in model.trainable_variables]
    z = [v.numpy() for v in optimizer.z]
    x = [a + (1 - 1 / 0.9) * (b - a) for a, b in zip(y, z, strict=True)]  # lerp(y, z, 1-1/b1)
    raw = _loss(model)
    with evaluation_weights(model, optimizer):
        inside = _loss(model)
    after = [v.numpy() for v in model.trainable_variables]
    model.set_weights(x)
    averaged = _loss(model)
    assert inside == pytest.approx(averaged, rel=1e-6)
    assert abs(inside - raw) > 1e-3 * raw
    assert all(np.array_equal(a, b) for a, b in zip(after, y, strict=True))


def test_schedule_free_finalize_is_idempotent_and_training_resumes_from_y():
    runs = [(_model([("s0_", 3)]), ScheduleFreeAdamW(3e-2)) for _ in range(3)]
    for model, optimizer in runs:
        _steps(optimizer, model, 10)
    (model, optimizer), (twin, _), (bare, bare_optimizer) = runs
    y = [v.numpy() for v in model.trainable_variables]
    with evaluation_weights(model, optimizer):
        averaged = [v.numpy() for v in model.trainable_variables]
    for run in (runs[0], runs[2]):
        finalize(*run)
        finalize(*run)
    with evaluation_weights(model, optimizer):  # x is in already: nothing to swap
        again = [v.numpy() for v in model.trainable_variables]
    for a, b in zip(averaged, again, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)
    optimizers.resume(model, optimizer)
    for a, b in zip(model.trainable_variables, y, strict=True):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-6)
    for model_, optimizer_ in runs:
        _steps(optimizer_, model_, 5)
    for a, b in zip(model.trainable_variables, twin.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    # Without resume, the next step restores y itself; only its gradient was taken at x.
    assert int(bare_optimizer.evaluating) == 0
    x_to_y = max(np.abs(a - b).max() for a, b in zip(averaged, y, strict=True))
    off = max(np.abs(a.numpy() - b.numpy()).max() for a, b in
              zip(bare.trainable_variables, twin.trainable_variables, strict=True))
    assert off < 0.2 * x_to_y, (off, x_to_y)


def test_ema_evaluates_the_moving_average_and_plain_optimizers_their_iterate():
    model = _model([("s0_", 3)])
    optimizer = build_optimizer("adamw_ema", 3e-2, ema_momentum=0.9)
    _steps(optimizer, model)
    raw = _loss(model)
    y = [v.numpy() for v in model.trainable_variables]
    with evaluation_weights(model, optimizer):
        inside = _loss(model)
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(model.trainable_variables, y,
                                                             strict=True))
    finalize(model, optimizer)
    assert _loss(model) == pytest.approx(inside, rel=1e-6) and abs(inside - raw) > 1e-4 * raw
    plain = _model([("s0_", 3)])
    adam = build_optimizer("adam", 3e-2)
    _steps(adam, plain)
    before = _loss(plain)
    with evaluation_weights(plain, adam):
        assert _loss(plain) == before
    with pytest.raises(ClrpipeError, match=r"clrpipe\.optimizers\.ScheduleFreeAdamW"):
        keras_own = keras.optimizers.ScheduleFreeAdamW(1e-3)
        _steps(keras_own, _model([("s0_", 3)]), 1)
        optimizers._evaluation_values(plain, keras_own)


@pytest.mark.parametrize("name", ["schedule_free_adamw", "adamw_ema"])
def test_fit_validates_and_ends_with_the_evaluation_weights(name):
    (x, y), (x_val, y_val) = _data(seed=2, rows=96), _data(seed=3, rows=40)
    y, y_val = y[:, :1], y_val[:, :1]
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, "tanh"),
                              keras.layers.Dense(1)])
    optimizer = build_optimizer(name, 3e-2)
    loop.compile_model(model, optimizer, steps_per_execution=4, output=REGRESSION)
    seen = {}

    class Raw(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # after validation: the iterate is back in
            seen[epoch] = [v.numpy() for v in model.trainable_variables]

    history = loop.fit(model, x, y, epochs=2, batch_size=16, validation=(x_val, y_val),
                           callbacks=[Raw()])
    final = model.evaluate(x_val, y_val, verbose=0, return_dict=True)["loss"]
    assert history.epochs["val_loss"][-1] == pytest.approx(final, rel=1e-6)
    finished = [v.numpy() for v in model.trainable_variables]
    model.set_weights(seen[1])
    raw = model.evaluate(x_val, y_val, verbose=0, return_dict=True)["loss"]
    assert abs(raw - final) > 1e-4 * final
    model.set_weights(finished)
    assert loop.evaluate(model, x_val, y_val, REGRESSION)["loss"] == \
        pytest.approx(final, rel=1e-6)


@pytest.mark.parametrize("name", ["muon", "prodigy"])
def test_muon_and_prodigy_lower_the_validation_loss_in_the_compiled_fit(name):
    """Inside `training.fit`'s compiled loop (Prodigy's sums in a `tf.while_loop`); the
    schedule-free and EMA runs are trained by fit above, SGD and Adam in test_training.py."""
    (x, y), (x_val, y_val) = _data(seed=2, rows=256), _data(seed=3, rows=64)
    y, y_val = y[:, :1], y_val[:, :1]
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, "tanh"),
                              keras.layers.Dense(1)])
    start = float(keras.ops.mean(keras.ops.square(model(x_val) - y_val)))
    options = {"exclude_layers": muon_exclusions(model)} if name == "muon" else {}
    optimizer = build_optimizer(name, 1.0 if name == "prodigy" else 1e-2, **options)
    loop.compile_model(model, optimizer, steps_per_execution=8, output=REGRESSION)
    history = loop.fit(model, x, y, epochs=3, batch_size=32, validation=(x_val, y_val))
    assert history.epochs["val_loss"][-1] < 0.9 * start

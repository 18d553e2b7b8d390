"""Learning-rate schedules: formulas, dtypes, serialization, resume, and config validation."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from clrpipe import keras_private
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import config as clrpipe_config
from clrpipe.pipeline.params import schedule_spec
from clrpipe.schedules import (
    ConstantLearningRate,
    CyclicalLearningRate,
    OneCycleLearningRate,
    OneCycleMomentum,
    ScheduledMomentumSGD,
    build_schedule,
    build_sgd,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
MODES = [
    ("triangular", "cycle"),
    ("triangular", "iterations"),
    ("triangular2", "cycle"),
    ("triangular2", "iterations"),
    ("exp_range", "cycle"),
    ("exp_range", "iterations"),
]


def reference(step, initial, maximal, step_size, policy, scale_mode, gamma):
    """tfa 0.23's formula in float64 numpy, written independently of clrpipe.schedules."""
    step = np.asarray(step, dtype=np.float64)
    cycle = np.floor(1 + step / (2 * step_size))
    x = np.abs(step / step_size - 2 * cycle + 1)
    m = cycle if scale_mode == "cycle" else step
    scale = {"triangular": np.ones_like(m), "triangular2": 0.5 ** (m - 1), "exp_range": gamma**m}
    return initial + (maximal - initial) * np.maximum(0, 1 - x) * scale[policy]


def values(schedule, steps, dtype="int64") -> np.ndarray:
    return np.asarray(schedule(tf.constant(steps, dtype=dtype)), dtype=np.float64)


@pytest.mark.parametrize(("policy", "scale_mode"), MODES)
def test_cyclical_matches_the_tfa_formula(policy, scale_mode):
    args = (1e-4, 1e-2, 160, policy, scale_mode, 0.999 if scale_mode == "iterations" else 0.8)
    steps = np.arange(3000)
    ours = values(CyclicalLearningRate(*args[:3], scale_mode, policy, args[5]), steps)
    np.testing.assert_allclose(ours, reference(steps, *args), rtol=0, atol=1e-6 * 1e-2)


def test_triangular_landmarks():
    s = CyclicalLearningRate(0.1, 1.0, step_size=40)
    got = values(s, [0, 20, 40, 60, 80, 120, 160])
    np.testing.assert_allclose(got, [0.1, 0.55, 1.0, 0.55, 0.1, 1.0, 0.1], rtol=1e-6)


def test_triangular2_halves_the_amplitude_every_cycle():
    s = CyclicalLearningRate(0.1, 1.0, step_size=30, policy="triangular2")
    peaks = values(s, [30, 90, 150, 210])
    np.testing.assert_allclose(peaks - 0.1, [0.9, 0.45, 0.225, 0.1125], rtol=1e-5)


def test_exp_range_defaults_to_iterations_mode_like_tfa():
    s = CyclicalLearningRate(0.1, 1.0, step_size=2000, policy="exp_range", gamma=0.996)
    assert s.scale_mode == "iterations"
    assert values(s, [2000])[0] == pytest.approx(0.1 + 0.9 * 0.996**2000, rel=1e-6)


@pytest.mark.parametrize(("policy", "scale_mode"), MODES)
def test_int32_and_int64_steps_give_the_same_values(policy, scale_mode):
    s = CyclicalLearningRate(1e-4, 1e-2, 50, scale_mode, policy, gamma=0.99)
    steps = np.arange(0, 1000, 7)
    as_int64 = values(s, steps, "int64")
    np.testing.assert_array_equal(values(s, steps, "int32"), as_int64)
    counter = tf.Variable(0, dtype=tf.int64)
    traced = tf.function(lambda: s(counter))
    for i in (0, 49, 350, 994):
        counter.assign(i)
        assert float(traced()) == as_int64[i // 7]


@pytest.mark.parametrize(
    ("policy", "scale_mode"),
    [("triangular2", "iterations"), ("exp_range", "iterations"), ("triangular2", "cycle")],
)
def test_keras_optimizer_int64_iterations_drive_the_schedule(policy, scale_mode):
    """tfa 0.23 raised TypeError here: the optimizer's step counter is an int64 variable."""
    s = CyclicalLearningRate(1e-3, 1e-1, 4, scale_mode, policy, gamma=0.9)
    model = _mlp(3)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=s), loss="binary_crossentropy")
    x, y = _data(60, 3)
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert str(model.optimizer.iterations.dtype) == "int64"
    assert int(model.optimizer.iterations) == 6
    expected = reference(6, 1e-3, 1e-1, 4, policy, scale_mode, 0.9)
    assert float(model.optimizer.learning_rate) == pytest.approx(expected, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    initial=st.floats(1e-6, 1.0),
    factor=st.floats(1.0, 1000.0),
    step_size=st.integers(1, 2000),
    steps=st.lists(st.integers(0, 20_000), min_size=1, max_size=50),
)
def test_triangular_stays_in_bounds_and_has_period_two_step_sizes(
    initial, factor, step_size, steps
):
    maximal = initial * factor
    s = CyclicalLearningRate(initial, maximal, step_size)
    steps = np.array(steps) % (20 * step_size)
    lr = values(s, steps)
    later = values(s, steps + 2 * step_size)
    tol = 1e-6 * maximal
    assert np.all(lr >= np.float32(initial) - tol)
    assert np.all(lr <= np.float32(maximal) + tol)
    np.testing.assert_allclose(later, lr, rtol=0, atol=1e-5 * (maximal - initial) + tol)


def test_one_cycle_warms_up_then_anneals_far_below_the_start():
    s = OneCycleLearningRate(1e-2, total_steps=1000, pct_start=0.25)
    lr = values(s, np.arange(0, 1201))
    assert lr[0] == pytest.approx(1e-2 / 25, rel=1e-6)
    assert lr[250] == pytest.approx(1e-2, rel=1e-6)
    assert lr[1000] == pytest.approx(1e-2 / 25 / 1e4, rel=1e-4)
    assert np.all(lr[1000:] == lr[1000])
    assert np.all(np.diff(lr[:251]) > 0)
    assert np.all(np.diff(lr[250:1001]) < 0)
    linear = OneCycleLearningRate(1.0, 100, pct_start=0.5, div_factor=10, anneal="linear")
    np.testing.assert_allclose(
        values(linear, [0, 25, 50, 75, 100]), [0.1, 0.55, 1.0, (1 + 1e-5) / 2, 1e-5], rtol=1e-5
    )


def test_one_cycle_momentum_is_the_mirror_image_of_the_learning_rate():
    lr = OneCycleLearningRate(1e-2, total_steps=400, pct_start=0.3)
    mom = OneCycleMomentum.like(lr)
    steps = np.arange(401)
    m, r = values(mom, steps), values(lr, steps)
    np.testing.assert_allclose(m[[0, 120, 400]], [0.95, 0.85, 0.95], rtol=1e-6)
    assert np.argmin(m) == np.argmax(r) == 120
    assert np.all(np.diff(m[:121]) < 0)
    assert np.all(np.diff(m[120:]) > 0)


def test_scheduled_momentum_sgd_applies_the_momentum_of_each_step():
    lr = OneCycleLearningRate(0.1, total_steps=20, pct_start=0.25)
    opt = ScheduledMomentumSGD(lr, OneCycleMomentum.like(lr))
    w = keras.Variable(np.zeros(2, dtype="float32"))
    g = np.array([1.0, -2.0], dtype="float32")
    velocity, expected = np.zeros(2), np.zeros(2)
    for k in range(25):
        opt.apply_gradients([(tf.constant(g), w)])
        velocity = float(opt.momentum_schedule(k)) * velocity - float(lr(k)) * g
        expected += velocity
    np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-5)
    plain = keras.optimizers.SGD(lr, momentum=0.9)
    w2 = keras.Variable(np.zeros(2, dtype="float32"))
    for _ in range(25):
        plain.apply_gradients([(tf.constant(g), w2)])
    assert not np.allclose(np.asarray(w2), expected, rtol=1e-3)


def test_constant_schedule_ignores_the_step():
    s = ConstantLearningRate(0.01)
    for dtype in ("int32", "int64"):
        np.testing.assert_array_equal(values(s, [0, 5, 10**6], dtype), np.float32([0.01] * 3))


ALL_SCHEDULES = [
    ConstantLearningRate(0.01),
    CyclicalLearningRate(1e-4, 1e-2, 320),
    CyclicalLearningRate(1e-4, 1e-2, 137.5, "cycle", "triangular2"),
    CyclicalLearningRate(1e-4, 1e-2, 160, policy="exp_range", gamma=0.9999),
    OneCycleLearningRate(1e-2, 8000, 0.3, 20.0, 1e3, "linear"),
    OneCycleMomentum(8000, 0.3, 0.9, 0.8),
]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_config_round_trip(schedule):
    steps = [0, 1, 159, 320, 777, 5000]
    copy = type(schedule).from_config(schedule.get_config())
    assert copy.get_config() == schedule.get_config()
    np.testing.assert_array_equal(values(copy, steps), values(schedule, steps))
    blob = keras.saving.serialize_keras_object(schedule)
    assert blob["registered_name"] == f"clrpipe>{type(schedule).__name__}"
    revived = keras.saving.deserialize_keras_object(blob)
    assert type(revived) is type(schedule)
    np.testing.assert_array_equal(values(revived, steps), values(schedule, steps))


def test_config_holds_no_callable():
    for schedule in ALL_SCHEDULES:
        assert not any(callable(v) for v in schedule.get_config().values())


def _mlp(features: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input(shape=(features,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def _data(rows: int, features: int):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, features)).astype("float32")
    y = (x.sum(axis=1) + rng.normal(size=rows) > 0).astype("float32")
    return x, y


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: keras.optimizers.SGD(CyclicalLearningRate(1e-2, 0.5, 3, policy="triangular2")),
        lambda: build_sgd(
            OneCycleLearningRate(0.5, total_steps=16),
            {"policy": "one_cycle", "cycle_momentum": True},
        ),
    ],
    ids=["sgd-triangular2", "momentum-one-cycle"],
)
# Keras 3.15's own saving code trips numpy 2's __array__(copy=...) deprecation; not ours.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_save_load_resume_continues_the_cycle(tmp_path, make_optimizer):
    x, y = _data(80, 4)
    fit = {"batch_size": 10, "shuffle": False, "verbose": 0}

    straight = _mlp(4)
    straight.compile(optimizer=make_optimizer(), loss="binary_crossentropy")
    straight.fit(x, y, epochs=2, **fit)

    first = _mlp(4)
    first.compile(optimizer=make_optimizer(), loss="binary_crossentropy")
    first.fit(x, y, epochs=1, **fit)
    first.save(tmp_path / "x.keras")
    loaded = keras.models.load_model(tmp_path / "x.keras")

    schedule = keras_private.learning_rate_schedule(loaded.optimizer)
    assert type(loaded.optimizer) is type(first.optimizer)
    first_schedule = keras_private.learning_rate_schedule(first.optimizer)
    assert schedule.get_config() == first_schedule.get_config()
    assert int(loaded.optimizer.iterations) == 8
    assert float(loaded.optimizer.learning_rate) == float(schedule(8))
    loaded.fit(x, y, epochs=1, **fit)
    assert int(loaded.optimizer.iterations) == 16
    for resumed, reference_weights in zip(
        loaded.get_weights(), straight.get_weights(), strict=True
    ):
        np.testing.assert_allclose(resumed, reference_weights, rtol=1e-6, atol=1e-7)


# --- build_schedule and the config files ------------------------------------------------


def _yaml(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "schedule" / f"{name}.yaml"))


def test_default_takes_range_test_bounds_and_whole_cycles():
    with pytest.raises(ClrpipeError, match=r"^schedule\.initial_learning_rate"):
        build_schedule(_yaml("triangular"), train_rows=56_000, batch_size=350)
    s = build_schedule(_yaml("triangular"), train_rows=56_000, batch_size=350, bounds=(0.1, 0.4))
    assert (s.initial_learning_rate, s.maximal_learning_rate) == (0.1, 0.4)
    assert s.step_size == 5 * 160  # 50 epochs = 5 whole cycles, ending at base_lr
    partial = build_schedule(_yaml("triangular"), train_rows=56_001, batch_size=350,
                             bounds=(0.1, 0.4))
    assert partial.step_size == 5 * 161


def test_article_option_reproduces_the_article_with_the_correct_iteration_count():
    s = build_schedule(_yaml("article"), train_rows=56_000, batch_size=350)
    assert isinstance(s, CyclicalLearningRate)
    assert s.get_config() | {"name": None} == {
        "initial_learning_rate": 1e-4,
        "maximal_learning_rate": 1e-2,
        "step_size": 320,
        "scale_mode": "cycle",
        "policy": "triangular",
        "gamma": 1.0,
        "name": None,
    }
    article = build_schedule(
        _yaml("article") | {"iterations_rows": 70_000}, train_rows=56_000, batch_size=350
    )
    assert article.step_size == 400
    tfa = build_schedule(_yaml("tfa_triangular"), train_rows=56_000, batch_size=350)
    assert tfa.get_config() == s.get_config()


def test_step_size_in_steps_and_bounds_from_the_range_test():
    cfg = _yaml("triangular2") | {
        "step_size": 500,
        "step_size_epochs": None,
        "initial_learning_rate": None,
        "maximal_learning_rate": None,
    }
    s = build_schedule(cfg, train_rows=1000, batch_size=32, bounds=(3e-3, 3e-1))
    assert (s.initial_learning_rate, s.maximal_learning_rate, s.step_size) == (3e-3, 3e-1, 500)
    assert s.policy == "triangular2"


@pytest.mark.parametrize(
    "name", ["constant", "triangular", "triangular2", "exp_range", "one_cycle", "tfa_triangular"]
)
def test_every_config_file_builds(name):
    cfg = _yaml(name)
    s = build_schedule(cfg, train_rows=56_000, batch_size=350, epochs=50, bounds=(1e-4, 1e-2))
    expected = {
        "constant": ConstantLearningRate,
        "one_cycle": OneCycleLearningRate,
    }.get(name, CyclicalLearningRate)
    assert type(s) is expected
    assert schedule_spec(cfg).backend == ("tfa" if name == "tfa_triangular" else "keras")
    if name == "one_cycle":
        assert s.total_steps == 160 * 50
        assert isinstance(build_sgd(s, schedule_spec(cfg)), ScheduledMomentumSGD)
    else:
        assert type(build_sgd(s, schedule_spec(cfg))) is keras.optimizers.SGD


def test_schedule_group_composes_with_hydra():
    cfg = clrpipe_config.compose(["schedule=exp_range"], conf_dir=CONF)
    s = build_schedule(cfg.schedule, train_rows=56_000, batch_size=350)
    assert (s.policy, s.scale_mode, s.gamma) == ("exp_range", "iterations", 0.9999)
    assert s.step_size == 320


BASE = {
    "policy": "triangular",
    "initial_learning_rate": 1e-4,
    "maximal_learning_rate": 1e-2,
    "step_size_epochs": 2,
}
ONE = {"policy": "one_cycle", "maximal_learning_rate": 1e-2, "total_epochs": 5}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            BASE | {"maximal_learning_rate": 1e-5},
            "schedule.maximal_learning_rate: expected >= schedule.initial_learning_rate (0.0001), "
            "got 1e-05",
        ),
        (BASE | {"step_size_epochs": 0}, "schedule.step_size_epochs: expected a number > 0, got 0"),
        (BASE | {"step_size_epochs": None, "step_size": -3}, "schedule.step_size: expected"),
        (BASE | {"step_size_epochs": None}, "schedule.step_size: expected a number > 0 (or step_s"),
        ("abc", "schedule: expected a mapping of keys with a policy, got 'abc'"),
        (BASE | {"step_size": 10}, "schedule.step_size: set either step_size or step_size_epochs"),
        (BASE | {"policy": "triangle"}, "schedule.policy: expected one of constant, triangular"),
        (BASE | {"stepsize": 10}, "schedule.stepsize: unknown key for policy triangular"),
        (BASE | {"scale_mode": "epochs"},
         "schedule.scale_mode: expected one of 'cycle', 'iterations', got 'epochs'"),
        (BASE | {"gamma": "0.9"}, "schedule.gamma: expected a number, got '0.9'"),
        (BASE | {"initial_learning_rate": True}, "schedule.initial_learning_rate: expected a num"),
        (BASE | {"initial_learning_rate": 0},
         "schedule.initial_learning_rate: expected a number > 0, got 0"),
        (BASE | {"initial_learning_rate": None}, "schedule.initial_learning_rate: null means"),
        (BASE | {"iterations_rows": 0}, "schedule.iterations_rows: expected a number > 0"),
        (BASE | {"backend": "torch"}, "schedule.backend: expected one of 'keras', 'tfa'"),
        (BASE | {"backend": "tfa", "policy": "exp_range"}, "schedule.scale_mode: tfa 0.23's"),
        ({"policy": "constant", "learning_rate": -1}, "schedule.learning_rate: expected a number"),
        ({"policy": "constant", "step_size": 3}, "schedule.step_size: unknown key for policy"),
        (ONE | {"backend": "tfa"}, "schedule.backend: expected 'keras' for policy one_cycle"),
        (ONE | {"pct_start": 1.0}, "schedule.pct_start: expected a number between 0 and 1"),
        (ONE | {"anneal": "cosine"}, "schedule.anneal: expected one of 'cos', 'linear'"),
        (ONE | {"base_momentum": 0.99}, "schedule.max_momentum: expected a number >= 0.99 (base"),
        (ONE | {"total_epochs": 3, "total_steps": 9}, "schedule.total_steps: set either total_st"),
        (ONE | {"maximal_learning_rate": None}, "schedule.maximal_learning_rate: null means"),
    ],
)
def test_invalid_config_fails_with_one_line_naming_the_key(cfg, message):
    with pytest.raises(ClrpipeError) as caught:
        build_schedule(cfg, train_rows=56_000, batch_size=350)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_null_bounds_come_from_the_range_test_only_when_given():
    cfg = BASE | {"maximal_learning_rate": None}
    assert build_schedule(cfg, 100, 10, bounds=(1e-3, 0.2)).maximal_learning_rate == 0.2
    with pytest.raises(ClrpipeError, match=r"^schedule\.maximal_learning_rate: null means"):
        build_schedule(cfg, 100, 10)
    with pytest.raises(ClrpipeError, match=r"expected >= schedule\.initial_learning_rate"):
        build_schedule(cfg, 100, 10, bounds=(1e-3, 1e-5))


def test_one_cycle_length_defaults_to_the_run():
    cfg = {"policy": "one_cycle", "maximal_learning_rate": 0.1}
    assert build_schedule(cfg, 1000, 100, epochs=7).total_steps == 70
    with pytest.raises(ClrpipeError, match=r"^epochs: expected a positive integer, got 0$"):
        build_schedule(cfg, 1000, 100, epochs=0)


def test_iterations_per_epoch_rounds_up():
    cfg = BASE | {"step_size_epochs": 1}
    assert build_schedule(cfg, train_rows=351, batch_size=350).step_size == 2
    assert build_schedule(cfg, train_rows=350, batch_size=350).step_size == 1
    assert math.isclose(
        build_schedule(BASE | {"step_size_epochs": 0.5}, 350 * 3, 350).step_size, 1.5
    )

"""LR range test: the pure analysis rules on synthetic curves, and the Keras runner's promises."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys

import numpy as np
import pytest

from clrpipe import range_test as rt
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.params import RangeTestParams, parse


def _config(section: dict) -> RangeTestParams:
    return parse(RangeTestParams, section, "range_test")

# Pure analysis -------------------------------------------------------------------------------


def test_ema_bias_correction_matches_hand_calculation():
    # beta = 0.5: avg = 1.0, 2.5, 5.25; bias factors 1 - 0.5**k = 0.5, 0.75, 0.875
    got = rt.ema_debiased([2.0, 4.0, 8.0], beta=0.5)
    assert got == pytest.approx([1.0 / 0.5, 2.5 / 0.75, 5.25 / 0.875])
    assert got[2] == pytest.approx(6.0)
    # A constant sequence stays constant: that is what the correction is for.
    assert rt.ema_debiased([5.0] * 20, beta=0.98) == pytest.approx([5.0] * 20)


def test_log_smoothing_is_a_geometric_mean_ema():
    got = rt.smooth_losses([1.0, 100.0], beta=0.5, smoothing="log")
    # log-avg: 0, then (0.5*0 + 0.5*ln100)/0.75 -> exp = 100 ** (2/3)
    assert got == pytest.approx([1.0, 100.0 ** (2 / 3)])


def test_ema_goes_nan_from_first_non_finite_value():
    got = rt.ema_debiased([1.0, 2.0, np.nan, 3.0], beta=0.9)
    assert np.isfinite(got[:2]).all() and np.isnan(got[2:]).all()


def test_two_sided_smoothing_has_no_lag_on_a_linear_trend():
    x = np.linspace(10.0, 5.0, 2000)
    causal = rt.smooth_losses(x, 0.98, "linear")
    both = rt.smooth_two_sided(x, 0.98, "linear")
    mid = slice(500, 1500)
    step = 5.0 / 1999
    assert causal[mid] - x[mid] == pytest.approx(49 * step, rel=1e-3)  # 49 batches behind
    assert np.max(np.abs(both[mid] - x[mid])) < 1e-4  # vs 0.12 for the causal EMA


def test_divergence_stops_at_factor_times_best_and_on_nan():
    losses = [1.0] * 50 + [2.0] * 5 + [100.0] * 5
    beta, factor = 0.5, 4.0
    stop = rt.find_divergence(losses, beta, factor, "linear")
    ema = rt.smooth_losses(losses, beta, "linear")
    assert stop is not None and ema[stop] > 4.0 and (ema[:stop] <= 4.0).all()
    assert stop == 55  # the first 100.0 already lifts the EMA past 4
    assert rt.find_divergence([1.0, 0.9, float("inf"), 0.5], 0.98, 4.0) == 2
    assert rt.find_divergence([1.0, 0.9, float("nan")], 0.98, 4.0) == 2
    assert rt.find_divergence(np.linspace(2, 1, 100), 0.98, 4.0) is None


def test_online_monitor_agrees_with_batch_function():
    rng = np.random.default_rng(1)
    losses = np.exp(np.concatenate([np.linspace(0, -2, 150), np.linspace(-2, 4, 50)]))
    losses *= rng.lognormal(0, 0.2, losses.size)
    monitor = rt.DivergenceMonitor(0.98, 4.0)
    online = next(i for i, v in enumerate(losses) if monitor.update(float(v)))
    assert online == rt.find_divergence(losses, 0.98, 4.0)


def _bowl(lrs, centre, steep_at):
    """A loss that falls fastest at `steep_at` (tanh in log10 lr) and rises after `centre`."""
    x = np.log10(lrs)
    fall = 1.0 - 0.5 * (1 + np.tanh(3 * (x - np.log10(steep_at))))
    rise = np.where(x > np.log10(centre), 5 * (x - np.log10(centre)) ** 2, 0.0)
    return 1.0 + fall + rise


def test_steepest_finds_the_steepest_log_lr_point():
    lrs = np.logspace(-5, 0, 300)
    loss = _bowl(lrs, centre=0.3, steep_at=1e-3)
    assert rt.steepest(lrs, loss) == pytest.approx(1e-3, rel=0.1)


def test_steepest_uses_log_lr_not_raw_lr():
    # Loss linear in log10(lr) with one kink: the per-decade slope doubles after 1e-2; on the
    # raw-lr axis the slope is largest at the smallest lr instead.
    lrs = np.logspace(-4, 0, 200)
    x = np.log10(lrs)
    loss = np.where(x < -2, -0.1 * x, 0.2 - 0.2 * (x + 2))
    got = rt.steepest(lrs, loss)
    assert 1e-2 <= got < 1.0
    assert np.argmin(np.gradient(loss, lrs)) == 0


def test_valley_is_halfway_along_longest_decreasing_subsequence():
    lrs = np.logspace(-4, 0, 101)  # 0.04 decade per batch
    rising = np.linspace(2.0, 3.0, 20)  # nothing here can precede 3.0 in a decreasing sequence
    s = np.concatenate([rising, np.linspace(3.0, 1.0, 61)[1:], np.linspace(1, 4, 21)])
    s[40] += 0.2  # a bump: a contiguous run would split here, the subsequence skips it
    lo, hi = rt.valley_span(s)
    assert (lo, hi) == (19, 79)
    assert rt.valley(lrs, s) == pytest.approx(lrs[49])


def test_edge_is_end_of_flat_floor_not_noisy_argmin():
    lrs = np.logspace(-3, 1, 200)
    s = np.concatenate([np.linspace(2.0, 1.0, 80), np.full(80, 1.0), np.linspace(1.0, 3.0, 40)])
    s[85] = 0.999  # the argmin, set by noise near the floor's start
    i = rt.edge_index(s)
    assert 159 <= i <= 161
    assert rt.minimum(lrs, s) == pytest.approx(lrs[85] / 10)


def test_accuracy_bounds_start_of_rise_and_where_it_slows():
    lrs = np.logspace(-4, 0, 41)
    acc = 0.5 + 0.2 / (1 + np.exp(-(np.log10(lrs) + 2) * 6))
    base, top = rt.accuracy_bounds(lrs, acc)
    assert base < 1e-2 < top
    assert rt.accuracy_bounds(lrs, np.full(41, 0.5)) is None


def _curve(seed, centre, n=300, noise=0.01):
    lrs = np.logspace(-5, 1, n)
    rng = np.random.default_rng(seed)
    loss = _bowl(lrs, centre, steep_at=centre / 30) * rng.lognormal(0, noise, n)
    return rt.Curve(seed=seed, lrs=lrs, losses=loss)


def test_loss_rule_and_multi_seed_median_and_spread():
    cfg = RangeTestParams()
    centres = (0.1, 0.2, 0.4)
    res = rt.analyse([_curve(s, c) for s, c in enumerate(centres)], cfg)
    per_seed = [a.suggestions.max_lr for a in res.analyses]
    assert res.rule == "loss"
    assert res.max_lr == pytest.approx(sorted(per_seed)[1])
    assert res.base_lr == pytest.approx(res.max_lr / rt.BASE_DIVISOR, rel=1e-9)
    assert res.max_spread.ratio == pytest.approx(max(per_seed) / min(per_seed))
    q75, q25 = np.percentile(np.log10(per_seed), [75, 25])
    assert res.max_spread.log10_iqr == pytest.approx(q75 - q25)
    for a, centre in zip(res.analyses, centres, strict=True):
        s = a.suggestions
        assert s.max_lr == pytest.approx(s.ceiling / rt.EDGE_DIVISOR)
        lrs = a.curve.lrs
        true_edge = lrs[rt.edge_index(np.log(_bowl(lrs, centre, centre / 30)))]
        # Smoothing blurs the rise back by about half an EMA window: never late, < 5x early.
        assert true_edge / 5 < s.ceiling <= true_edge
        assert s.steepest == pytest.approx(centre / 30, rel=0.2)
    assert res.max_spread.ratio > 2 and not res.methods_disagree


def _blowing_up(seed=0):
    """A 100-batch sweep like a small table's (batch 16: noisy), falling to a floor near 0.02,
    rising after 0.2, then blowing up by 1e3 a batch past lr 1: the causal EMA stops it a few
    batches into the blow-up, with losses up to 1e12 already in the analysed part."""
    lrs = np.logspace(-4, 1, 100)
    loss = _bowl(lrs, 0.2, 0.02) * np.random.default_rng(seed).lognormal(0, 0.3, 100)
    loss[lrs > 1.0] *= 1e3 ** np.arange(1, (lrs > 1.0).sum() + 1)
    return rt.Curve(seed=seed, lrs=lrs, losses=loss)


def test_a_blow_up_before_the_stop_does_not_drag_the_edge_back():
    curve, cfg = _blowing_up(), RangeTestParams(num_steps=100)
    a = rt.analyse_curve(curve, cfg)
    assert a.stop is not None and curve.losses[: a.stop].max() > 1e9
    true_edge = curve.lrs[rt.edge_index(np.log(_bowl(curve.lrs, 0.2, 0.02)))]
    assert true_edge / 5 < a.suggestions.ceiling <= true_edge
    # Uncapped, the backward EMA carries the 1e12 losses back to the sweep's start.
    skip = int(rt.SKIP_START_FRACTION * a.stop)
    uncapped = rt.smooth_two_sided(curve.losses[: a.stop], cfg.beta)[skip:]
    assert curve.lrs[skip + rt.edge_index(np.log(uncapped))] < 1e-3
    # The cap is the divergence threshold: a curve that never crosses it is smoothed as is.
    lrs = np.logspace(-4, 0, 100)
    calm = rt.analyse_curve(rt.Curve(seed=0, lrs=lrs, losses=_bowl(lrs, 0.3, 0.01)), cfg)
    assert calm.stop is None
    assert np.array_equal(calm.smoothed, rt.smooth_two_sided(calm.curve.losses, cfg.beta))


def test_seed_spread_and_method_disagreement_flags():
    cfg = RangeTestParams()
    spread = rt.analyse([_curve(0, 0.01), _curve(1, 0.1), _curve(2, 1.0)], cfg)
    assert spread.seeds_disagree and not spread.confident
    agree = rt.analyse([_curve(s, 0.1) for s in range(3)], cfg)
    assert agree.confident and agree.max_spread.ratio < 1.5
    # Accuracy saying 1e-4 while the loss edge says ~0.1: more than 10x apart.
    curves = []
    for s in range(3):
        c = _curve(s, 0.1)
        c.val_steps = np.arange(0, 300, 10)
        x = np.log10(c.lrs[c.val_steps])
        c.val_accuracy = 0.5 + 0.2 / (1 + np.exp(-(x + 4.5) * 8))
        curves.append(c)
    res = rt.analyse(curves, cfg)
    assert res.rule == "accuracy"
    assert res.methods_disagree and res.method_ratio > rt.DISAGREEMENT_FACTOR
    assert res.max_lr < 1e-3


def test_to_dict_and_rows_are_plain_and_complete():
    res = rt.analyse([_curve(s, 0.1) for s in range(2)], RangeTestParams(seeds=2))
    d = json.loads(json.dumps(res.to_dict()))
    for key in ("base_lr", "max_lr", "spread", "suggestions", "methods_disagree", "confident"):
        assert key in d
    assert set(d["suggestions"]) == set(rt.METHODS)
    rows = res.rows()
    assert len(rows) == 600
    assert set(rows[0]) == {
        "seed", "step", "lr", "loss", "ema_loss", "smoothed_loss", "val_loss", "val_accuracy",
    }  # fmt: skip


def test_unusable_curves_raise_naming_the_key():
    lrs = np.logspace(-5, 1, 50)
    bad = rt.Curve(seed=0, lrs=lrs, losses=np.full(50, np.nan))
    with pytest.raises(ClrpipeError, match=r"^range_test\.min_lr: "):
        rt.analyse([bad], RangeTestParams(seeds=1))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"min_lr": 10.0, "max_lr": 1.0},
            "range_test.min_lr: expected < range_test.max_lr (1), got 10",
        ),
        ({"min_lr": 0.0}, "range_test.min_lr: expected > 0, got 0"),
        ({"num_steps": 0}, "range_test.num_steps: expected >= 10, got 0"),
        ({"num_steps": -5}, "range_test.num_steps: expected >= 10, got -5"),
        ({"num_steps": 2.5}, "range_test.num_steps: expected an integer, got 2.5"),
        (
            {"mode": "cosine"},
            "range_test.mode: expected one of 'linear', 'exponential', got 'cosine'",
        ),
        ({"beta": 1.0}, "range_test.beta: expected 0 < beta < 1, got 1"),
        ({"beta": 0}, "range_test.beta: expected 0 < beta < 1, got 0"),
        ({"divergence_factor": 1}, "range_test.divergence_factor: expected > 1, got 1"),
        ({"seeds": 0}, "range_test.seeds: expected >= 1, got 0"),
        ({"max_lr": "big"}, "range_test.max_lr: expected a number, got 'big'"),
        ({"max_lr": float("inf")}, "range_test.max_lr: expected a number, got inf"),
        ({"smoothing": "sma"}, "range_test.smoothing: expected one of 'log', 'linear', got 'sma'"),
    ],
)
def test_bad_config_names_the_key(section, message):
    with pytest.raises(ClrpipeError) as err:
        _config(section)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_unknown_key_and_defaults():
    with pytest.raises(ClrpipeError, match=r"^range_test\.min_rl: unknown key"):
        _config({"min_rl": 1e-3})
    cfg = _config({"mode": "linear", "num_steps": 50})
    assert (cfg.beta, cfg.divergence_factor, cfg.seeds) == (0.98, 4.0, 3)
    lrs = rt.lr_schedule(cfg)
    assert lrs[0] == cfg.min_lr and lrs[-1] == pytest.approx(cfg.max_lr)
    assert np.allclose(np.diff(lrs), np.diff(lrs)[0])
    geo = rt.lr_schedule(_config({"num_steps": 50}))
    assert np.allclose(geo[1:] / geo[:-1], geo[1] / geo[0])


# Keras runner --------------------------------------------------------------------------------

keras = pytest.importorskip("keras")


def _linear_problem():
    rng = np.random.default_rng(0)
    n, d = 4096, 8
    x = (rng.normal(size=(n, d)) * np.linspace(0.5, 2.0, d)).astype(np.float32)
    y = (x @ rng.normal(size=(d, 1)) + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
    xa = np.hstack([x, np.ones((n, 1), np.float32)]).astype(np.float64)
    hessian = 2.0 / n * xa.T @ xa  # of mean((x w + b - y)^2) in (w, b)
    return x, y, float(np.linalg.eigvalsh(hessian).max())


def test_known_answer_max_lr_below_and_near_sgd_divergence_threshold():
    from clrpipe.range_test_runner import run_range_test

    x, y, lam = _linear_problem()
    threshold = 2.0 / lam  # plain gradient descent on this quadratic diverges above it
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    cfg = _config({"min_lr": 1e-4, "max_lr": 10.0, "num_steps": 300, "val_every": 0})
    res = run_range_test(model, x, y, cfg, batch_size=256)
    assert threshold / 10 < res.max_lr < threshold
    assert res.base_lr < res.max_lr
    assert all(a.diverged for a in res.analyses)
    assert all(a.suggestions.divergence_lr > threshold for a in res.analyses)
    assert res.confident


def _classifier(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2048, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 + 0.3 * rng.normal(size=2048) > 0.5).astype(np.float32)
    return model, x, y


def _global_draws():
    return (
        np.random.random(3).tolist(),
        [random.random() for _ in range(3)],
        keras.ops.convert_to_numpy(keras.random.uniform((3,))).tolist(),
    )


def test_runner_leaves_model_optimizer_and_rngs_exactly_as_before():
    from clrpipe.range_test_runner import run_range_test

    model, x, y = _classifier(0)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # optimizer has momentum state now
    keras.random.uniform((1,))  # make sure the global seed generator exists
    weights = [v.numpy().copy() for v in model.variables]
    opt_vars = [v.numpy().copy() for v in model.optimizer.variables]
    cfg = _config({"num_steps": 60, "min_lr": 1e-3, "max_lr": 10.0, "seeds": 2})
    res = run_range_test(model, x, y, cfg, batch_size=64, x_val=x[:256], y_val=y[:256])
    assert len(res.analyses) == 2 and res.analyses[0].curve.val_accuracy is not None
    for before, var in zip(weights, model.variables, strict=True):
        np.testing.assert_array_equal(before, var.numpy())
    for before, var in zip(opt_vars, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(before, var.numpy())
    assert model.optimizer.iterations.numpy() == 32


def test_next_random_draws_and_later_training_are_bit_identical():
    from clrpipe.range_test_runner import run_range_test

    cfg = _config({"num_steps": 40, "min_lr": 1e-3, "max_lr": 10.0, "seeds": 2})

    def world(with_test):
        model, x, y = _classifier(1)
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)
        keras.random.uniform((1,))
        if with_test:
            run_range_test(model, x, y, cfg, batch_size=64, x_val=x[:256], y_val=y[:256])
        draws = _global_draws()
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)
        return draws, [v.numpy() for v in model.variables]

    draws_a, weights_a = world(with_test=False)
    draws_b, weights_b = world(with_test=True)
    assert draws_a == draws_b
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_runner_is_reproducible_per_seed_and_rejects_bad_batch_size():
    from clrpipe.range_test_runner import run_range_test, sweep

    model, x, y = _classifier(2)
    cfg = _config({"num_steps": 30, "min_lr": 1e-3, "max_lr": 1.0, "seeds": 2})
    first = sweep(model, x, y, cfg, batch_size=128)
    again = sweep(model, x, y, cfg, batch_size=128)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.losses, b.losses)
    assert not np.array_equal(first[0].losses, first[1].losses)
    with pytest.raises(ClrpipeError, match=r"^batch_size: "):
        run_range_test(model, x, y, cfg, batch_size=0)


@pytest.mark.parametrize("smoothing", ["log", "linear"])
def test_the_sweep_stops_where_its_configured_smoothing_diverges(smoothing):
    """The runner's online divergence check uses `range_test.smoothing` (it once always used
    the log rule, so a linear analysis treated the breaking batch as a normal one)."""
    from clrpipe.range_test_runner import sweep

    model, x, y = _classifier(3)
    cfg = _config({"num_steps": 300, "min_lr": 1e-3, "max_lr": 100.0, "seeds": 1,
                   "smoothing": smoothing, "val_every": 0})
    (curve,) = sweep(model, x, y, cfg, batch_size=64)
    assert len(curve.losses) < cfg.num_steps and np.isfinite(curve.losses).all()
    stop = rt.find_divergence(curve.losses, cfg.beta, cfg.divergence_factor, smoothing)
    assert stop == len(curve.losses) - 1
    other = "linear" if smoothing == "log" else "log"
    assert rt.find_divergence(curve.losses, cfg.beta, cfg.divergence_factor, other) != stop
    analysis = rt.analyse_curve(curve, cfg)
    assert analysis.stop == stop and np.isnan(analysis.smoothed[stop])


def test_lr_is_the_default_rule_and_every_rule_is_one_function():
    """`.lr` is `DEFAULT_LR_RULE` (whichever rule the study chose: tests/test_regret.py);
    the pair's geometric mean is what compare and the study's methods use; the other rules read
    the seeds' median suggestions; an unknown rule is a one-line error."""
    from clrpipe import suggestions
    from clrpipe.pipeline.comparison.compare import suggested_constant_lr

    res = rt.analyse([_curve(s, 0.1) for s in range(3)], RangeTestParams(seeds=3))
    assert suggestions.DEFAULT_LR_RULE in suggestions.CONSTANT_LR_RULES
    assert res.lr == res.constant_lr(suggestions.DEFAULT_LR_RULE) is not None
    geometric = res.constant_lr("geometric_mean")
    assert geometric == math.sqrt(res.base_lr * res.max_lr)
    assert geometric == suggested_constant_lr((res.base_lr, res.max_lr))
    assert res.constant_lr("arithmetic_mean") == (res.base_lr + res.max_lr) / 2
    assert (res.constant_lr("base_lr"), res.constant_lr("max_lr")) == (res.base_lr, res.max_lr)
    for rule in ("valley", "minimum", "steepest"):
        assert res.constant_lr(rule) == res.suggestions[rule] is not None
    assert res.base_lr < geometric < res.max_lr
    with pytest.raises(ClrpipeError, match=r"^rule: expected one of geometric_mean, .*'mean'$"):
        res.constant_lr("mean")
    no_valley = dataclasses.replace(res, method_medians={**res.method_medians, "valley": None})
    assert no_valley.lr == geometric  # no seed had a valley: the pair's geometric mean


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    res = rt.analyse([_curve(s, 0.1) for s in range(2)], RangeTestParams(seeds=2))
    import clrpipe

    monkeypatch.delitem(sys.modules, "clrpipe.plots", raising=False)
    monkeypatch.delattr(clrpipe, "plots", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ClrpipeError, match=r"^plot: needs matplotlib; .*clrpipe\[plot\]"):
        res.plot()

"""The constant-rate rules' regret to the tuned grid (`clrpipe.study.regret`) against hand
calculations, and the rule chosen on the development tables only."""

from __future__ import annotations

import copy

import pytest

from clrpipe import stats, suggestions
from clrpipe.study import regret

# Four grid points, three seeds. The best mean validation score is at 0.1 (0.78 > 0.77), so
# that is the oracle, although 1.0 is not far behind on test.
RATES = (0.001, 0.01, 0.1, 1.0)
VAL = ((0.60, 0.60, 0.60), (0.70, 0.70, 0.70), (0.78, 0.78, 0.78), (0.77, 0.77, 0.77))
TEST = ((0.60, 0.62, 0.61), (0.70, 0.72, 0.71), (0.80, 0.79, 0.81), (0.75, 0.78, 0.78))
SPAN = 0.80 - 0.61  # best minus worst mean test score over the grid


def grid(test=TEST, val=VAL, epochs=60):
    return regret.Grid(RATES, val, test, epochs)


def test_nearest_point_in_log_lr_clamps_outside_and_takes_the_lower_on_a_tie():
    # log10(0.02) = -1.70: 0.30 from -2 (0.01), 0.70 from -1 (0.1)
    assert regret.nearest(RATES, 0.02) == (1, False)
    assert regret.nearest(RATES, 0.05) == (2, False)  # -1.30: 0.30 from -1
    assert regret.nearest(RATES, 5.0) == (3, True)  # above the grid: its top, flagged
    assert regret.nearest(RATES, 1e-5) == (0, True)
    assert regret.nearest(RATES, 1.0) == (3, False)  # the end itself is inside
    assert regret.nearest((1.0, 100.0), 10.0) == (0, False)  # exactly halfway: the lower
    with pytest.raises(ValueError, match="lr: expected > 0, got 0"):
        regret.nearest(RATES, 0.0)


def test_regret_at_the_nearest_point_matches_a_hand_calculation():
    cell = regret.cell_regret(grid(), 0.02, sweep_epochs=7.5)
    # scored at 0.01; per seed 0.80-0.70, 0.79-0.72, 0.81-0.71 = 0.10, 0.07, 0.10: mean 0.09
    assert (cell["lr"], cell["grid_lr"], cell["oracle_lr"]) == (0.02, 0.01, 0.1)
    assert not cell["clamped"] and not cell["missing"]
    assert cell["regret"] == pytest.approx(0.09)
    assert cell["normalised"] == pytest.approx(0.09 / SPAN)  # 0.4737
    assert cell["per_seed"] == pytest.approx([0.10 / SPAN, 0.07 / SPAN, 0.10 / SPAN])
    # the interval is the paired bootstrap of (oracle - rule) over seeds, scaled by the span
    direct = stats.paired_bootstrap((0.80, 0.79, 0.81), (0.70, 0.72, 0.71))
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((direct.low, direct.high))
    assert cell["normalised_ci_low"] == pytest.approx(direct.low / SPAN)
    assert 0.07 - 1e-12 <= cell["ci_low"] <= 0.09 <= cell["ci_high"] <= 0.10 + 1e-12
    assert cell["compute_epochs"] == 67.5  # 60 epochs + the sweep's 7.5
    assert cell["grid_compute_epochs"] == 240.0  # 4 points x 60 epochs


def test_a_rate_above_the_grid_is_clamped_and_can_beat_the_oracle_on_test():
    cell = regret.cell_regret(grid(), 5.0)
    # at 1.0: 0.80-0.75, 0.79-0.78, 0.81-0.78 = 0.05, 0.01, 0.03
    assert cell["clamped"] and cell["grid_lr"] == 1.0
    assert cell["regret"] == pytest.approx(0.03)
    at_oracle = regret.cell_regret(grid(), 0.1)
    assert at_oracle["regret"] == 0.0 and at_oracle["ci_low"] == at_oracle["ci_high"] == 0.0
    # the oracle is picked on validation: a point better on test gives a negative regret
    better = grid(test=(*TEST[:3], (0.82, 0.81, 0.83)))
    assert regret.cell_regret(better, 1.0)["regret"] == pytest.approx(-0.02)


def test_no_rate_scores_as_the_worst_point_and_a_diverged_point_as_the_worst_mean():
    missing = regret.cell_regret(grid(), None)
    assert missing["missing"] and missing["grid_lr"] == 0.001
    assert missing["normalised"] == pytest.approx(1.0)  # the worst point: the whole span
    nan = float("nan")
    diverged = grid(test=((nan, nan, nan), *TEST[1:]), val=((nan, nan, nan), *VAL[1:]))
    cell = regret.cell_regret(diverged, 0.001)
    # 0.001 diverged: it scores the worst finite mean, 0.71 (at 0.01); span 0.80 - 0.71
    assert cell["regret"] == pytest.approx(0.80 - 0.71)
    assert cell["normalised"] == pytest.approx(1.0)
    flat = regret.cell_regret(grid(test=((0.5,) * 3,) * 4), 0.02)
    assert flat["regret"] == 0.0 and flat["normalised"] == 0.0  # no span: nothing to lose


def test_a_malformed_grid_is_one_line():
    with pytest.raises(ValueError, match="grid: expected >= 2 ascending rates"):
        regret.Grid((0.1, 0.01), VAL[:2], TEST[:2], 10)
    with pytest.raises(ValueError, match="same seeds' val and test"):
        regret.Grid(RATES, VAL, (*TEST[:3], (0.7, 0.7)), 10)


def test_pooled_regret_resamples_seeds_together_across_cells():
    cells = [{"per_seed": [0.0, 1.0], "clamped": True, "missing": False},
             {"per_seed": [0.0, 1.0], "clamped": False, "missing": False}]
    found = regret.pooled(cells)
    # a resample draws two seeds from {0, 1}: pooled mean 0, 0.5 or 1 with probability 1/4,
    # 1/2, 1/4, so the 2.5th and 97.5th percentiles are 0 and 1
    assert found == {"mean": 0.5, "ci_low": 0.0, "ci_high": 1.0, "cells": 2, "clamped": 1,
                     "missing": 0}
    steady = regret.pooled([{"per_seed": [0.2, 0.2], "clamped": False, "missing": False},
                            {"per_seed": [0.4, 0.4], "clamped": False, "missing": True}])
    assert (steady["mean"], steady["ci_low"], steady["ci_high"]) == pytest.approx((0.3,) * 3)
    assert regret.pooled([])["mean"] is None


def test_choice_takes_the_smallest_regret_and_the_earlier_candidate_on_a_tie():
    def rows(**means):
        return {k: {"mean": v} for k, v in means.items()}

    assert regret.choose(rows(a=0.2, b=0.1, c=0.3)) == "b"
    assert regret.choose(rows(a=0.2, b=0.1, c=0.1)) == "b"
    assert regret.choose(rows(a=None, b=0.4)) == "b"
    with pytest.raises(ValueError, match="no candidate"):
        regret.choose(rows(a=None))


def test_candidates_are_the_library_rules_with_both_bounds():
    assert tuple(suggestions.CONSTANT_LR_RULES) == regret.CANDIDATES
    assert {"geometric_mean", "arithmetic_mean", "base_lr", "max_lr"} <= set(regret.CANDIDATES)
    rates = regret.candidate_rates({"base_lr": 0.01, "max_lr": 0.04,
                                    "suggestions": {"valley": 0.003, "steepest": None}})
    assert rates["geometric_mean"] == pytest.approx(0.02)
    assert rates["arithmetic_mean"] == pytest.approx(0.025)
    assert (rates["base_lr"], rates["max_lr"], rates["valley"]) == (0.01, 0.04, 0.003)
    assert rates["steepest"] is None and rates["minimum"] is None


# --- the study's section: chosen on dev, reported on test -----------------------------------

GRID_RATES = (0.001, 0.01, 0.1, 1.0)


def table(best: int, scale: float = 1.0):
    """A table whose SGD and Adam grids peak at point `best` (val and test alike), test scores
    a triangle of height `scale` around it; the range tests give base 0.001, max 1.0 (so
    base_lr, geometric_mean and max_lr land on points 0, 1 or 2 (0.0316: the lower), 3)."""
    scores = [scale * (1 - abs(i - best) / 3) for i in range(4)]
    points = {f"p{i}": {"learning_rate": lr, "val": [s, s], "test": [s, s + 0.01 * scale]}
              for i, (lr, s) in enumerate(zip(GRID_RATES, scores, strict=True))}
    result = {"oracles": {f"oracle_{f}": {"points": copy.deepcopy(points)}
                          for f in ("sgd", "adam")}}
    rt = {"base_lr": 0.001, "max_lr": 1.0, "steps": [50, 50], "batch_size": 10,
          "suggestions": {"valley": 0.01}, "finders": {"fastai_valley": 0.1,
                                                        "clrpipe_clr_pair": [0.001, 1.0]}}
    detail = {"epochs": 10, "fit_rows": 100, "range_tests": {"sgd": rt, "adam": rt}}
    return result, detail


def study(dev_best=(3, 3), test_best=0, test_scale=1.0):
    parts = {"a": table(dev_best[0]), "b": table(dev_best[1], 0.5),
             "c": table(test_best, test_scale)}
    return {k: v[0] for k, v in parts.items()}, {k: v[1] for k, v in parts.items()}


def test_the_rule_is_chosen_on_dev_and_reported_on_test():
    results, details = study()
    found = regret.lr_rule(results, details, dev=["a", "b"], test=["c"])
    # both dev tables peak at 1.0, where max_lr and arithmetic_mean (0.5) land: a tie, so the
    # earlier candidate
    assert found["dev_regret"]["max_lr"]["mean"] == pytest.approx(0.0)
    assert found["dev_regret"]["arithmetic_mean"]["mean"] == pytest.approx(0.0)
    assert found["chosen"] == "arithmetic_mean"
    assert found["dev_regret"]["base_lr"]["cells"] == 4  # 2 tables x SGD, Adam
    # normalised by each table's span: the 0.5-high table b counts as much as a
    assert found["dev_regret"]["base_lr"]["mean"] == pytest.approx(1.0)
    # on c (peak at 0.001) the chosen rule is the worst: regret 1
    assert found["test_regret"]["arithmetic_mean"]["mean"] == pytest.approx(1.0)
    assert found["test_regret"]["base_lr"]["mean"] == pytest.approx(0.0)
    cell = found["per_table"]["c"]["sgd"]["geometric_mean"]
    assert cell["lr"] == pytest.approx(10 ** -1.5) and cell["grid_lr"] == 0.01
    assert cell["compute_epochs"] == 20.0  # 10 epochs + 100 batches x 10 rows / 100 rows
    assert found["per_table"]["a"]["adam"]["valley"]["grid_lr"] == 0.01
    # the other finders are judged too, as reference (the CLR pair is not a constant rate)
    assert set(found["finders"]) == {"fastai_valley"}
    assert found["finders"]["fastai_valley"]["dev"]["mean"] == pytest.approx(1 / 3)
    text = "\n".join(regret.markdown(found))
    assert "**arithmetic_mean**" in text and "| arithmetic_mean (chosen) | +0.000" in text
    assert "| fastai_valley (reference) |" in text and "c (test)" in text


def test_the_test_tables_cannot_influence_the_choice():
    base = regret.lr_rule(*study(), dev=["a", "b"], test=["c"])
    for test_best, scale in ((0, 0.01), (1, 7.0), (3, 1.0)):
        results, details = study(test_best=test_best, test_scale=scale)
        results["c"]["oracles"]["oracle_adam"]["points"]["p2"]["test"] = [None, None]
        found = regret.lr_rule(results, details, dev=["a", "b"], test=["c"])
        assert found["chosen"] == base["chosen"]
        assert found["dev_regret"] == base["dev_regret"]
    assert found["test_regret"] != base["test_regret"]  # c itself did change
    results, details = study()  # a grid that diverged everywhere is left out, not fatal
    for point in results["c"]["oracles"]["oracle_sgd"]["points"].values():
        point["test"] = [None, None]
    assert set(regret.lr_rule(results, details, dev=["a", "b"], test=["c"])["per_table"]["c"]) \
        == {"adam"}
    alone = regret.lr_rule(*study(), dev=["a", "b"], test=[])
    assert alone["chosen"] == base["chosen"] and alone["dev_regret"] == base["dev_regret"]
    # while the dev tables do decide it
    assert regret.lr_rule(*study(dev_best=(0, 0)), dev=["a", "b"], test=["c"])["chosen"] == \
        "base_lr"


def test_sweep_suggestions_are_the_range_tests_own_from_its_raw_curves():
    from clrpipe import range_test as rt
    from clrpipe.settings import RangeTestParams
    from tests.test_range_test import _curve

    cfg = RangeTestParams(seeds=3)
    curves = [_curve(s, c) for s, c in enumerate((0.1, 0.2, 0.4))]
    direct = rt.analyse(curves, cfg)
    found = regret.sweep_suggestions([(c.lrs.tolist(), c.losses.tolist()) for c in curves], cfg)
    assert found == direct.suggestions and found["valley"] is not None
    rates = regret.candidate_rates({"base_lr": direct.base_lr, "max_lr": direct.max_lr,
                                    "suggestions": found})
    assert rates == {rule: direct.constant_lr(rule) for rule in regret.CANDIDATES}


def test_the_library_default_is_the_rule_the_committed_study_chose():
    import json

    from tests.conftest import REPO

    found = json.loads((REPO / "metrics" / "study.json").read_text())
    if "lr_rule" not in found:
        pytest.skip("metrics/study.json has no lr_rule yet: regenerate it with "
                    "`dvc repro study/dvc.yaml`, then set suggestions.DEFAULT_LR_RULE to it")
    assert found["lr_rule"]["chosen"] == suggestions.DEFAULT_LR_RULE, (
        "set clrpipe.suggestions.DEFAULT_LR_RULE to the study's choice (metrics/study.json "
        "lr_rule.chosen), or explain why not")

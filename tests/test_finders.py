"""The other LR finders' rules (`clrpipe.study.finders`) against hand-made sweep curves."""

from __future__ import annotations

import numpy as np
import pytest

from clrpipe.study import finders

# 20 batches, lr x 10^(1/4) per batch; the raw loss falls 10, 9, ..., 1 and then shoots up
VALLEY_LRS = 1e-4 * 10 ** (np.arange(20) / 4)
VALLEY_LOSSES = np.r_[10.0 - np.arange(10), 100.0 * (1 + np.arange(10))]
# 60 batches over 6 decades; a loss drop of 0.5 at batch 20 (lr 1e-3), of 1.5 at batch 40 (0.1)
STEP_LRS = 1e-5 * 10 ** (np.arange(60) / 10)
STEP_LOSSES = np.where(np.arange(60) < 20, 3.0, np.where(np.arange(60) < 40, 2.5, 1.0))


def test_the_smoothings_match_a_hand_calculation():
    # beta 0.5: avg 0.5 * 2 = 1, / (1 - 0.5) = 2; avg 0.5 * 1 + 0 = 0.5, / (1 - 0.25) = 2/3
    assert finders.debiased_ema([2.0, 0.0], 0.5) == pytest.approx([2.0, 2 / 3])
    assert finders.debiased_ema([1.5] * 5) == pytest.approx([1.5] * 5)
    # Lightning's debiasing is one step ahead: 0.5 * 2 / (1 - 0.25) = 4/3
    assert finders.debiased_ema([2.0], 0.5, first=2) == pytest.approx([4 / 3])
    # torch-lr-finder: the first loss as it is, then 0.05 * 0 + 0.95 * 2 = 1.9
    assert finders.torch_lr_finder_ema([2.0, 0.0]) == pytest.approx([2.0, 1.9])


def test_fastai_valley_and_minimum_as_its_code_computes_them():
    # fastai keeps [20 // 10 : -5] = batches 2..14. The debiased EMA of a strictly falling
    # loss falls strictly, and jumps once the raw loss does: smoothed falls over batches 2..9
    # (slice positions 0..7), so the longest decreasing run ends at max_end = 7 with length 8,
    # and fastai sets max_start = 7 - 8 = -1 (its off-by-one). sections = 8 / 3 = 2.67,
    # idx = -1 + int(2.67) + int(1.33) = 2: slice position 2 = batch 4, lr 1e-4 * 10 = 1e-3.
    assert finders.fastai_valley(VALLEY_LRS, VALLEY_LOSSES) == pytest.approx(1e-3)
    # minimum: the lowest smoothed loss is batch 9's, lr 1e-4 * 10^(9/4), / 10
    assert finders.fastai_minimum(VALLEY_LRS, VALLEY_LOSSES) == pytest.approx(
        1e-5 * 10 ** (9 / 4))
    # a NaN cuts the slice before it (fastai's drop_idx): batches 2..4 are left, still falling
    cut = VALLEY_LOSSES.copy()
    cut[5] = np.nan
    assert finders.fastai_minimum(VALLEY_LRS, cut) == pytest.approx(VALLEY_LRS[4] / 10)


def test_steepest_in_log_lr_and_against_the_lr_pick_different_drops():
    # Against the batch index (log-LR: Lightning <= 2.5.2, torch-lr-finder) the bigger drop
    # wins, at lr 0.1 (Lightning's one-step-ahead debiasing makes its smoothed loss still
    # climb by ~0.005 a batch around batch 20, which a drop of 0.1 there would have cancelled);
    # against the lr itself (Lightning >= 2.5.3) the slope is divided by a
    # step in lr 100x smaller at 1e-3, so the small drop there wins.
    i_big, i_small = 40, 20
    for rule in ("lightning_steepest_log", "torch_lr_finder_steepest"):
        found = finders.RULES[rule](STEP_LRS, STEP_LOSSES)
        assert STEP_LRS[i_big] <= found <= STEP_LRS[i_big + 2], rule
    found = finders.lightning_steepest(STEP_LRS, STEP_LOSSES, "2.5.3")
    assert STEP_LRS[i_small] <= found <= STEP_LRS[i_small + 2]


def test_too_short_sweeps_give_no_suggestion_and_medians_skip_them():
    short = (VALLEY_LRS[:12], VALLEY_LOSSES[:12])
    assert finders.torch_lr_finder_steepest(*short) is None  # needs 10 + 5 + 2 batches
    assert finders.lightning_steepest(VALLEY_LRS[:11], VALLEY_LOSSES[:11]) is None
    found = finders.suggest_all([short, (STEP_LRS, STEP_LOSSES), (STEP_LRS, STEP_LOSSES)])
    torch = found["torch_lr_finder_steepest"]
    assert torch["per_seed"][0] is None
    assert torch["median"] == pytest.approx(torch["per_seed"][1])
    assert set(found) == set(finders.RULES)

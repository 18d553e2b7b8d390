"""`clrpipe.stats` against hand calculations, textbook values and properties."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from clrpipe.stats import bootstrap_interval, holm, median, paired_bootstrap, wilson_interval


def test_wilson_matches_newcombe_1998_and_scipy_for_whole_counts():
    # Newcombe (1998), Stat. Med. 17:857, Table I: 81/263 -> 0.2553..0.3662; 0/10 -> 0..0.2775.
    found = wilson_interval(81 / 263, 263)
    assert (found.low, found.high) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert (wilson_interval(0.0, 10).low, wilson_interval(0.0, 10).high) == pytest.approx(
        (0.0, 0.2775), abs=5e-5)
    for k, n in [(1, 7), (15, 148), (60, 69), (69, 69), (113, 114)]:
        ci = sp.binomtest(k, n).proportion_ci(0.9, method="wilson")
        found = wilson_interval(k / n, n, 0.9)
        assert (found.low, found.high) == pytest.approx((ci.low, ci.high), abs=1e-12)
        assert found.mean == k / n


def test_wilson_respects_bounds_where_the_t_interval_did_not():
    # The old report: a mean of 93.6% over seeds on 69 test rows had the t-interval
    # [82.86, 104.39]. Wilson on the 69 rows stays inside [0, 1]; a perfect score reaches 1.
    found = wilson_interval(0.9362, 69)
    assert 0.0 < found.low < 0.9362 < found.high < 1.0
    perfect = wilson_interval(1.0, 69)
    z2 = sp.norm.ppf(0.975) ** 2
    assert perfect.high == 1.0
    assert perfect.low == pytest.approx(69 / (69 + z2))  # n / (n + z²) for p = 1
    for p in np.linspace(0, 1, 41):
        ci = wilson_interval(float(p), 25)
        assert 0.0 <= ci.low <= p <= ci.high <= 1.0
    assert wilson_interval(0.5, 0).low is None
    with pytest.raises(ValueError, match="proportion in \\[0, 1\\]"):
        wilson_interval(1.2, 10)


def test_wilson_coverage_is_near_nominal_on_a_fixed_seed():
    rng = np.random.default_rng(7)
    n, p = 60, 0.9
    draws = rng.binomial(n, p, size=4000) / n
    covered = np.mean([(ci.low <= p <= ci.high)
                       for ci in (wilson_interval(float(x), n) for x in draws)])
    assert 0.93 <= covered <= 0.97


def test_bootstrap_interval_stays_within_the_data_and_covers_on_a_fixed_seed():
    values = [0.61, 0.64, 0.58, 0.66, 0.63]
    found = bootstrap_interval(values)
    assert found.mean == pytest.approx(0.624)
    assert min(values) <= found.low < found.mean < found.high <= max(values)
    assert bootstrap_interval(values) == found  # fixed resampling seed: same interval
    assert bootstrap_interval([0.5]).low is None
    assert (bootstrap_interval([0.5, 0.5]).low, bootstrap_interval([0.5, 0.5]).high) == (0.5, 0.5)
    rng = np.random.default_rng(3)
    hits = [bootstrap_interval(rng.normal(1.0, 1.0, 40), seed=i) for i in range(200)]
    covered = np.mean([ci.low <= 1.0 <= ci.high for ci in hits])
    assert 0.88 <= covered <= 0.99


def test_paired_bootstrap_matches_the_binomial_hand_calculation():
    # d = (+1, +1, +1, +1, -1): a resample's mean is (2K - 5) / 5 with K ~ Binomial(5, 0.8)
    # the number of +1 drawn. P*(mean <= 0) = P(K <= 2) = 0.05792 and P*(mean >= 0) =
    # P(K >= 3) = 0.94208, so p = 2 * 0.05792 = 0.1158. The 2.5% point: P(K <= 1) = 0.00672 <
    # 0.025 < P(K <= 2), so K = 2, mean -0.2; the 97.5% point: P(K = 5) = 0.328, mean 1.
    a, b = [2.0, 2.0, 2.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]
    found = paired_bootstrap(a, b)
    assert found.mean == pytest.approx(0.6)
    assert found.p_value == pytest.approx(2 * sp.binom.cdf(2, 5, 0.8), abs=0.01)
    assert (found.low, found.high) == pytest.approx((-0.2, 1.0), abs=1e-9)
    # A constant nonzero difference is as sure as resampling can say; none at all is p = 1.
    assert paired_bootstrap([2, 3, 4], [1, 2, 3]).p_value == pytest.approx(2 / 10000)
    assert paired_bootstrap([1, 2], [1, 2]).p_value == 1.0
    assert paired_bootstrap([1.0], [0.0]).low is None
    with pytest.raises(ValueError, match="not pairs"):
        paired_bootstrap([1, 2], [1])


def test_paired_bootstrap_sees_a_shift_that_unpaired_spread_hides():
    base = np.array([0.60, 0.70, 0.80, 0.65, 0.75])
    found = paired_bootstrap(base + 0.01 + np.array([0.001, -0.001, 0.0, 0.002, -0.002]), base)
    assert found.low > 0 and found.p_value < 0.01


def test_holm_matches_a_hand_calculation():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, max(0.04 * 1, 0.06) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_median_skips_or_counts_missing_as_worst():
    assert median([3, None, 1]) == 2
    assert median([3, None, 1], missing="worst") == 3
    assert median([None, None, 1], missing="worst") is None

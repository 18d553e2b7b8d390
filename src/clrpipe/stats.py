"""Small statistics shared by the range test and the comparison. Pure: numpy and scipy only
(scipy imported by the intervals only: the range test needs `median`, and scipy is not a
dependency of the library, only of `clrpipe[pipeline]`).

Intervals are scipy's: the Student-t interval of a mean is `ttest_1samp(...).confidence_interval`
and the Welch interval of a difference of means is `ttest_ind(..., equal_var=False)`'s.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["Interval", "difference_interval", "median", "t_interval"]


@dataclass(frozen=True)
class Interval:
    """Mean of `n` values and its confidence interval; `low`/`high` are None when n < 2."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else self.high - self.mean


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean: mean +- t(1 - a/2, n - 1) * s / sqrt(n)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("t_interval: no values")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, None, None, 1)
    if np.ptp(x) == 0:
        return Interval(mean, mean, mean, int(x.size))
    from scipy import stats

    with warnings.catch_warnings():  # near-equal values: scipy warns of precision loss
        warnings.simplefilter("ignore", RuntimeWarning)
        found = stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
    return Interval(mean, float(found.low), float(found.high), int(x.size))


def difference_interval(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Interval:
    """Welch interval of mean(a) - mean(b) (unequal variances); None bounds if n < 2 in either."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(xa.mean() - xb.mean())
    n = int(min(xa.size, xb.size))
    if xa.size < 2 or xb.size < 2:
        return Interval(diff, None, None, n)
    if np.ptp(xa) == 0 and np.ptp(xb) == 0:
        return Interval(diff, diff, diff, n)
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        found = stats.ttest_ind(xa, xb, equal_var=False).confidence_interval(confidence)
    return Interval(diff, float(found.low), float(found.high), n)


def median(
    values: Iterable[float | None], missing: Literal["skip", "worst"] = "skip"
) -> float | None:
    """Median of the values; a None is left out (`skip`) or counts as +infinity (`worst`, e.g.
    a seed that never reached a target counts as the slowest). None when nothing is left or
    the median itself is infinite."""
    listed = list(values)
    kept = [v for v in listed if v is not None] if missing == "skip" else [
        math.inf if v is None else v for v in listed
    ]
    if not kept:
        return None
    found = float(np.median(kept))
    return None if math.isinf(found) else found

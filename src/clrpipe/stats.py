"""Small statistics shared by the range test, the comparison and the study. Pure: numpy and
scipy only (scipy imported inside the intervals: the library needs only `median`, and scipy is
a dependency of `clrpipe[pipeline]`, not of the library).

- `wilson_interval`: Wilson's score interval of a proportion (an accuracy on `n` test rows).
  Unlike mean +- t * s / sqrt(n) it never leaves [0, 1] and stays sensible near 0 and 1.
- `bootstrap_interval`: percentile bootstrap interval of a mean (`scipy.stats.bootstrap`), for
  what is not a proportion (R², losses); its bounds never leave the values' range.
- `paired_bootstrap`: the bootstrap interval of mean(a - b) over pairs measured on the same
  units (seeds on one test set), and its two-sided bootstrap p-value.
- `holm`: Holm's step-down adjustment of a family of p-values (family-wise error control).

Resampling uses a fixed seed, so a report regenerated from the same numbers is identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "Difference",
    "Interval",
    "bootstrap_interval",
    "holm",
    "median",
    "paired_bootstrap",
    "wilson_interval",
]

RESAMPLES = 9999
"""Bootstrap resamples (scipy's default)."""


@dataclass(frozen=True)
class Interval:
    """A statistic (`mean`) of `n` values and its confidence interval; `low`/`high` are None
    when there is no interval to give (fewer than 2 values, or no rows)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self) -> float | None:
        return None if self.high is None or self.low is None else (self.high - self.low) / 2


@dataclass(frozen=True)
class Difference(Interval):
    """mean(a - b) over pairs, its interval and the two-sided p-value of "no difference"."""

    p_value: float = 1.0


def wilson_interval(proportion: float, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion observed on `n` trials:
    (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z the normal quantile. `proportion`
    may be a mean of several proportions on the same n rows (an accuracy averaged over seeds),
    so it need not be a whole count over n; for a whole count it equals
    `scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`."""
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"wilson_interval: expected a proportion in [0, 1], got {proportion}")
    if n < 1:
        return Interval(float(proportion), None, None, 0)
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p, z2 = float(proportion), z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if p == 0 else min(p, max(0.0, centre - half))  # exact at 0 and 1: no rounding
    high = 1.0 if p == 1 else max(p, min(1.0, centre + half))
    return Interval(p, low, high, int(n))


def _bootstrap(x: np.ndarray, confidence: float, seed: int):
    from scipy import stats

    return stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                           method="percentile", rng=np.random.default_rng(seed))


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of `values` (no bounds for fewer than 2)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_interval: no values")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, None, None, int(x.size))
    if np.ptp(x) == 0:
        return Interval(mean, mean, mean, int(x.size))
    found = _bootstrap(x, confidence, seed).confidence_interval
    return Interval(mean, float(found.low), float(found.high), int(x.size))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                     seed: int = 0) -> Difference:
    """mean(a - b) for pairs measured on the same units, its percentile bootstrap interval
    (the pairs resampled together) and the two-sided bootstrap p-value
    2 min(P*(mean <= 0), P*(mean >= 0)), each P* counted as (hits + 1) / (resamples + 1):
    below 1 - confidence exactly when the interval leaves out 0 (up to that +1)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired_bootstrap: {xa.size} values against {xb.size}: not pairs")
    if xa.size == 0:
        raise ValueError("paired_bootstrap: no pairs")
    d = xa - xb
    mean, n = float(d.mean()), int(d.size)
    if n < 2:
        return Difference(mean, None, None, n, 1.0)
    if np.ptp(d) == 0:
        return Difference(mean, mean, mean, n, 1.0 if mean == 0 else 2 / (RESAMPLES + 1))
    found = _bootstrap(d, confidence, seed)
    means = found.bootstrap_distribution
    below = (np.count_nonzero(means <= 0) + 1) / (means.size + 1)
    above = (np.count_nonzero(means >= 0) + 1) / (means.size + 1)
    return Difference(mean, float(found.confidence_interval.low),
                      float(found.confidence_interval.high), n, min(1.0, 2 * min(below, above)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest of m becomes
    max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where adjusted < alpha keeps the
    family-wise error rate at alpha (Holm 1979)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


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

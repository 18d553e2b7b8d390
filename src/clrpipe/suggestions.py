"""The range test's suggestion rules, small interchangeable functions (fastai style).

Per seed, on the smoothed curve (`clrpipe.range_test.analyse_curve` applies them): `steepest`,
`valley`, `minimum` (fastai's minimum/10), `edge_index` (where the loss starts to rise) and
Smith's `accuracy_bounds`. Over seeds, the constant learning rate to train with
(`RangeTestResult.lr`): `CONSTANT_LR_RULES`, each a function of `(base_lr, max_lr,
suggestions)`, `DEFAULT_LR_RULE` the one `.lr` uses: `valley` (the seeds' median valley
suggestion), chosen by the study on its development tables with SGD and Adam and confirmed on
its test tables (docs/study.md, "The constant rate"); `compare` and the study's own range-test
methods keep the geometric mean of the pair, so the study does not depend on its own answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from clrpipe.errors import ClrpipeError

__all__ = [
    "CONSTANT_LR_RULES",
    "DEFAULT_LR_RULE",
    "accuracy_bounds",
    "constant_lr",
    "edge_index",
    "minimum",
    "steepest",
    "valley",
    "valley_span",
]

SLOPE_HALF_WIDTH = 0.1
FLOOR_TOLERANCE = 0.1
ACC_RISE_START = 0.1
ACC_RISE_END = 0.9
MIN_ACC_RISE = 0.02

def steepest(lrs: np.ndarray, smoothed: np.ndarray) -> float | None:
    """LR of the most negative slope of the smoothed loss against log10(lr).

    Each slope is taken across +-`SLOPE_HALF_WIDTH` decades rather than between neighbours,
    so batches packed densely on the log axis (the top of a linear sweep) do not turn small
    wiggles into huge slopes.
    """
    lrs, smoothed = np.asarray(lrs, float), np.asarray(smoothed, float)
    if lrs.size < 3:
        return None
    x = np.log10(lrs)
    lo = np.searchsorted(x, x - SLOPE_HALF_WIDTH, side="left")
    hi = np.searchsorted(x, x + SLOPE_HALF_WIDTH, side="right") - 1
    lo, hi = np.minimum(lo, np.arange(x.size)), np.maximum(hi, np.arange(x.size))
    width = x[hi] - x[lo]
    ok = width > 0
    if not ok.any():
        return None
    slope = np.full(x.size, np.inf)
    slope[ok] = (smoothed[hi[ok]] - smoothed[lo[ok]]) / width[ok]
    i = int(np.argmin(slope))
    return float(lrs[i]) if slope[i] < 0 else None


def valley_span(smoothed: np.ndarray) -> tuple[int, int]:
    """(start, end) indices of the longest strictly decreasing subsequence (first one found)."""
    s = np.asarray(smoothed, float)
    n = s.size
    length = np.ones(n, dtype=int)
    start = np.arange(n)
    for i in range(1, n):
        earlier = np.flatnonzero(s[:i] > s[i])
        if earlier.size:
            j = earlier[np.argmax(length[earlier])]
            length[i], start[i] = length[j] + 1, start[j]
    end = int(np.argmax(length))
    return int(start[end]), end


def valley(lrs: np.ndarray, smoothed: np.ndarray) -> float | None:
    """fastai's valley: the LR halfway (in log10 lr) along the longest decreasing subsequence.

    Halfway in log10 lr is fastai's halfway-by-batch for an exponential sweep and stays
    meaningful for a linear one.
    """
    lrs = np.asarray(lrs, float)
    if lrs.size < 2:
        return None
    lo, hi = valley_span(smoothed)
    if hi == lo:
        return None
    x = np.log10(lrs[lo : hi + 1])
    return float(lrs[lo + int(np.argmin(np.abs(x - (x[0] + x[-1]) / 2)))])


def edge_index(smoothed: np.ndarray) -> int:
    """Where the loss starts to rise: the last index after the minimum before the smoothed loss
    climbs more than `FLOOR_TOLERANCE` x its total drop (highest earlier value - minimum) above
    the minimum. Robust on a flat floor, where the argmin itself is set by noise."""
    s = np.asarray(smoothed, float)
    best = int(np.argmin(s))
    margin = FLOOR_TOLERANCE * max(float(s[: best + 1].max() - s[best]), 0.0)
    above = np.flatnonzero(s[best:] > s[best] + margin)
    return best + int(above[0]) - 1 if above.size else s.size - 1


def minimum(lrs: np.ndarray, smoothed: np.ndarray) -> float | None:
    """fastai's minimum/10: a tenth of the LR with the lowest smoothed loss."""
    lrs = np.asarray(lrs, float)
    return float(lrs[int(np.argmin(smoothed))]) / 10.0 if lrs.size else None


def accuracy_bounds(lrs: np.ndarray, accuracy: np.ndarray) -> tuple[float, float] | None:
    """Smith's bounds: LRs where accuracy has made 10% and 90% of its rise; None if it barely rose.

    The curve is first passed through a centred median of 3 (no lag) so one lucky evaluation
    does not set a bound.
    """
    lrs, acc = np.asarray(lrs, float), np.asarray(accuracy, float)
    ok = np.isfinite(acc)
    lrs, acc = lrs[ok], acc[ok]
    if acc.size < 3:
        return None
    padded = np.concatenate([acc[:1], acc, acc[-1:]])
    acc = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    peak = int(np.argmax(acc))
    low = float(np.min(acc[: peak + 1]))
    rise = float(acc[peak]) - low
    if rise < MIN_ACC_RISE:
        return None
    start = int(np.argmax(acc >= low + ACC_RISE_START * rise))
    stop = int(np.argmax(acc >= low + ACC_RISE_END * rise))
    base, top = float(lrs[start]), float(lrs[stop])
    return (base, top) if base < top else None


# The constant rate ------------------------------------------------------------------------

LrRule = Callable[[float, float, Mapping[str, float | None]], float | None]


def geometric_mean(base_lr: float, max_lr: float, suggestions: Mapping[str, float | None]):
    """sqrt(base_lr * max_lr): the middle of the bounds on the log axis (the default)."""
    return math.sqrt(base_lr * max_lr)


def arithmetic_mean(base_lr: float, max_lr: float, suggestions: Mapping[str, float | None]):
    """(base_lr + max_lr) / 2: the average LR a triangular cycle between the bounds applies."""
    return (base_lr + max_lr) / 2


def lower_bound(base_lr: float, max_lr: float, suggestions: Mapping[str, float | None]):
    """base_lr: the cycle's bottom, the cautious end of the pair."""
    return base_lr


def upper_bound(base_lr: float, max_lr: float, suggestions: Mapping[str, float | None]):
    """max_lr: the cycle's peak, the bold end of the pair."""
    return max_lr


def _suggested(method: str) -> LrRule:
    def rule(base_lr: float, max_lr: float, suggestions: Mapping[str, float | None]):
        return suggestions.get(method)

    rule.__doc__ = f"The seeds' median {method!r} suggestion (None when no seed had one)."
    return rule


CONSTANT_LR_RULES: dict[str, LrRule] = {
    "geometric_mean": geometric_mean,
    "arithmetic_mean": arithmetic_mean,
    "valley": _suggested("valley"),
    "minimum": _suggested("minimum"),
    "steepest": _suggested("steepest"),
    "base_lr": lower_bound,
    "max_lr": upper_bound,
}
DEFAULT_LR_RULE = "valley"  # the study's choice: metrics/study.json lr_rule.chosen


def constant_lr(base_lr: float, max_lr: float, suggestions: Mapping[str, float | None],
                rule: str = DEFAULT_LR_RULE) -> float | None:
    """The constant LR `rule` (a key of `CONSTANT_LR_RULES`) suggests."""
    found = CONSTANT_LR_RULES.get(rule)
    if found is None:
        raise ClrpipeError(
            f"rule: expected one of {', '.join(CONSTANT_LR_RULES)}, got {rule!r}"
        )
    return found(base_lr, max_lr, suggestions)

"""Comparison core: per-method summaries over seeds, and the markdown table. No I/O.

A *trial* is one training of one method with one seed. Per method the summary gives the test
accuracy's mean and Student-t confidence interval over seeds (mean +- t(1 - a/2, n-1) * s/sqrt(n),
s the sample standard deviation), how many epochs and seconds the runs needed before their
validation accuracy first reached a stated target (medians over seeds, a seed that never reached
it counting as infinitely slow, so "not reached" means at least half of them missed), the final
training loss and the test loss. `difference_interval` (Welch) says how far the best network is
from a reference such as gradient boosting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from clrpipe.errors import ClrpipeError

RATE_KEYS = {"initial_learning_rate": 0, "maximal_learning_rate": 1}
"""Schedule keys a null fills from the range test's (base_lr, max_lr), by index."""

SUGGESTED_LR = ("geometric_mean", "arithmetic_mean")


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
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size))


def difference_interval(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Interval:
    """Welch interval of mean(a) - mean(b) (unequal variances); None bounds if n < 2 in either."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(xa.mean() - xb.mean())
    if xa.size < 2 or xb.size < 2:
        return Interval(diff, None, None, int(min(xa.size, xb.size)))
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, int(min(xa.size, xb.size)))
    df = (va + vb) ** 2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df) * se)
    return Interval(diff, diff - half, diff + half, int(min(xa.size, xb.size)))


def suggested_constant_lr(bounds: tuple[float, float], rule: str = "geometric_mean") -> float:
    """The range test's single constant LR: the geometric mean of (base_lr, max_lr), i.e. the
    middle of the bounds on the log axis the test sweeps (or their arithmetic mean, which is
    the average LR a triangular cycle applies)."""
    base, peak = bounds
    if rule == "geometric_mean":
        return math.sqrt(base * peak)
    if rule == "arithmetic_mean":
        return (base + peak) / 2
    raise ValueError(f"suggested_lr: expected one of {', '.join(SUGGESTED_LR)}, got {rule!r}")


def fill_rates(
    schedule: Mapping, bounds: tuple[float, float] | None, rule: str, where: str
) -> dict:
    """A copy of a `schedule:`-style mapping whose null learning rates are the range test's:
    CLR/one-cycle bounds from (base_lr, max_lr), a constant's rate from `suggested_constant_lr`.
    `where` names the mapping in the error when a rate is null and no bounds are known."""
    filled = dict(schedule)
    nulls = [k for k in (*RATE_KEYS, "learning_rate") if k in filled and filled[k] is None]
    if nulls and bounds is None:
        raise ClrpipeError(
            f"{where}.{nulls[0]}: null means 'from the range test', but metrics/range_test.json "
            "was not found (run `clrpipe range-test` first or set a number)"
        )
    for key in nulls:
        if key == "learning_rate":
            filled[key] = suggested_constant_lr(bounds, rule)
        else:
            filled[key] = bounds[RATE_KEYS[key]]
    return filled


@dataclass(frozen=True)
class TrialOutcome:
    """One training's result. `epochs` False marks a non-iterative reference (gradient
    boosting): its single `val_accuracy`/`epoch_seconds` entry is the whole fit."""

    method: str
    seed: int
    test_accuracy: float
    test_loss: float
    final_loss: float
    val_accuracy: tuple[float, ...]
    epoch_seconds: tuple[float, ...]
    epochs: bool = True


def first_reach(
    val_accuracy: Sequence[float], epoch_seconds: Sequence[float], target: float
) -> tuple[int | None, float | None]:
    """(1-based epoch, cumulative seconds) when validation accuracy first reaches `target`."""
    elapsed = 0.0
    for epoch, (accuracy, seconds) in enumerate(zip(val_accuracy, epoch_seconds, strict=True), 1):
        elapsed += seconds
        if accuracy >= target:
            return epoch, elapsed
    return None, None


@dataclass(frozen=True)
class MethodSummary:
    """One method over its seeds (see the module docstring for each quantity)."""

    method: str
    seeds: tuple[int, ...]
    test_accuracy: Interval
    test_accuracy_sd: float
    reached: int
    epochs_to_target: float | None
    seconds_to_target: float | None
    train_seconds: float
    final_loss: float
    test_loss: float
    iterative: bool = True
    per_seed_accuracy: tuple[float, ...] = field(default=())

    def as_dict(self) -> dict:
        """JSON-ready: numbers and None only."""
        return {
            "seeds": len(self.seeds),
            "test_accuracy_mean": self.test_accuracy.mean,
            "test_accuracy_ci_low": self.test_accuracy.low,
            "test_accuracy_ci_high": self.test_accuracy.high,
            "test_accuracy_sd": self.test_accuracy_sd,
            "reached_target": self.reached,
            "epochs_to_target": self.epochs_to_target if self.iterative else None,
            "seconds_to_target": self.seconds_to_target,
            "train_seconds": self.train_seconds,
            "final_loss": self.final_loss,
            "test_loss": self.test_loss,
        }


def _median_or_none(values: Iterable[float | None]) -> float | None:
    median = float(np.median([math.inf if v is None else v for v in values]))
    return None if math.isinf(median) else median


def summarize(
    outcomes: Iterable[TrialOutcome], target: float, confidence: float = 0.95
) -> dict[str, MethodSummary]:
    """Per-method summaries, in the order methods first appear; seeds sorted."""
    by_method: dict[str, list[TrialOutcome]] = {}
    for outcome in outcomes:
        by_method.setdefault(outcome.method, []).append(outcome)
    summaries = {}
    for method, trials in by_method.items():
        trials = sorted(trials, key=lambda t: t.seed)
        seeds = [t.seed for t in trials]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"summarize: method {method} has a seed twice: {seeds}")
        accuracy = [t.test_accuracy for t in trials]
        reach = [first_reach(t.val_accuracy, t.epoch_seconds, target) for t in trials]
        summaries[method] = MethodSummary(
            method=method,
            seeds=tuple(seeds),
            test_accuracy=t_interval(accuracy, confidence),
            test_accuracy_sd=float(np.std(accuracy, ddof=1)) if len(accuracy) > 1 else 0.0,
            reached=sum(epoch is not None for epoch, _ in reach),
            epochs_to_target=_median_or_none(epoch for epoch, _ in reach),
            seconds_to_target=_median_or_none(seconds for _, seconds in reach),
            train_seconds=float(np.mean([sum(t.epoch_seconds) for t in trials])),
            final_loss=float(np.mean([t.final_loss for t in trials])),
            test_loss=float(np.mean([t.test_loss for t in trials])),
            iterative=all(t.epochs for t in trials),
            per_seed_accuracy=tuple(accuracy),
        )
    return summaries


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def markdown_table(
    summaries: Mapping[str, MethodSummary], target: float, confidence: float = 0.95
) -> str:
    """One row per method: seeds, test accuracy mean and interval (%), time to the target
    validation accuracy (median epochs and seconds, and how many seeds reached it), mean
    training seconds, final training loss and test loss."""
    level = f"{100 * confidence:g}%"
    goal = f"{100 * target:g}%"
    lines = [
        f"| method | seeds | test accuracy % (mean) | {level} interval | "
        f"epochs to {goal} val | seconds to {goal} val | reached | train s | final train loss "
        "| test loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries.values():
        epochs = "—" if not s.iterative else (
            "not reached" if s.epochs_to_target is None else f"{s.epochs_to_target:g}"
        )
        seconds = "not reached" if s.seconds_to_target is None else f"{s.seconds_to_target:.1f}"
        interval = (
            "n/a" if s.test_accuracy.low is None
            else f"[{_pct(s.test_accuracy.low)}, {_pct(s.test_accuracy.high)}]"
        )
        lines.append(
            f"| {s.method} | {len(s.seeds)} | {_pct(s.test_accuracy.mean)} | {interval} | "
            f"{epochs} | {seconds} | {s.reached}/{len(s.seeds)} | {s.train_seconds:.1f} | "
            f"{s.final_loss:.4f} | {s.test_loss:.4f} |"
        )
    return "\n".join(lines) + "\n"


def best_network(summaries: Mapping[str, MethodSummary]) -> MethodSummary | None:
    """The iterative method with the highest mean test accuracy."""
    networks = [s for s in summaries.values() if s.iterative]
    return max(networks, key=lambda s: s.test_accuracy.mean) if networks else None

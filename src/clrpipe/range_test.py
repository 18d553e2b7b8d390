"""LR range test analysis: from per-batch (lr, loss) sweeps over several seeds to CLR bounds.

Pure numpy, no I/O and no Keras, so every rule here is testable on synthetic curves. The Keras
side that produces the sweeps lives in `clrpipe.range_test_runner`.

Per seed (one sweep, LR rising every batch from `min_lr` to `max_lr`):

1. Smoothing: debiased EMA, ``avg_i = beta*avg_(i-1) + (1-beta)*v_i``,
   ``ema_i = avg_i / (1 - beta**(i+1))``, of ``v = log(loss)`` (`smoothing: log`, default: a
   geometric-mean EMA) or of ``v = loss`` (`smoothing: linear`, fastai/Lightning). An
   arithmetic EMA of a loss that falls by decades (regression) stays pinned near the earliest
   large values; on a test problem it sat 300x above the raw loss. Use `linear` for losses
   that can be <= 0.
2. Divergence (online, causal EMA as above): the sweep stops at the first batch whose loss is
   NaN/inf or whose EMA exceeds ``divergence_factor`` x the best EMA so far. That batch is not
   analysed; its LR is the seed's `divergence_lr`.
3. Analysis curve (`smoothed_loss`): the causal EMA lags ``beta/(1-beta)`` = 49 batches at 0.98
   -- up to a decade of LR on a short sweep -- so picks made on it land late (fastai and
   Lightning analyse it). Suggestions use the same EMA run forwards and backwards and averaged
   (geometric mean in log mode), which has no lag. The first `SKIP_START_FRACTION` is skipped.
   Each loss enters this curve capped at the divergence threshold (``divergence_factor`` x the
   best causal EMA so far): the batches between the blow-up and the (lagging) stop hold losses
   up to 1e20, and uncapped the backward EMA carries them decades of LR back -- on a 100-batch
   sweep of a 353-row regression table it put the rise at the sweep's start (2.5e-4, against
   a real rise near 0.15). The causal EMA and the divergence stop see the raw losses.
4. Suggestions:
   - `steepest`: most negative slope of the smoothed (log) loss against log10(lr), not against
     lr (Lightning#21141), each slope taken across +-`SLOPE_HALF_WIDTH` decades;
   - `valley`: fastai's rule as its code computes it -- the longest strictly decreasing
     *subsequence* (not contiguous run; it tolerates small bumps) of the smoothed loss, and the
     point halfway along it in log10(lr); unlike fastai, the subsequence's true start is used;
   - `minimum`: LR of the lowest smoothed loss / 10 (fastai);
   - `ceiling` (the edge): the LR where the loss starts to rise -- the last LR after the
     minimum before the smoothed (log) loss climbs more than `FLOOR_TOLERANCE` x its total drop
     above the minimum (a flat floor's argmin is set by noise; its end is not). It is below the
     divergence point by construction;
   - `loss_max` = ceiling / `EDGE_DIVISOR`;
   - `accuracy_base` / `accuracy_max` (Smith, when held-out accuracy is tracked): the LRs where
     accuracy has made `ACC_RISE_START` (starts rising) and `ACC_RISE_END` (slows, before it
     peaks or turns ragged) of its total rise, if that rise is at least `MIN_ACC_RISE`.
5. Bounds rule for the seed:
   - accuracy tracked and rising (rule "accuracy", Smith's CLR paper sec. 3.3):
     ``max_lr = min(accuracy_max, ceiling)``, ``base_lr = accuracy_base``;
   - otherwise (rule "loss"): ``max_lr = loss_max = ceiling / 3``, ``base_lr = max_lr / 4``
     (Smith: base = max/3-4);
   - in both, if ``base_lr >= max_lr`` then ``base_lr = max_lr / BASE_DIVISOR``.
   steepest and valley answer a different question -- a safe *constant* LR, where the loss
   falls fastest / halfway down -- and sit well below the edge on a quadratic with a known
   divergence threshold (2/lambda_max): 0.15x and 0.02x of it, against 0.3x for `loss_max`.
   They are reported and steepest is cross-checked, but they do not set the bounds.

Across seeds: ``base_lr`` and ``max_lr`` are the medians of the per-seed bounds; each bound's
spread is the max/min ratio and the IQR of log10 values. Flags: `methods_disagree` when the
median suggestions of `COMPARED_METHODS` (steepest, loss_max, accuracy_max) differ by more than
`DISAGREEMENT_FACTOR` (10x); `seeds_disagree` when per-seed `max_lr` values differ by more than
`SEED_SPREAD_FACTOR` (3x) or a seed gave no usable curve; `no_divergence` when a sweep neither
diverged nor rose off its floor (widen the range). `confident` is true only when none is raised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clrpipe.errors import ClrpipeError
from clrpipe.settings import RangeTestParams
from clrpipe.stats import median
from clrpipe.suggestions import (
    DEFAULT_LR_RULE,
    accuracy_bounds,
    constant_lr,
    edge_index,
    minimum,
    steepest,
    valley,
    valley_span,
)

__all__ = [
    "COMPARED_METHODS",
    "METHODS",
    "Curve",
    "CurveAnalysis",
    "DivergenceMonitor",
    "RangeTestResult",
    "Spread",
    "Suggestions",
    "accuracy_bounds",
    "aggregate",
    "analyse",
    "analyse_curve",
    "edge_index",
    "ema_debiased",
    "find_divergence",
    "lr_schedule",
    "minimum",
    "smooth_losses",
    "smooth_two_sided",
    "steepest",
    "valley",
    "valley_span",
]

LOG_FLOOR = 1e-12
STAGE_KEYS = {"validation_rows", "batch_size"}  # the stage's, not the analysis's
SKIP_START_FRACTION = 0.1
MIN_POINTS = 5
BASE_DIVISOR = 4.0
EDGE_DIVISOR = 3.0
DISAGREEMENT_FACTOR = 10.0
SEED_SPREAD_FACTOR = 3.0
METHODS = ("steepest", "valley", "minimum", "loss_max", "accuracy_base", "accuracy_max")
COMPARED_METHODS = ("steepest", "loss_max", "accuracy_max")


def lr_schedule(cfg: RangeTestParams) -> np.ndarray:
    """The LR of each of the `num_steps` batches: linear (Smith) or geometric (fastai)."""
    t = np.linspace(0.0, 1.0, cfg.num_steps)
    if cfg.mode == "linear":
        return cfg.min_lr + (cfg.max_lr - cfg.min_lr) * t
    return cfg.min_lr * (cfg.max_lr / cfg.min_lr) ** t


# Smoothing and divergence -------------------------------------------------------------------


def ema_debiased(values: Sequence[float] | np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected EMA: `avg_i / (1 - beta**(i+1))`; NaN from the first non-finite value on."""
    x = np.asarray(values, dtype=float)
    out = np.full(x.shape, np.nan)
    avg = 0.0
    for i, v in enumerate(x):
        if not math.isfinite(v):
            break
        avg = beta * avg + (1.0 - beta) * v
        out[i] = avg / (1.0 - beta ** (i + 1))
    return out


def smooth_losses(
    losses: Sequence[float] | np.ndarray, beta: float, smoothing: str = "log"
) -> np.ndarray:
    """Debiased EMA of the losses, of their logarithm (geometric mean) when `smoothing='log'`."""
    x = np.asarray(losses, dtype=float)
    if smoothing == "linear":
        return ema_debiased(x, beta)
    with np.errstate(invalid="ignore"):
        return np.exp(ema_debiased(np.log(np.maximum(x, LOG_FLOOR)), beta))


class DivergenceMonitor:
    """Online form of `find_divergence` for a training loop: feed losses, stop when it says."""

    def __init__(self, beta: float, factor: float, smoothing: str = "log") -> None:
        self.beta, self.factor, self.log = beta, factor, smoothing == "log"
        self._avg, self._n, self.best = 0.0, 0, math.inf

    def update(self, loss: float) -> bool:
        """Add one batch loss; return True if the sweep has diverged at this batch."""
        if not math.isfinite(loss):
            return True
        value = math.log(max(loss, LOG_FLOOR)) if self.log else loss
        self._n += 1
        self._avg = self.beta * self._avg + (1.0 - self.beta) * value
        smoothed = self._avg / (1.0 - self.beta**self._n)
        if self.log:
            smoothed = math.exp(smoothed)
        self.best = min(self.best, smoothed)
        return smoothed > self.factor * self.best


def find_divergence(
    losses: Sequence[float] | np.ndarray, beta: float, factor: float, smoothing: str = "log"
) -> int | None:
    """Index of the first batch that is non-finite or whose smoothed loss > factor x best so far."""
    monitor = DivergenceMonitor(beta, factor, smoothing)
    for i, loss in enumerate(np.asarray(losses, dtype=float)):
        if monitor.update(float(loss)):
            return i
    return None


def smooth_two_sided(
    losses: Sequence[float] | np.ndarray, beta: float, smoothing: str = "log"
) -> np.ndarray:
    """Zero-lag smoothing for analysis: the mean of the forward and the backward debiased EMA.

    The causal EMA reports the loss of batches ~beta/(1-beta) behind (49 at 0.98), so picks
    made on it land late; averaging it with the same EMA run backwards cancels that lag for
    locally linear curves. Only the finite prefix is smoothed; the rest is NaN.
    """
    x = np.asarray(losses, dtype=float)
    bad = np.flatnonzero(~np.isfinite(x))
    n = int(bad[0]) if bad.size else x.size
    out = np.full(x.shape, np.nan)
    if n:
        fwd = smooth_losses(x[:n], beta, smoothing)
        bwd = smooth_losses(x[:n][::-1], beta, smoothing)[::-1]
        out[:n] = np.sqrt(fwd * bwd) if smoothing == "log" else (fwd + bwd) / 2
    return out


# Per-seed analysis --------------------------------------------------------------------------


@dataclass
class Curve:
    """One seed's recorded sweep: a loss per batch, and held-out metrics at some batches."""

    seed: int
    lrs: np.ndarray
    losses: np.ndarray
    val_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    val_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    val_accuracy: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.lrs = np.asarray(self.lrs, dtype=float)
        self.losses = np.asarray(self.losses, dtype=float)
        self.val_steps = np.asarray(self.val_steps, dtype=int)
        self.val_loss = np.asarray(self.val_loss, dtype=float)
        if self.val_accuracy is not None:
            self.val_accuracy = np.asarray(self.val_accuracy, dtype=float)
        if self.lrs.shape != self.losses.shape:
            raise ValueError("lrs and losses must have the same length")


@dataclass
class Suggestions:
    """One seed's suggested LRs per method, the derived bounds and where the sweep broke."""

    seed: int
    steepest: float | None
    valley: float | None
    minimum: float | None
    loss_max: float | None
    accuracy_base: float | None
    accuracy_max: float | None
    ceiling: float | None
    divergence_lr: float | None
    base_lr: float | None
    max_lr: float | None
    rule: str | None

    @classmethod
    def empty(cls, seed: int, divergence_lr: float | None) -> Suggestions:
        """A seed whose curve was too short to analyse."""
        names = [f for f in cls.__dataclass_fields__ if f not in ("seed", "divergence_lr")]
        return cls(seed=seed, divergence_lr=divergence_lr, **dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


@dataclass
class CurveAnalysis:
    """A curve with its smoothed loss, lag-corrected LRs, stop index and suggestions."""

    curve: Curve
    ema: np.ndarray
    smoothed: np.ndarray
    stop: int | None
    suggestions: Suggestions

    @property
    def diverged(self) -> bool:
        """True when the sweep stopped on divergence rather than by reaching its last batch."""
        return self.stop is not None

    @property
    def no_divergence(self) -> bool:
        """True when the sweep never diverged and its loss never rose off its floor."""
        sm = self.smoothed[np.isfinite(self.smoothed)]
        return self.stop is None and sm.size > 0 and edge_index(sm) == sm.size - 1

    def rows(self) -> list[dict[str, Any]]:
        """Per-batch table rows; held-out metrics are NaN on batches where they were not taken."""
        c = self.curve
        val_loss = np.full(c.lrs.size, np.nan)
        val_acc = np.full(c.lrs.size, np.nan)
        val_loss[c.val_steps] = c.val_loss
        if c.val_accuracy is not None:
            val_acc[c.val_steps] = c.val_accuracy
        return [
            {
                "seed": c.seed,
                "step": i,
                "lr": float(c.lrs[i]),
                "loss": float(c.losses[i]),
                "ema_loss": float(self.ema[i]),
                "smoothed_loss": float(self.smoothed[i]),
                "val_loss": float(val_loss[i]),
                "val_accuracy": float(val_acc[i]),
            }
            for i in range(c.lrs.size)
        ]


def analyse_curve(curve: Curve, config: RangeTestParams) -> CurveAnalysis:
    """Find divergence (causal EMA), smooth without lag (losses capped at the divergence
    threshold), apply every suggestion rule to one seed."""
    ema = smooth_losses(curve.losses, config.beta, config.smoothing)
    stop = find_divergence(curve.losses, config.beta, config.divergence_factor, config.smoothing)
    end = curve.lrs.size if stop is None else stop
    smoothed = np.full(curve.lrs.size, np.nan)
    capped = np.minimum(curve.losses[:end],
                        config.divergence_factor * np.fmin.accumulate(ema[:end]))
    smoothed[:end] = smooth_two_sided(capped, config.beta, config.smoothing)
    skip = int(SKIP_START_FRACTION * end)
    lrs, sm = curve.lrs[skip:end], smoothed[skip:end]
    divergence_lr = float(curve.lrs[stop]) if stop is not None else None
    if lrs.size < MIN_POINTS or not np.isfinite(sm).all():
        return CurveAnalysis(
            curve, ema, smoothed, stop, Suggestions.empty(curve.seed, divergence_lr)
        )
    ceiling = float(lrs[edge_index(np.log(sm) if config.smoothing == "log" else sm)])
    acc = None
    if curve.val_accuracy is not None and curve.val_steps.size:
        keep = curve.val_steps < end
        acc = accuracy_bounds(curve.lrs[curve.val_steps[keep]], curve.val_accuracy[keep])
    loss_max = ceiling / EDGE_DIVISOR
    if acc is not None:
        max_lr, base_lr, rule = min(acc[1], ceiling), acc[0], "accuracy"
    else:
        max_lr, base_lr, rule = loss_max, loss_max / BASE_DIVISOR, "loss"
    if not base_lr < max_lr:
        base_lr = max_lr / BASE_DIVISOR
    sugg = Suggestions(
        seed=curve.seed,
        steepest=steepest(lrs, np.log(sm) if config.smoothing == "log" else sm),
        valley=valley(lrs, sm),
        minimum=minimum(lrs, sm),
        loss_max=loss_max,
        accuracy_base=acc[0] if acc else None,
        accuracy_max=acc[1] if acc else None,
        ceiling=ceiling,
        divergence_lr=divergence_lr,
        base_lr=base_lr,
        max_lr=max_lr,
        rule=rule,
    )
    return CurveAnalysis(curve, ema, smoothed, stop, sugg)


# Across seeds -------------------------------------------------------------------------------


@dataclass
class Spread:
    """How much one bound varies over seeds."""

    values: list[float]
    median: float
    ratio: float
    log10_iqr: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Median, max/min ratio and log10 interquartile range of positive values."""
        v = np.asarray(values, float)
        q75, q25 = np.percentile(np.log10(v), [75, 25])
        return cls(
            [float(x) for x in v], float(np.median(v)), float(v.max() / v.min()), float(q75 - q25)
        )


@dataclass
class RangeTestResult:
    """Bounds chosen over all seeds, how sure they are, and every seed's analysis."""

    config: RangeTestParams
    analyses: list[CurveAnalysis]
    base_lr: float
    max_lr: float
    rule: str
    base_spread: Spread
    max_spread: Spread
    method_medians: dict[str, float | None]
    method_ratio: float
    methods_disagree: bool
    seeds_disagree: bool
    no_divergence: bool

    @property
    def confident(self) -> bool:
        """True when methods and seeds agree and every sweep reached its divergence edge."""
        return not (self.methods_disagree or self.seeds_disagree or self.no_divergence)

    @property
    def suggestions(self) -> dict[str, float | None]:
        """Each rule's median suggestion over seeds (steepest, valley, minimum, loss_max, ...)."""
        return dict(self.method_medians)

    @property
    def lr(self) -> float:
        """The constant learning rate to train with, for the optimizer the sweep ran with
        (`base_lr`/`max_lr` are for cycles): `clrpipe.suggestions.DEFAULT_LR_RULE`, the valley
        rule the study chose, or the geometric mean of the pair when no seed's curve had a
        valley. `constant_lr(rule)` gives another rule's."""
        chosen = self.constant_lr()
        return self.constant_lr("geometric_mean") if chosen is None else chosen

    def constant_lr(self, rule: str = DEFAULT_LR_RULE) -> float | None:
        """The constant LR `rule` suggests (`geometric_mean`, `arithmetic_mean`, `valley`,
        `minimum`, `steepest`, `base_lr`, `max_lr`: `clrpipe.suggestions.CONSTANT_LR_RULES`)."""
        return constant_lr(self.base_lr, self.max_lr, self.method_medians, rule)

    def plot(self, ax=None, *, accuracy_ax=None):
        """Smoothed loss against LR (log x), one line per seed with its raw loss faint, and the
        bounds marked; held-out accuracy on `accuracy_ax` when given. Returns the loss Axes (a
        new figure's when `ax` is None). Needs matplotlib (`pip install clrpipe[plot]`)."""
        try:
            from clrpipe import plots
        except ModuleNotFoundError as err:
            if err.name != "matplotlib":
                raise
            raise ClrpipeError(
                "plot: needs matplotlib; install it with pip install 'clrpipe[plot]'"
            ) from err
        return plots.range_test_axes(self, ax, accuracy_ax)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON summary for `metrics/range_test.json`."""
        div = [a.suggestions.divergence_lr for a in self.analyses]
        return {
            "base_lr": self.base_lr,
            "max_lr": self.max_lr,
            "rule": self.rule,
            "confident": self.confident,
            "methods_disagree": self.methods_disagree,
            "seeds_disagree": self.seeds_disagree,
            "no_divergence": self.no_divergence,
            "method_ratio": self.method_ratio,
            "disagreement_factor": DISAGREEMENT_FACTOR,
            "seed_spread_factor": SEED_SPREAD_FACTOR,
            "spread": {"base_lr": asdict(self.base_spread), "max_lr": asdict(self.max_spread)},
            "suggestions": dict(self.method_medians),
            "divergence_lr": median(div),
            "per_seed": [a.suggestions.to_dict() for a in self.analyses],
            "config": self.config.model_dump(exclude=STAGE_KEYS),
        }

    def rows(self) -> list[dict[str, Any]]:
        """Per-batch table over all seeds: seed, step, lr, loss, smoothed_loss, ... val_*."""
        return [row for a in self.analyses for row in a.rows()]


def aggregate(analyses: Sequence[CurveAnalysis], config: RangeTestParams) -> RangeTestResult:
    """Combine per-seed analyses into median bounds, spreads and disagreement flags."""
    usable = [a for a in analyses if a.suggestions.max_lr is not None]
    if not usable:
        raise ClrpipeError(
            f"range_test.min_lr: no seed gave a usable curve (diverged within {MIN_POINTS} "
            f"batches of {config.min_lr} or too few batches); lower min_lr or raise num_steps"
        )
    bases = [a.suggestions.base_lr for a in usable]
    maxes = [a.suggestions.max_lr for a in usable]
    base_spread, max_spread = Spread.of(bases), Spread.of(maxes)
    base_lr, max_lr = base_spread.median, max_spread.median
    if not base_lr < max_lr:
        base_lr = max_lr / BASE_DIVISOR
    medians = {m: median([getattr(a.suggestions, m) for a in usable]) for m in METHODS}
    compared = [medians[m] for m in COMPARED_METHODS if medians[m] is not None]
    ratio = max(compared) / min(compared) if compared else 1.0
    rules = {a.suggestions.rule for a in usable}
    return RangeTestResult(
        config=config,
        analyses=list(analyses),
        base_lr=base_lr,
        max_lr=max_lr,
        rule=rules.pop() if len(rules) == 1 else "mixed",
        base_spread=base_spread,
        max_spread=max_spread,
        method_medians=medians,
        method_ratio=float(ratio),
        methods_disagree=ratio > DISAGREEMENT_FACTOR,
        seeds_disagree=max_spread.ratio > SEED_SPREAD_FACTOR or len(usable) < len(analyses),
        no_divergence=any(a.no_divergence for a in analyses),
    )


def analyse(curves: Sequence[Curve], config: RangeTestParams) -> RangeTestResult:
    """Analyse every seed's curve with the config's smoothing and divergence settings."""
    return aggregate([analyse_curve(c, config) for c in curves], config)

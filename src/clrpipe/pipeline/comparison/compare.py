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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clrpipe import suggestions
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import params
from clrpipe.pipeline.params import PARAMS_FILE, CompareParams, ConstantSchedule, ScheduleParams
from clrpipe.stats import Interval, difference_interval, median, t_interval

__all__ = [
    "HGB",
    "MethodSummary",
    "PlannedMethod",
    "TrialOutcome",
    "best_network",
    "fill_rates",
    "first_reach",
    "markdown_table",
    "plan",
    "report",
    "report_markdown",
    "score_label",
    "score_text",
    "suggested_constant_lr",
    "summarize",
    "target_score",
    "uses_hgb",
]

HGB = "hgb"
"""The gradient-boosting reference's method name."""
SUGGESTED_LR = ("geometric_mean", "arithmetic_mean")


def suggested_constant_lr(bounds: tuple[float, float], rule: str = "geometric_mean") -> float:
    """The range test's single constant LR from (base_lr, max_lr): the library's rule
    (`clrpipe.suggestions`, what `RangeTestResult.lr` uses), geometric or arithmetic mean."""
    if rule not in SUGGESTED_LR:
        raise ValueError(f"suggested_lr: expected one of {', '.join(SUGGESTED_LR)}, got {rule!r}")
    return suggestions.constant_lr(*bounds, {}, rule)


def fill_rates(spec: ScheduleParams, bounds: tuple[float, float] | None, rule: str,
               where: str) -> ScheduleParams:
    """`spec` with its null learning rates taken from the range test: CLR/one-cycle bounds from
    (base_lr, max_lr), a constant's rate from `suggested_constant_lr`. `where` names the
    schedule in the error when a rate is null and no bounds are known."""
    if isinstance(spec, ConstantSchedule) and spec.learning_rate is None and bounds is not None:
        spec = spec.model_copy(update={"learning_rate": suggested_constant_lr(bounds, rule)})
    return params.fill_bounds(spec, bounds, where)


@dataclass(frozen=True)
class PlannedMethod:
    """A network method ready to train: its schedule (rates filled), batch size and epochs."""

    schedule: ScheduleParams
    batch_size: int
    epochs: int


def plan(compare: CompareParams, bounds: tuple[float, float] | None) -> dict[str, PlannedMethod]:
    """The network methods `compare.select` keeps (all when null), rates filled from `bounds`,
    so a missing bound fails before any training or run starts."""
    chosen = compare.select if compare.select is not None else [*compare.methods, HGB]
    planned = {}
    for name in (n for n in compare.methods if n in chosen):
        method = compare.methods[name]
        where = f"{PARAMS_FILE}: compare.methods.{name}.schedule"
        if method.schedule.backend != "keras":
            raise ClrpipeError(f"{where}.backend: expected 'keras' in a comparison, got "
                               f"{method.schedule.backend!r}")
        spec = fill_rates(method.schedule, bounds, compare.suggested_lr, where)
        planned[name] = PlannedMethod(spec, method.batch_size, method.epochs or compare.epochs)
    return planned


def uses_hgb(compare: CompareParams) -> bool:
    """Whether the gradient-boosting reference runs (configured, and selected)."""
    return compare.hgb is not None and (compare.select is None or HGB in compare.select)


@dataclass(frozen=True)
class TrialOutcome:
    """One training's result, scored by `metric` (accuracy, or R² for regression; higher is
    better). `epochs` False marks a non-iterative reference (gradient boosting): its single
    `val_score`/`epoch_seconds` entry is the whole fit."""

    method: str
    seed: int
    test_score: float
    test_loss: float
    final_loss: float
    val_score: tuple[float, ...]
    epoch_seconds: tuple[float, ...]
    epochs: bool = True
    metric: str = "accuracy"


def first_reach(
    val_score: Sequence[float], epoch_seconds: Sequence[float], target: float
) -> tuple[int | None, float | None]:
    """(1-based epoch, cumulative seconds) when the validation score first reaches `target`."""
    elapsed = 0.0
    for epoch, (score, seconds) in enumerate(zip(val_score, epoch_seconds, strict=True), 1):
        elapsed += seconds
        if score >= target:
            return epoch, elapsed
    return None, None


def target_score(fixed: float | None, outcomes: Iterable[TrialOutcome], margin: float) -> float:
    """The validation score "epochs to target" counts to: `fixed` (`data.target_score`), else
    the reference's mean validation score minus `margin`."""
    if fixed is not None:
        return fixed
    reference = [o.val_score[-1] for o in outcomes if o.method == HGB]
    if not reference:
        raise ClrpipeError(f"{PARAMS_FILE}: data.target_score: null needs the gradient-"
                           "boosting reference (compare.hgb, selected) to set the target")
    return float(np.mean(reference)) - margin


@dataclass(frozen=True)
class MethodSummary:
    """One method over its seeds (see the module docstring for each quantity)."""

    method: str
    seeds: tuple[int, ...]
    test_score: Interval
    test_score_sd: float
    reached: int
    epochs_to_target: float | None
    seconds_to_target: float | None
    train_seconds: float
    final_loss: float
    test_loss: float
    iterative: bool = True
    per_seed_score: tuple[float, ...] = field(default=())
    metric: str = "accuracy"

    def as_dict(self) -> dict:
        """JSON-ready: numbers and None only; score keys named after the metric."""
        m = self.metric
        return {
            "seeds": len(self.seeds),
            f"test_{m}_mean": self.test_score.mean,
            f"test_{m}_ci_low": self.test_score.low,
            f"test_{m}_ci_high": self.test_score.high,
            f"test_{m}_sd": self.test_score_sd,
            "reached_target": self.reached,
            "epochs_to_target": self.epochs_to_target if self.iterative else None,
            "seconds_to_target": self.seconds_to_target,
            "train_seconds": self.train_seconds,
            "final_loss": self.final_loss,
            "test_loss": self.test_loss,
        }


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
        scores = [t.test_score for t in trials]
        reach = [first_reach(t.val_score, t.epoch_seconds, target) for t in trials]
        summaries[method] = MethodSummary(
            method=method,
            seeds=tuple(seeds),
            test_score=t_interval(scores, confidence),
            test_score_sd=float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
            reached=sum(epoch is not None for epoch, _ in reach),
            epochs_to_target=median((epoch for epoch, _ in reach), missing="worst"),
            seconds_to_target=median((seconds for _, seconds in reach), missing="worst"),
            train_seconds=float(np.mean([sum(t.epoch_seconds) for t in trials])),
            final_loss=float(np.mean([t.final_loss for t in trials])),
            test_loss=float(np.mean([t.test_loss for t in trials])),
            iterative=all(t.epochs for t in trials),
            per_seed_score=tuple(scores),
            metric=trials[0].metric,
        )
    return summaries


def score_text(value: float | None, metric: str) -> str:
    """A score as the table shows it: accuracy in percent, R² as it is."""
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}" if metric == "accuracy" else f"{value:.4f}"


def score_label(metric: str) -> str:
    return "accuracy %" if metric == "accuracy" else "R²"


def markdown_table(
    summaries: Mapping[str, MethodSummary], target: float, confidence: float = 0.95
) -> str:
    """One row per method: seeds, test score mean and interval, time to the target
    validation score (median epochs and seconds, and how many seeds reached it), mean
    training seconds, final training loss and test loss."""
    metric = next(iter(summaries.values())).metric if summaries else "accuracy"
    level = f"{100 * confidence:g}%"
    goal = f"{100 * target:.4g}%" if metric == "accuracy" else f"R² {target:.3g}"
    lines = [
        f"| method | seeds | test {score_label(metric)} (mean) | {level} interval | "
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
            "n/a" if s.test_score.low is None
            else f"[{score_text(s.test_score.low, metric)}, "
                 f"{score_text(s.test_score.high, metric)}]"
        )
        lines.append(
            f"| {s.method} | {len(s.seeds)} | {score_text(s.test_score.mean, metric)} | "
            f"{interval} | {epochs} | {seconds} | {s.reached}/{len(s.seeds)} | "
            f"{s.train_seconds:.1f} | {s.final_loss:.4f} | {s.test_loss:.4f} |"
        )
    return "\n".join(lines) + "\n"


def best_network(summaries: Mapping[str, MethodSummary]) -> MethodSummary | None:
    """The iterative method with the highest mean test score."""
    networks = [s for s in summaries.values() if s.iterative]
    return max(networks, key=lambda s: s.test_score.mean) if networks else None


def report(compare: CompareParams, methods: Mapping[str, PlannedMethod],
           summaries: Mapping[str, MethodSummary], seeds: Sequence[int], seconds: float,
           target: float) -> dict:
    """`metrics/compare.json`'s content (with the table): summaries, the learning rates each
    method used, and the best network against gradient boosting (Welch interval)."""
    best = best_network(summaries)
    metric = best.metric if best else next(iter(summaries.values())).metric
    found: dict = {
        f"target_{metric}": target,
        "confidence": compare.confidence,
        "seeds": len(seeds),
        "first_seed": seeds[0],
        "methods": {name: s.as_dict() for name, s in summaries.items()},
        "learning_rates": {
            name: {k: v for k, v in m.schedule.model_dump().items() if "learning_rate" in k}
            for name, m in methods.items()
        },
        "best_network": best.method if best else None,
        "seconds": seconds,
    }
    if best is not None and HGB in summaries:
        diff = difference_interval(
            best.per_seed_score, summaries[HGB].per_seed_score, compare.confidence
        )
        found["best_minus_hgb"] = {"mean": diff.mean, "ci_low": diff.low, "ci_high": diff.high}
    found["table"] = markdown_table(summaries, target, compare.confidence)
    return found


def report_markdown(found: dict) -> str:
    """`reports/compare.md`: the table plus one line on the best network against boosting."""
    lines = [
        f"# Comparison over {found['seeds']} seeds (first seed {found['first_seed']})", "",
        found["table"],
    ]
    best = found["best_network"]
    if "best_minus_hgb" in found:
        d = found["best_minus_hgb"]
        if "target_accuracy" in found:
            shown, unit = (lambda v: f"{100 * v:+.2f}"), "points of test accuracy"
        else:
            shown, unit = (lambda v: f"{v:+.4f}"), "of test R²"
        interval = (
            "" if d["ci_low"] is None
            else f" ({100 * found['confidence']:g}% Welch interval "
                 f"[{shown(d['ci_low'])}, {shown(d['ci_high'])}])"
        )
        lines.append(
            f"Best network: {best}, {shown(d['mean'])} {unit} against "
            f"gradient boosting{interval}."
        )
    elif best is not None:
        lines.append(f"Best network: {best}.")
    rates = ", ".join(
        f"{name} " + "/".join(f"{v:.3g}" for v in lrs.values())
        for name, lrs in found["learning_rates"].items()
    )
    lines += ["", f"Learning rates used: {rates}.", ""]
    return "\n".join(lines)

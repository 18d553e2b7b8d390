"""Comparison core: per-method summaries over seeds, and the markdown table. No I/O.

A *trial* is one training of one method with one seed. Per method the summary gives the test
score's mean over seeds and its interval (`score_interval`: an accuracy's Wilson interval on
the test rows, which never leaves [0, 100%]; an R²'s percentile bootstrap over seeds), how many
epochs and seconds the runs needed before their validation score first reached a stated target
(medians over seeds, a seed that never reached it counting as infinitely slow, so "not reached"
means at least half of them missed), the final training loss and the test loss. Against
gradient boosting every network gets the paired (by seed) bootstrap interval of its difference
and a win/tie/loss verdict whose p-values are Holm-corrected over the networks of the
comparison (`versus`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clrpipe import suggestions
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import params
from clrpipe.pipeline.params import PARAMS_FILE, CompareParams, ConstantSchedule, ScheduleParams
from clrpipe.stats import (
    Interval,
    bootstrap_interval,
    holm,
    median,
    paired_bootstrap,
    wilson_interval,
)

__all__ = [
    "HGB",
    "MethodSummary",
    "PlannedMethod",
    "TrialOutcome",
    "best_network",
    "candidate_entry",
    "champion_candidate",
    "chosen",
    "fill_rates",
    "first_reach",
    "markdown_table",
    "plan",
    "report",
    "report_markdown",
    "score_interval",
    "score_label",
    "score_text",
    "suggested_constant_lr",
    "summarize",
    "sweeps_needed",
    "target_score",
    "trial_params",
    "trial_row",
    "uses_hgb",
    "verdict",
    "versus",
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
    """A network method ready to train: its schedule (rates filled), batch size, epochs, and
    its optimizer (`methods.build_optimizer`'s name and options; SGD the schedule's own)."""

    schedule: ScheduleParams
    batch_size: int
    epochs: int
    optimizer: str = "sgd"
    options: dict = field(default_factory=dict)


def chosen(compare: CompareParams) -> list[str]:
    """The network methods `compare.select` keeps (all when null), in config order."""
    keep = compare.select if compare.select is not None else [*compare.methods, HGB]
    return [n for n in compare.methods if n in keep]


def sweeps_needed(compare: CompareParams) -> list[str]:
    """The optimizers whose own range test a chosen method takes a null rate from."""
    found = [compare.methods[n].optimizer for n in chosen(compare)
             if compare.methods[n].needs_sweep()]
    return list(dict.fromkeys(found))


def plan(compare: CompareParams, bounds: tuple[float, float] | None,
         sweeps: Mapping[str, tuple[float, float]] | None = None) -> dict[str, PlannedMethod]:
    """The chosen network methods, rates filled from the range test (`bounds`, the `range_test`
    stage's SGD sweep; `sweeps[optimizer]` for another optimizer), so a missing bound fails
    before any training or run starts. `sweeps` None: the optimizers' own sweeps have not run
    yet, and the methods waiting for one are left out (checking the rest early)."""
    planned = {}
    for name in chosen(compare):
        method = compare.methods[name]
        if sweeps is None and method.needs_sweep():
            continue
        where = f"{PARAMS_FILE}: compare.methods.{name}.schedule"
        if method.schedule.backend != "keras":
            raise ClrpipeError(f"{where}.backend: expected 'keras' in a comparison, got "
                               f"{method.schedule.backend!r}")
        source = bounds if method.optimizer == "sgd" else (sweeps or {}).get(method.optimizer)
        spec = fill_rates(method.schedule, source, compare.suggested_lr, where)
        planned[name] = PlannedMethod(spec, method.batch_size, method.epochs or compare.epochs,
                                      method.optimizer, dict(method.options))
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
    test_rows: int = 0


def score_interval(scores: Sequence[float], metric: str, test_rows: int,
                   confidence: float = 0.95) -> Interval:
    """The interval of a mean test score over seeds: an accuracy's Wilson interval on the
    `test_rows` every seed was scored on (the test set's sampling, which dominates on small
    tables, and bounds inside [0, 1]); otherwise (R², or rows unknown) the percentile
    bootstrap over seeds."""
    if metric == "accuracy" and test_rows > 0:
        return wilson_interval(float(np.mean(scores)), test_rows, confidence)
    return bootstrap_interval(scores, confidence)


def verdict(difference: Interval | None, adjusted_p: float | None, confidence: float) -> str:
    """win / loss when the Holm-adjusted p-value is below 1 - confidence (sign of the mean
    difference), tie otherwise or with no interval (one seed); loss without a difference at
    all (the method diverged: no model)."""
    if difference is None:
        return "loss"
    if adjusted_p is None or difference.low is None or adjusted_p >= 1 - confidence:
        return "tie"
    return "win" if difference.mean > 0 else "loss"


def versus(scores: Mapping[str, Mapping[int, float]], reference: str,
           confidence: float = 0.95) -> dict[str, dict]:
    """Each other method against `reference`: the paired bootstrap of (method - reference)
    over the seeds both have (finite scores), its p-value, the Holm-adjusted p-value over this
    family (every method compared here) and the verdict."""
    theirs = scores[reference]
    found: dict[str, dict] = {}
    for name, mine in scores.items():
        if name == reference:
            continue
        common = [s for s in mine if s in theirs and math.isfinite(mine[s])
                  and math.isfinite(theirs[s])]
        found[name] = {"difference": paired_bootstrap([mine[s] for s in common],
                                                       [theirs[s] for s in common], confidence)
                       if common else None}
    tested = [n for n, f in found.items() if f["difference"] is not None]
    adjusted = dict(zip(tested, holm([found[n]["difference"].p_value for n in tested]),
                        strict=True))
    for name, f in found.items():
        d = f["difference"]
        f.update({"mean": None if d is None else d.mean,
                  "ci_low": None if d is None else d.low,
                  "ci_high": None if d is None else d.high,
                  "p_value": None if d is None else d.p_value,
                  "p_holm": adjusted.get(name),
                  "verdict": verdict(d, adjusted.get(name), confidence)})
    return found


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
    test_rows: int = 0

    def as_dict(self) -> dict:
        """JSON-ready: numbers and None only; score keys named after the metric."""
        m = self.metric
        return {
            "seeds": len(self.seeds),
            "test_rows": self.test_rows,
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
            test_score=score_interval(scores, trials[0].metric, trials[0].test_rows, confidence),
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
            test_rows=trials[0].test_rows,
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


def champion_candidate(outcomes: Iterable[TrialOutcome]) -> TrialOutcome | None:
    """The network trial `compare` offers the champion stage: of the iterative method with the
    highest mean final validation score (the champion's rule: validation, never test), the
    seed with the highest final validation score (a tie: the lower seed). None without one."""
    by_method: dict[str, list[TrialOutcome]] = {}
    for o in outcomes:
        if o.epochs and o.val_score and math.isfinite(o.val_score[-1]):
            by_method.setdefault(o.method, []).append(o)
    if not by_method:
        return None
    method = max(by_method, key=lambda n: float(np.mean([o.val_score[-1] for o in by_method[n]])))
    return max(sorted(by_method[method], key=lambda o: o.seed), key=lambda o: o.val_score[-1])


def candidate_entry(pick: TrialOutcome, methods: Mapping[str, PlannedMethod]) -> dict:
    """`metrics/compare.json`'s `champion_candidate` (the champion stage reads it)."""
    return {"method": pick.method, "seed": pick.seed,
            "optimizer": methods[pick.method].optimizer,
            f"final_val_{pick.metric}": pick.val_score[-1], f"test_{pick.metric}": pick.test_score}


def trial_row(o: TrialOutcome) -> dict:
    """One trial's row of `plots/compare/trials.csv`."""
    return {"method": o.method, "seed": o.seed, f"test_{o.metric}": o.test_score,
            "test_loss": o.test_loss, "final_loss": o.final_loss,
            f"final_val_{o.metric}": o.val_score[-1], "train_seconds": sum(o.epoch_seconds)}


def trial_params(name: str, seed: int, methods: Mapping[str, PlannedMethod], hgb) -> dict:
    """A trial run's parameters: method, seed, and its optimizer and schedule, or boosting's
    settings."""
    values: dict = {"method": name, "seed": seed}
    if name in methods:
        method = methods[name]
        spec = {k: v for k, v in method.schedule.model_dump().items() if v is not None}
        values |= {"optimizer": method.optimizer, "batch_size": method.batch_size,
                   "epochs": method.epochs, "schedule": spec}
        if method.options:
            values["options"] = method.options
    elif hgb is not None:
        values |= {"hgb": hgb.model_dump()}
    return values


def best_network(summaries: Mapping[str, MethodSummary]) -> MethodSummary | None:
    """The iterative method with the highest mean test score."""
    networks = [s for s in summaries.values() if s.iterative]
    return max(networks, key=lambda s: s.test_score.mean) if networks else None


def report(compare: CompareParams, methods: Mapping[str, PlannedMethod],
           summaries: Mapping[str, MethodSummary], seeds: Sequence[int], seconds: float,
           target: float, sweeps: Mapping[str, dict] | None = None) -> dict:
    """`metrics/compare.json`'s content (with the table): summaries, the learning rates and
    optimizer each method used, the optimizers' own sweeps (`sweeps`), and every network
    against gradient boosting (`versus`)."""
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
        "optimizers": {name: m.optimizer for name, m in methods.items()},
        "best_network": best.method if best else None,
        "seconds": seconds,
    }
    if sweeps:
        found["range_tests"] = dict(sweeps)
    if HGB in summaries:
        scores = {name: dict(zip(s.seeds, s.per_seed_score, strict=True))
                  for name, s in summaries.items()}
        found["versus_hgb"] = {
            name: {k: v for k, v in row.items() if k != "difference"}
            for name, row in versus(scores, HGB, compare.confidence).items()
        }
        if best is not None:
            found["best_minus_hgb"] = found["versus_hgb"][best.method]
    found["table"] = markdown_table(summaries, target, compare.confidence)
    return found


def report_markdown(found: dict) -> str:
    """`reports/compare.md`: the table, each network against boosting (paired bootstrap,
    Holm), and one line on the best network."""
    lines = [
        f"# Comparison over {found['seeds']} seeds (first seed {found['first_seed']})", "",
        found["table"],
    ]
    best = found["best_network"]
    level = f"{100 * found['confidence']:g}%"
    if "target_accuracy" in found:
        shown, unit = (lambda v: f"{100 * v:+.2f}"), "points of test accuracy"
    else:
        shown, unit = (lambda v: f"{v:+.4f}"), "of test R²"

    def interval(d: Mapping) -> str:
        return ("n/a" if d["ci_low"] is None
                else f"[{shown(d['ci_low'])}, {shown(d['ci_high'])}]")

    if "versus_hgb" in found:
        lines += [
            f"Against gradient boosting, paired by seed ({level} percentile bootstrap; "
            f"verdicts from Holm-adjusted p-values over these {len(found['versus_hgb'])} "
            "networks):", "",
            f"| method | difference ({unit}) | {level} interval | p | p (Holm) | verdict |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, d in found["versus_hgb"].items():
            p = "n/a" if d["p_value"] is None else f"{d['p_value']:.4f}"
            ph = "n/a" if d["p_holm"] is None else f"{d['p_holm']:.4f}"
            mean = "n/a" if d["mean"] is None else shown(d["mean"])
            lines.append(f"| {name} | {mean} | {interval(d)} | {p} | {ph} | {d['verdict']} |")
        lines.append("")
    if "best_minus_hgb" in found and found["best_minus_hgb"]["mean"] is not None:
        d = found["best_minus_hgb"]
        where = "" if d["ci_low"] is None else f" ({level} paired interval {interval(d)})"
        lines.append(
            f"Best network: {best}, {shown(d['mean'])} {unit} against "
            f"gradient boosting{where}: {d['verdict']}."
        )
    elif best is not None:
        lines.append(f"Best network: {best}.")
    rates = ", ".join(
        f"{name} " + "/".join(f"{v:.3g}" for v in lrs.values())
        for name, lrs in found["learning_rates"].items()
    )
    lines += ["", f"Learning rates used: {rates}.", ""]
    return "\n".join(lines)
